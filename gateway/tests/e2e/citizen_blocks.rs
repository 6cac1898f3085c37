//! Citizens' own blocks (`[citizen] blocks`): from an access in her log, Anne blocks the
//! professional who made it; the next access by that professional is refused at once (the
//! consent cache forgets her blocks), a colleague's is not, and break-the-glass still can; she
//! lifts the block and the professional reads again. Every other shape is refused.

use std::time::Duration;

use http::Method;
use portvagt::demo::BackendProcess;
use serde_json::{Value, json};

use crate::support::{
    Answer, CITIZEN_AUDIENCE, Client, Gateway, Options, Repository, backend_send, json_patch,
    metric_value, request,
};

const AUTHORIZATION: &str = "https://autregweb.sst.dk";
const SOR: &str = "urn:oid:1.2.208.176.1.1";
const LIFT: &str = r#"[{"op":"replace","path":"/status","value":"inactive"}]"#;

struct Setup {
    backend: BackendProcess,
    _repository: Repository,
    gateway: Gateway,
}

/// A backend of its own (blocks are written to it), the audit repository, and a gateway that
/// enforces consent with a long cache (so only forgetting explains a block taking hold).
fn setup() -> Setup {
    let backend = BackendProcess::start(&portvagt::demo::default_testbed(), true).unwrap();
    let repository = Repository::start();
    let gateway = Gateway::start_with(Options {
        backend_url: Some(backend.base_url().to_owned()),
        extra_config: format!(
            "[consent]\ncache_ttl = \"300s\"\n\n[citizen]\nlisten = \"127.0.0.1:0\"\naudiences = [\"{CITIZEN_AUDIENCE}\"]\nblocks = true\n"
        ),
        ..repository.gateway_options("")
    });
    Setup {
        backend,
        _repository: repository,
        gateway,
    }
}

fn citizen(gateway: &Gateway, patient: &str) -> String {
    gateway.citizen_token(json!({
        "sub": patient, "scope": "launch/patient patient/AuditEvent.rs patient/Consent.crus",
        "patient": patient, "fhirUser": format!("Patient/{patient}"), "client_id": "minlog",
    }))
}

/// A treating professional with an authorisation id, a `fhirUser` and an organisation.
fn professional(gateway: &Gateway, name: &str, authorization: &str, purpose: &str) -> String {
    gateway.token(json!({
        "scope": "user/*.rs", "name": name, "role": "7170", "purpose_of_use": purpose,
        "authorization_id": authorization,
        "fhirUser": format!("Practitioner/prac-{}", authorization.to_lowercase()),
        "care_provider": { "type": "medcom:sor", "id": "265161000016008", "name": "Rigshospitalet" },
    }))
}

async fn read_anne(gateway: &Gateway, token: &str, reason: Option<&str>) -> Answer {
    let mut read = request(Method::GET, "/fhir/Patient/pat-anne", Some(token), None);
    if let Some(reason) = reason {
        read.headers_mut()
            .insert("x-portvagt-break-glass-reason", reason.parse().unwrap());
    }
    gateway.client().send(read).await.unwrap()
}

/// Her log, in her view, once it holds an event `wanted` picks out.
async fn her_event(browser: &Client, token: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..150 {
        let answer = browser.get("/fhir/AuditEvent", Some(token)).await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        let found = answer.json()["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| entry["resource"].clone())
            .find(|event| wanted(event));
        if let Some(event) = found {
            return event;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the event never reached her log");
}

fn by(name: &'static str) -> impl Fn(&Value) -> bool {
    move |event| {
        event["agent"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|agent| agent["name"] == name)
    }
}

fn block(patient: &str, event: &str, actor: Value) -> Value {
    portvagt_conformance::cases::block_request(patient, event, actor)
}

/// A Consent of Anne's written straight to the backend: a deny of `actor`, tagged as a
/// citizen's block or not.
async fn stored(backend: &BackendProcess, actor: Value, tagged: bool) -> Value {
    let mut consent = json!({
        "resourceType": "Consent", "status": "active",
        "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy" }] },
        "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }] }],
        "patient": { "reference": "Patient/pat-anne" },
        "policyRule": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN" }] },
        "provision": { "type": "deny", "actor": [{
            "role": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP" }] },
            "reference": actor
        }] }
    });
    if tagged {
        consent["meta"] =
            json!({ "tag": [{ "system": "urn:portvagt:consent", "code": "citizen-block" }] });
    }
    let stored = backend_send(backend.base_url(), Method::POST, "Consent", Some(consent)).await;
    assert_eq!(stored["resourceType"], "Consent", "{stored}");
    stored
}

/// Anne's block of `actor`, taken from her event `event`.
async fn anne_blocks(browser: &Client, token: &str, event: &str, actor: Value) -> Answer {
    post(browser, token, block("pat-anne", event, actor)).await
}

async fn post(browser: &Client, token: &str, body: Value) -> Answer {
    browser
        .send(request(
            Method::POST,
            "/fhir/Consent",
            Some(token),
            Some(body),
        ))
        .await
        .unwrap()
}

fn outcome(answer: &Answer) -> (u16, String) {
    (answer.status.as_u16(), answer.detail_code())
}

#[tokio::test]
async fn anne_blocks_the_professional_from_her_log_and_lifts_the_block() {
    let setup = setup();
    let gateway = &setup.gateway;
    let mette = professional(gateway, "Mette Kjær", "NS363", "TREATMENT");
    let colleague = professional(gateway, "Jens Holm", "XY123", "TREATMENT");
    // Her read is in Anne's log; Anne's blocks are cached from here on (300 s).
    assert_eq!(read_anne(gateway, &mette, None).await.status, 200);
    let browser = gateway.citizen_client();
    let anne = citizen(gateway, "pat-anne");
    let event = her_event(&browser, &anne, by("Mette Kjær")).await;
    let user = event["agent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|agent| agent["type"]["coding"][0]["code"] == "humanuser")
        .unwrap();
    // What her view shows is what she blocks by: the user's fhirUser, or her authorisation id.
    assert_eq!(user["who"]["reference"], "Practitioner/prac-ns363");
    assert_eq!(user["extension"][0]["valueIdentifier"]["value"], "NS363");
    let event_id = event["id"].as_str().unwrap();

    let made = anne_blocks(
        &browser,
        &anne,
        event_id,
        json!({ "reference": "Practitioner/prac-ns363" }),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text());
    let consent = made.json();
    let consent_id = consent["id"].as_str().unwrap().to_owned();
    assert_eq!(consent["meta"]["tag"][0]["code"], "citizen-block");
    assert_eq!(
        consent["provision"]["actor"][0]["reference"]["display"],
        "Mette Kjær"
    );
    let location = made.headers["location"].to_str().unwrap();
    assert!(
        location.contains(&format!("/fhir/Consent/{consent_id}")),
        "{location}"
    );

    // At once, though her blocks were cached: Mette is refused, her colleague is not, and an
    // emergency with a reason still reads (and is marked as such).
    let refused = read_anne(gateway, &mette, None).await;
    assert_eq!(outcome(&refused), (403, "consent-block".into()));
    assert_eq!(read_anne(gateway, &colleague, None).await.status, 200);
    let emergency = professional(gateway, "Mette Kjær", "NS363", "EMERGENCY");
    let broken = read_anne(gateway, &emergency, Some("bevidstløs på skadestuen")).await;
    assert_eq!(broken.status, 200, "{}", broken.text());

    // Her authorisation id is another spelling of Mette, so another block (caught however
    // Mette arrives); the same spelling again is the block she has, not a third.
    let again = anne_blocks(
        &browser,
        &anne,
        event_id,
        json!({ "identifier": { "system": AUTHORIZATION, "value": "NS363" } }),
    )
    .await;
    assert_eq!(again.status, 201, "{}", again.text());
    let second_id = again.json()["id"].as_str().unwrap().to_owned();
    let same = anne_blocks(
        &browser,
        &anne,
        event_id,
        json!({ "reference": "Practitioner/prac-ns363" }),
    )
    .await;
    assert_eq!(same.status, 200, "{}", same.text());
    assert_eq!(same.json()["id"], consent_id.as_str());

    // Her blocks are hers to read.
    let listed = browser
        .get("/fhir/Consent?status=active", Some(&anne))
        .await
        .unwrap();
    assert_eq!(listed.status, 200, "{}", listed.text());
    let ids: Vec<String> = listed.json()["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["resource"]["id"].as_str().map(str::to_owned))
        .collect();
    assert!(
        ids.contains(&consent_id) && ids.contains(&second_id),
        "{ids:?}"
    );

    // And her log says what she did, by name.
    let noted = her_event(&browser, &anne, |event| {
        event["entity"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|entity| entity["what"]["reference"] == format!("Consent/{consent_id}").as_str())
    })
    .await;
    let details = noted.to_string();
    assert!(
        details.contains("\"citizen-block\"") && details.contains("Mette Kjær"),
        "{details}"
    );

    // Lifted (both spellings): Mette reads again, at once.
    for id in [&consent_id, &second_id] {
        let lifted = browser
            .send(json_patch(&format!("/fhir/Consent/{id}"), &anne, LIFT, &[]))
            .await
            .unwrap();
        assert_eq!(lifted.status, 200, "{}", lifted.text());
        assert_eq!(lifted.json()["status"], "inactive");
    }
    assert_eq!(read_anne(gateway, &mette, None).await.status, 200);
    let metrics = gateway.client().get("/metrics", None).await.unwrap().text();
    assert_eq!(
        metric_value(&metrics, "portvagt_citizen_blocks_total{change=\"lifted\"}"),
        Some(2.0)
    );
}

#[tokio::test]
async fn every_other_block_is_refused() {
    let setup = setup();
    let (gateway, backend) = (&setup.gateway, &setup.backend);
    let mette = professional(gateway, "Mette Kjær", "NS363", "TREATMENT");
    assert_eq!(read_anne(gateway, &mette, None).await.status, 200);
    let bo_read = gateway
        .client()
        .get("/fhir/Patient/pat-bo", Some(&mette))
        .await
        .unwrap();
    assert_eq!(bo_read.status, 200);
    let browser = gateway.citizen_client();
    let anne = citizen(gateway, "pat-anne");
    let bo = citizen(gateway, "pat-bo");
    let anne_event = her_event(&browser, &anne, by("Mette Kjær")).await;
    let anne_event = anne_event["id"].as_str().unwrap();
    let bo_event = her_event(&browser, &bo, by("Mette Kjær")).await;
    let bo_event = bo_event["id"].as_str().unwrap();
    let mette_ref = json!({ "reference": "Practitioner/prac-ns363" });

    // Not hers: Bo's record, an event of Bo's log, someone the event does not name.
    let cases = [
        (
            block("pat-bo", anne_event, mette_ref.clone()),
            "citizen-block-refused",
        ),
        (
            block("pat-anne", bo_event, mette_ref.clone()),
            "citizen-block-refused",
        ),
        (
            block(
                "pat-anne",
                anne_event,
                json!({ "reference": "Practitioner/prac-xy123" }),
            ),
            "citizen-block-refused",
        ),
        (
            block("pat-anne", "no-such-event", mette_ref.clone()),
            "citizen-block-refused",
        ),
        // Not the one shape: herself, a CPR number, a permit, another status.
        (
            block(
                "pat-anne",
                anne_event,
                json!({ "reference": "Patient/pat-anne" }),
            ),
            "citizen-block-invalid",
        ),
        (
            block(
                "pat-anne",
                anne_event,
                json!({ "identifier": { "system": "urn:oid:1.2.208.176.1.2", "value": "0101901234" } }),
            ),
            "citizen-block-invalid",
        ),
    ];
    for (body, code) in cases {
        let answer = post(&browser, &anne, body.clone()).await;
        let status = if code == "citizen-block-refused" {
            403
        } else {
            422
        };
        assert_eq!(outcome(&answer), (status, code.to_owned()), "{body}");
        // Refused, and recorded: in her log (and no one else's), as refused.
        let request = answer.headers["x-request-id"].to_str().unwrap();
        let events = gateway.audit_events_for(request);
        assert_eq!(events.len(), 1, "{events:#?}");
        let patients: Vec<&Value> = events[0]["entity"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|entity| entity["role"]["code"] == "1")
            .map(|entity| &entity["what"]["reference"])
            .collect();
        assert_eq!(patients, [&json!("Patient/pat-anne")], "{body}");
        assert_ne!(events[0]["outcome"], "0", "{body}");
    }
    let mut permit = block("pat-anne", anne_event, mette_ref.clone());
    permit["provision"]["type"] = json!("permit");
    let mut widened = block("pat-anne", anne_event, mette_ref.clone());
    widened["policyRule"] = json!({ "coding": [{ "code": "OPTOUT" }] });
    for body in [permit, widened] {
        assert_eq!(
            outcome(&post(&browser, &anne, body).await),
            (422, "citizen-block-invalid".into())
        );
    }
    // Nothing else about Consents is hers to do here: replace, delete, history, conditional.
    let consent = json!({ "resourceType": "Consent", "id": "x", "status": "inactive" });
    for (method, path, body) in [
        (Method::PUT, "/fhir/Consent/x", Some(consent)),
        (Method::DELETE, "/fhir/Consent/x", None),
        (Method::DELETE, "/fhir/Consent?patient=pat-anne", None),
        (Method::GET, "/fhir/Consent/x/_history", None),
    ] {
        let answer = browser
            .send(request(method.clone(), path, Some(&anne), body))
            .await
            .unwrap();
        assert_eq!(
            outcome(&answer),
            (403, "citizen-listener".into()),
            "{method} {path}"
        );
    }
    let mut conditional = request(
        Method::POST,
        "/fhir/Consent",
        Some(&anne),
        Some(block("pat-anne", anne_event, mette_ref.clone())),
    );
    conditional
        .headers_mut()
        .insert("if-none-exist", "status=active".parse().unwrap());
    assert_eq!(browser.send(conditional).await.unwrap().status, 403);

    // A block she made: Bo cannot lift it (not there for him), nor can a patch do more.
    let made = post(
        &browser,
        &anne,
        block("pat-anne", anne_event, mette_ref.clone()),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text());
    let id = made.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/fhir/Consent/{id}");
    let by_bo = browser
        .send(json_patch(&path, &bo, LIFT, &[]))
        .await
        .unwrap();
    assert_eq!(outcome(&by_bo), (404, "not-found".into()));
    for patch in [
        r#"[{"op":"replace","path":"/patient/reference","value":"Patient/pat-bo"}]"#,
        r#"[{"op":"replace","path":"/status","value":"inactive"},{"op":"remove","path":"/provision"}]"#,
        r#"[{"op":"remove","path":"/status"}]"#,
    ] {
        let answer = browser
            .send(json_patch(&path, &anne, patch, &[]))
            .await
            .unwrap();
        assert_eq!(
            outcome(&answer),
            (422, "citizen-block-invalid".into()),
            "{patch}"
        );
    }
    assert_eq!(
        outcome(&read_anne(gateway, &mette, None).await),
        (403, "consent-block".into())
    );
    // Nor may a professional change it on the API, though what he sends carries no tag: a
    // patch of whom it names, its deletion, a conditional write that could reach it, a batch.
    let professional_writer = gateway.token(json!({ "scope": "user/*.cruds", "role": "7170" }));
    let api = gateway.client();
    let renamed = api
        .send(json_patch(
            &path,
            &professional_writer,
            r#"[{"op":"replace","path":"/provision/actor/0/reference","value":{"reference":"Practitioner/prac-xy123"}}]"#,
            &[],
        ))
        .await
        .unwrap();
    assert_eq!(outcome(&renamed), (403, "citizen-block-reserved".into()));
    // The attempt on her block is in her log.
    let attempted = gateway.audit_events_for(renamed.headers["x-request-id"].to_str().unwrap());
    assert!(
        attempted
            .iter()
            .any(|event| event.to_string().contains("Patient/pat-anne")),
        "{attempted:#?}"
    );
    // A batch entry the policy refuses is refused as such, its target never read; another
    // patient's app is answered as for any record not hers.
    let reader = gateway.token(json!({ "scope": "user/Observation.rs", "role": "7170" }));
    let batch = api
        .send(request(
            Method::POST,
            "/fhir",
            Some(&reader),
            Some(
                json!({ "resourceType": "Bundle", "type": "batch", "entry": [{
                "request": { "method": "DELETE", "url": format!("Consent/{id}") }
            }] }),
            ),
        ))
        .await
        .unwrap();
    assert_eq!(batch.status, 200, "{}", batch.text());
    assert!(
        !batch.text().contains("citizen-block-reserved"),
        "{}",
        batch.text()
    );
    let bo_app = gateway.token(json!({ "scope": "patient/Consent.cud", "patient": "pat-bo" }));
    let bos = api
        .send(request(Method::DELETE, &path, Some(&bo_app), None))
        .await
        .unwrap();
    assert_ne!(
        bos.detail_code(),
        "citizen-block-reserved",
        "{}",
        bos.text()
    );
    assert!(bos.status == 403 || bos.status == 404, "{}", bos.text());
    for (method, target, body) in [
        (Method::DELETE, path.clone(), None),
        (
            Method::DELETE,
            "/fhir/Consent?patient=Patient/pat-anne".to_owned(),
            None,
        ),
        (
            Method::POST,
            "/fhir".to_owned(),
            Some(
                json!({ "resourceType": "Bundle", "type": "batch", "entry": [{
                "request": { "method": "DELETE", "url": format!("Consent/{id}") }
            }] }),
            ),
        ),
    ] {
        let answer = api
            .send(request(
                method.clone(),
                &target,
                Some(&professional_writer),
                body,
            ))
            .await
            .unwrap();
        assert_eq!(
            outcome(&answer),
            (403, "citizen-block-reserved".into()),
            "{method} {target}"
        );
    }
    assert_eq!(
        outcome(&read_anne(gateway, &mette, None).await),
        (403, "consent-block".into())
    );
    // A Consent about her that she did not make here is not hers to lift here.
    let other = stored(
        backend,
        json!({ "reference": "Practitioner/prac-xy123" }),
        false,
    )
    .await;
    let other_path = format!(
        "/fhir/Consent/{}",
        other["id"].as_str().unwrap_or_else(|| panic!("{other}"))
    );
    assert_eq!(
        outcome(
            &browser
                .send(json_patch(&other_path, &anne, LIFT, &[]))
                .await
                .unwrap()
        ),
        (403, "citizen-block-refused".into())
    );

    // A professional cannot make a Consent look like one of hers: the tag is refused on the
    // main listener. Written past the gateway, a tagged Consent of another shape (a permit) is
    // not the block she has, nor counted, nor hers to lift.
    let writer = gateway.token(json!({ "scope": "user/*.cruds", "role": "7170" }));
    let mut tagged = made.json();
    tagged.as_object_mut().unwrap().remove("id");
    tagged["provision"]["type"] = json!("permit");
    let forged = gateway
        .client()
        .send(request(
            Method::POST,
            "/fhir/Consent",
            Some(&writer),
            Some(tagged.clone()),
        ))
        .await
        .unwrap();
    assert_eq!(outcome(&forged), (403, "citizen-block-reserved".into()));
    tagged["provision"]["actor"][0]["reference"] =
        json!({ "reference": "Practitioner/prac-xy123" });
    for _ in 0..10 {
        let dummy = backend_send(
            backend.base_url(),
            Method::POST,
            "Consent",
            Some(tagged.clone()),
        )
        .await;
        assert_eq!(dummy["resourceType"], "Consent", "{dummy}");
    }
    let dummy_id = backend_send(
        backend.base_url(),
        Method::POST,
        "Consent",
        Some(tagged.clone()),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        outcome(
            &browser
                .send(json_patch(
                    &format!("/fhir/Consent/{dummy_id}"),
                    &anne,
                    LIFT,
                    &[]
                ))
                .await
                .unwrap()
        ),
        (403, "citizen-block-refused".into())
    );

    // No more than ten blocks in force: nine more exactly as the gateway writes them.
    for n in 0..9 {
        let mut more = made.json();
        more.as_object_mut().unwrap().remove("id");
        more["provision"]["actor"][0]["reference"] =
            json!({ "identifier": { "system": AUTHORIZATION, "value": format!("ZZ{n}") } });
        let more = backend_send(backend.base_url(), Method::POST, "Consent", Some(more)).await;
        assert_eq!(more["resourceType"], "Consent", "{more}");
    }
    let organisation = post(
        &browser,
        &anne,
        block(
            "pat-anne",
            anne_event,
            json!({ "identifier": { "system": SOR, "value": "265161000016008" } }),
        ),
    )
    .await;
    assert_eq!(
        outcome(&organisation),
        (422, "citizen-block-invalid".into())
    );
    assert!(
        organisation.text().contains("10"),
        "{}",
        organisation.text()
    );
}

async fn metric(gateway: &Gateway, name: &str) -> Option<f64> {
    let metrics = gateway.client().get("/metrics", None).await.unwrap().text();
    metric_value(&metrics, name)
}

async fn until_metric(gateway: &Gateway, name: &str, wanted: f64) {
    for _ in 0..100 {
        if metric(gateway, name).await == Some(wanted) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} never became {wanted}");
}

#[tokio::test]
async fn a_block_made_on_one_replica_holds_on_the_others_at_once() {
    let backend = BackendProcess::start(&portvagt::demo::default_testbed(), true).unwrap();
    let repository = Repository::start();
    let redis = crate::token_exchange::Redis::start();
    let replica = || {
        Gateway::start_with(Options {
            backend_url: Some(backend.base_url().to_owned()),
            extra_config: format!(
                "[consent]\ncache_ttl = \"300s\"\nredis_url = \"{}\"\n\n[citizen]\nlisten = \"127.0.0.1:0\"\naudiences = [\"{CITIZEN_AUDIENCE}\"]\nblocks = true\n",
                redis.url
            ),
            ..repository.gateway_options("")
        })
    };
    let (first, second) = (replica(), replica());
    for gateway in [&first, &second] {
        until_metric(gateway, "portvagt_consent_bus_subscribed", 1.0).await;
    }
    // Mette reads through both: Anne's blocks are cached on both (for 300 s).
    let mette = professional(&second, "Mette Kjær", "NS363", "TREATMENT");
    assert_eq!(read_anne(&second, &mette, None).await.status, 200);
    let mette_first = professional(&first, "Mette Kjær", "NS363", "TREATMENT");
    assert_eq!(read_anne(&first, &mette_first, None).await.status, 200);
    let browser = first.citizen_client();
    let anne = citizen(&first, "pat-anne");
    let event = her_event(&browser, &anne, by("Mette Kjær")).await;
    let made = post(
        &browser,
        &anne,
        block(
            "pat-anne",
            event["id"].as_str().unwrap(),
            json!({ "reference": "Practitioner/prac-ns363" }),
        ),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text());
    let id = made.json()["id"].as_str().unwrap().to_owned();
    // Announced: the other replica refuses her at once (its cache would have let her in).
    let mut refused = read_anne(&second, &mette, None).await;
    for _ in 0..20 {
        if refused.status == 403 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        refused = read_anne(&second, &mette, None).await;
    }
    assert_eq!(outcome(&refused), (403, "consent-block".into()));

    // Without Redis no replica trusts its cache: a block lifted on one, unannounced, is seen
    // on the other at once all the same.
    drop(redis);
    until_metric(&second, "portvagt_consent_bus_subscribed", 0.0).await;
    let lifted = browser
        .send(json_patch(&format!("/fhir/Consent/{id}"), &anne, LIFT, &[]))
        .await
        .unwrap();
    assert_eq!(lifted.status, 200, "{}", lifted.text());
    assert_eq!(
        metric(&first, "portvagt_consent_bus_failures_total").await,
        Some(1.0)
    );
    assert_eq!(read_anne(&second, &mette, None).await.status, 200);
}

#[tokio::test]
async fn her_own_blocks_never_shut_her_out_and_one_block_is_made_once() {
    let setup = setup();
    let gateway = &setup.gateway;
    let mette = professional(gateway, "Mette Kjær", "NS363", "TREATMENT");
    assert_eq!(read_anne(gateway, &mette, None).await.status, 200);
    let browser = gateway.citizen_client();
    // Anne works at the unit Mette read her record for: her identity provider says so.
    let anne = gateway.citizen_token(json!({
        "sub": "pat-anne", "scope": "launch/patient patient/AuditEvent.rs patient/Consent.crus",
        "patient": "pat-anne", "fhirUser": "Patient/pat-anne", "client_id": "minlog",
        "care_provider": { "type": "medcom:sor", "id": "265161000016008", "name": "Rigshospitalet" },
    }));
    let event = her_event(&browser, &anne, by("Mette Kjær")).await;
    let unit = block(
        "pat-anne",
        event["id"].as_str().unwrap(),
        json!({ "identifier": { "system": SOR, "value": "265161000016008" } }),
    );
    // Asked three times at once (three connections): one block, the same one answered to all.
    let tabs = [
        gateway.citizen_client(),
        gateway.citizen_client(),
        gateway.citizen_client(),
    ];
    let (a, b, c) = tokio::join!(
        post(&tabs[0], &anne, unit.clone()),
        post(&tabs[1], &anne, unit.clone()),
        post(&tabs[2], &anne, unit.clone())
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16(), c.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 201],
        "{} {} {}",
        a.text(),
        b.text(),
        c.text()
    );
    let ids: Vec<Value> = [&a, &b, &c]
        .iter()
        .map(|x| x.json()["id"].clone())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    // The unit is blocked: Mette, who acts for it, is refused.
    assert_eq!(
        outcome(&read_anne(gateway, &mette, None).await),
        (403, "consent-block".into())
    );
    // Anne is not: her own log and her own blocks stay hers to read.
    let log = browser.get("/fhir/AuditEvent", Some(&anne)).await.unwrap();
    assert_eq!(log.status, 200, "{}", log.text());
    assert!(log.text().contains("Mette Kjær"), "{}", log.text());
    let listed = browser
        .get("/fhir/Consent?status=active", Some(&anne))
        .await
        .unwrap();
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert!(listed.text().contains(ids[0].as_str().unwrap()));
    // Nothing else is brought along with her Consents (the Practitioners they name).
    let included = browser
        .get("/fhir/Consent?_include=Consent:actor", Some(&anne))
        .await
        .unwrap();
    assert_eq!(outcome(&included), (403, "citizen-listener".into()));
}
