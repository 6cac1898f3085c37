//! The mass-lookup guard end to end: a professional who reaches more distinct patients than the
//! threshold in the window is refused (`403 too-many-patients`) or only flagged, counted across
//! replicas through a real Redis, per replica without it, and on in each replica while Redis is
//! gone. Patients reached by name and patients in answers both count; the same patient again
//! does not; systems and citizens are not counted.

use serde_json::json;

use crate::support::{Gateway, Options, metric_value};
use crate::token_exchange::Redis;

fn guarded(max: u32, action: &str, redis: Option<&Redis>) -> Gateway {
    let shared = redis.map_or_else(String::new, |redis| {
        format!("redis_url = \"{}\"\n", redis.url)
    });
    Gateway::start_with(Options {
        extra_config: format!(
            "[mass_lookup]\nmax_patients = {max}\nwindow = \"1h\"\naction = \"{action}\"\n{shared}"
        ),
        ..Options::default()
    })
}

/// A physician's token (`authorization` names her across gateways and tokens).
fn physician(gateway: &Gateway, authorization: &str) -> String {
    gateway.token(json!({ "scope": "user/*.rs", "role": "7170",
        "authorization_id": authorization, "name": "Læge" }))
}

async fn status(gateway: &Gateway, path: &str, token: &str) -> (u16, Option<String>) {
    let answer = gateway.client().get(path, Some(token)).await.unwrap();
    let code = (answer.status != 200).then(|| answer.detail_code());
    (answer.status.as_u16(), code)
}

#[tokio::test]
async fn replicas_sharing_redis_count_one_professional_s_patients_together() {
    let redis = Redis::start();
    let first = guarded(2, "refuse", Some(&redis));
    let second = guarded(2, "refuse", Some(&redis));
    let on_first = physician(&first, "AB123");
    let on_second = physician(&second, "ab123");
    let refused = (403, Some("too-many-patients".to_owned()));

    // Anne on one replica, Bo on the other: the first replica alone has seen one patient.
    assert_eq!(
        status(&first, "/fhir/Patient/pat-anne", &on_first).await,
        (200, None)
    );
    assert_eq!(
        status(&second, "/fhir/Observation?patient=pat-bo", &on_second).await,
        (200, None)
    );
    // A third patient, on either replica: refused, and not counted.
    assert_eq!(
        status(&first, "/fhir/Patient/pat-carla", &on_first).await,
        refused
    );
    // Anne and Bo again, anywhere: nobody new.
    assert_eq!(
        status(&second, "/fhir/Patient/pat-anne", &on_second).await,
        (200, None)
    );
    assert_eq!(
        status(&first, "/fhir/Condition?patient=pat-bo", &on_first).await,
        (200, None)
    );
    assert_eq!(
        status(&second, "/fhir/Patient/pat-carla", &on_second).await,
        refused
    );
    assert_eq!(
        status(&first, "/fhir/Patient/pat-anne", &on_first).await,
        (200, None)
    );

    // Another professional counts on her own; a search whose answer holds three patients is
    // past the threshold by itself: nothing of it leaves.
    let colleague = physician(&first, "CD456");
    assert_eq!(
        status(&first, "/fhir/Observation?_count=100", &colleague).await,
        refused
    );
    assert_eq!(
        status(&first, "/fhir/Patient/pat-carla", &colleague).await,
        (200, None)
    );

    // Systems and citizens are not counted.
    let system = first.token(json!({ "scope": "system/*.rs", "sub": "journalsystem" }));
    assert_eq!(
        status(&first, "/fhir/Observation?_count=100", &system).await,
        (200, None)
    );
    let metrics = first.client().get("/metrics", None).await.unwrap().text();
    assert_eq!(
        metric_value(&metrics, "portvagt_mass_lookups_total{action=\"refused\"}"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "portvagt_access_denied_total{reason=\"too-many-patients\"}"
        ),
        Some(2.0),
        "{metrics}"
    );

    // The refused attempt is in the patient's audit trail.
    let events = first.audit_events();
    assert!(
        events.iter().any(|event| event["outcome"] != "0"
            && event["entity"][0]["what"]["reference"] == "Patient/pat-carla"),
        "{events:?}"
    );

    // Redis gone: each replica goes on counting on its own (refusing, never failing open
    // for what it has seen itself).
    drop(redis);
    let fresh = physician(&first, "EF789");
    assert_eq!(
        status(&first, "/fhir/Patient/pat-anne", &fresh).await,
        (200, None)
    );
    assert_eq!(
        status(&first, "/fhir/Patient/pat-bo", &fresh).await,
        (200, None)
    );
    assert_eq!(
        status(&first, "/fhir/Patient/pat-carla", &fresh).await,
        refused
    );
}

/// Without an audit trail the guard still knows whose data a request reaches: a HEAD (sent as
/// a GET and read) counts like a read.
#[tokio::test]
async fn without_an_audit_trail_heads_and_reads_count_alike() {
    let gateway = Gateway::start_with(Options {
        extra_config: "[mass_lookup]\nmax_patients = 1\n".into(),
        no_audit: true,
        ..Options::default()
    });
    let token = physician(&gateway, "IJ345");
    let head = |path: &str| crate::support::request(http::Method::HEAD, path, Some(&token), None);
    let answer = gateway
        .client()
        .send(head("/fhir/Patient/pat-anne"))
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    let answer = gateway
        .client()
        .send(head("/fhir/Patient/pat-bo"))
        .await
        .unwrap();
    assert_eq!(answer.status, 403);
    assert_eq!(
        status(&gateway, "/fhir/Observation?patient=pat-carla", &token).await,
        (403, Some("too-many-patients".to_owned()))
    );
    assert_eq!(
        status(&gateway, "/fhir/Patient/pat-anne", &token).await,
        (200, None)
    );
}

#[tokio::test]
async fn flagging_lets_the_access_through_and_counts_it() {
    let gateway = guarded(1, "flag", None);
    let token = physician(&gateway, "GH012");
    assert_eq!(
        status(&gateway, "/fhir/Patient/pat-anne", &token).await,
        (200, None)
    );
    assert_eq!(
        status(&gateway, "/fhir/Patient/pat-bo", &token).await,
        (200, None)
    );
    assert_eq!(
        status(&gateway, "/fhir/Patient/pat-carla", &token).await,
        (200, None)
    );
    let metrics = gateway.client().get("/metrics", None).await.unwrap().text();
    assert_eq!(
        metric_value(&metrics, "portvagt_mass_lookups_total{action=\"flagged\"}"),
        Some(2.0),
        "{metrics}"
    );
}

/// A write entry in a batch does not carry the read entries past the guard: the write stands
/// (it has happened), the reads over the threshold are withheld entry by entry.
#[tokio::test]
async fn a_write_in_a_batch_does_not_carry_its_reads_past_the_guard() {
    use crate::support::{MARKER_SYSTEM, marked, send_batch};
    let gateway = guarded(2, "refuse", None);
    let token = gateway.token(json!({ "scope": "user/*.cruds", "role": "7170",
        "authorization_id": "CD456", "name": "Læge" }));
    let marker = uuid::Uuid::new_v4().to_string();
    let batch = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "POST", "url": "Observation" },
          "resource": { "resourceType": "Observation", "status": "final", "code": { "text": marker },
                        "identifier": [{ "system": MARKER_SYSTEM, "value": marker }],
                        "subject": { "reference": "Patient/pat-anne" } } },
        // Names nobody: the patients come with the answer, more than the threshold.
        { "request": { "method": "GET", "url": "Patient?_count=3" } },
    ]});
    let answer = send_batch(&gateway.client(), &token, batch).await;
    let entries = answer.json()["entry"].as_array().unwrap().clone();
    assert!(
        entries[0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("201"),
        "{}",
        answer.text()
    );
    for read in &entries[1..] {
        assert!(
            read["response"]["status"]
                .as_str()
                .unwrap()
                .starts_with("403"),
            "{read}"
        );
        assert!(read.get("resource").is_none(), "{read}");
        assert!(read.to_string().contains("too-many-patients"), "{read}");
    }
    assert_eq!(marked("Observation", &marker).await.len(), 1);
}

/// What a batch costs the audit trail is one event per patient per entry: the same patients
/// read by several entries count again.
#[tokio::test]
async fn a_batch_is_bounded_by_the_events_its_entries_cost() {
    use crate::support::request;
    let gateway = Gateway::start_with(Options {
        audit_extra: "max_patients_per_request = 3\n".into(),
        ..Options::default()
    });
    let token = gateway.token(json!({ "scope": "user/*.rs" }));
    let twice = |count: usize| {
        json!({ "resourceType": "Bundle", "type": "batch", "entry": (0..count).map(|_| json!(
            { "request": { "method": "GET", "url": "Patient?_count=2" } })).collect::<Vec<_>>() })
    };
    let client = gateway.client();
    let one = client
        .send(request(
            http::Method::POST,
            "/fhir",
            Some(&token),
            Some(twice(1)),
        ))
        .await
        .unwrap();
    assert_eq!(one.status, 200, "{}", one.text());
    // The same two patients twice: four events.
    let two = client
        .send(request(
            http::Method::POST,
            "/fhir",
            Some(&token),
            Some(twice(2)),
        ))
        .await
        .unwrap();
    assert_eq!(
        (two.status.as_u16(), two.detail_code()),
        (403, "too-many-patients".to_owned()),
        "{}",
        two.text()
    );
}
