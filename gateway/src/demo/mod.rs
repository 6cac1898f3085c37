//! `portvagt demo`: a complete local deployment in one command. Makes the dev PKI and a demo
//! token issuer, starts the reference FHIR backend (testbed/backend) with Danish sample data,
//! starts the gateway in front of it, and writes `demo.env` with ready-to-use tokens.
//!
//! The testbed's processes, demo tokens, sample accesses and config file are in files of their
//! own; this file runs them in order. Development only: nothing on the gateway's serving path
//! may use it.

mod config_file;
mod processes;
mod samples;
mod token;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

use self::config_file::demo_config;
pub use self::processes::{AuthServerProcess, BackendProcess, default_testbed};
use self::samples::sample_accesses;
pub use self::token::{TokenRequest, mint_token};
use crate::auth::issuer_key::IssuerKey;
use crate::config::{Config, ConfigError};
use crate::runtime::Runtime;

/// The demo issuer's `iss`.
pub const DEMO_ISSUER: &str = "https://issuer.demo.portvagt.invalid";

/// The demo issuer key's `kid`.
pub const DEMO_KEY_ID: &str = "demo-1";
/// The `kid` of the demo's audit seal key.
const DEMO_SEAL_KEY_ID: &str = "audit-seal-demo";

/// Options of `portvagt demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the PKI, issuer key, config and `demo.env` go.
    pub dir: PathBuf,
    /// Gateway port on 127.0.0.1.
    pub port: u16,
    /// The testbed folder.
    pub testbed: PathBuf,
}

/// Runs the demo until Ctrl-C.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    // Ctrl-C from here on stops everything cleanly (the audit trail closed).
    let stop = crate::server::shutdown_signal();
    let dir = std::path::absolute(&options.dir)?;
    // The ports first: a second demo started beside a running one fails here, before it writes
    // anything into a folder the first one may be using.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port))
        .await
        .with_context(|| {
            format!(
                "binding 127.0.0.1:{} (is another demo running? try --port)",
                options.port
            )
        })?;
    let addr = listener.local_addr()?;
    let public_url = format!("https://{addr}/fhir");
    // The citizen listener, on the next port (no client certificate: a browser's).
    let citizen_port = if options.port == 0 {
        0
    } else {
        options
            .port
            .checked_add(1)
            .context("--port leaves no port above it for the citizen listener")?
    };
    let citizen_listener = tokio::net::TcpListener::bind(("127.0.0.1", citizen_port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{citizen_port} for the citizen listener"))?;
    let citizen_addr = citizen_listener.local_addr()?;
    let citizen_url = format!("https://{citizen_addr}/fhir");
    // An earlier run's demo.env names ports and tokens no longer good: gone until this run
    // writes its own, once the gateway is about to serve.
    match std::fs::remove_file(dir.join("demo.env")) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.into()),
        _ => {}
    }
    let pki_dir = dir.join("pki");
    let issuer_dir = dir.join("issuer");
    let pki = portvagt_certs::DevPki::generate()?;
    pki.write_to(&pki_dir)?;
    IssuerKey::generate(DEMO_KEY_ID)?.save(&issuer_dir)?;
    IssuerKey::generate("portvagt-1")?.save(&dir.join("portvagt-key"))?;
    // The audit chain's seal key; verify with its public half, audit-seal/seal-jwks.json.
    let seal = IssuerKey::generate(DEMO_SEAL_KEY_ID)?;
    std::fs::create_dir_all(dir.join("audit-seal"))?;
    std::fs::write(dir.join("audit-seal/seal.key"), seal.pem())?;
    std::fs::write(dir.join("audit-seal/seal-jwks.json"), seal.jwks())?;

    eprintln!("starting the reference FHIR backend and the audit repository ...");
    let backend = tokio::task::spawn_blocking({
        let testbed = options.testbed.clone();
        move || BackendProcess::start(&testbed, true)
    })
    .await??;
    let audit_repository = tokio::task::spawn_blocking({
        let (testbed, pki_dir) = (options.testbed.clone(), pki_dir.clone());
        move || BackendProcess::start_repository(&testbed, &pki_dir, 0)
    })
    .await??;

    // Citizens sign in to the page at the testbed authorization server (PKCE).
    let auth_server = tokio::task::spawn_blocking({
        let testbed = options.testbed.clone();
        let (pki_dir, citizen_url) = (pki_dir.clone(), citizen_url.clone());
        let redirect = format!("https://{citizen_addr}/minlog/");
        move || AuthServerProcess::start(&testbed, &pki_dir, &citizen_url, &redirect)
    })
    .await??;
    let config_path = dir.join("portvagt.toml");
    std::fs::write(
        &config_path,
        demo_config(
            addr,
            &public_url,
            citizen_addr,
            auth_server.issuer(),
            backend.base_url(),
            audit_repository.base_url(),
        ),
    )?;
    let config = Config::load(&config_path)?;
    let runtime = Runtime::build(config, addr)
        .map_err(|errors| anyhow::anyhow!(ConfigError::join(&errors, "\n")))?;
    runtime.open()?;

    let hours = Duration::from_secs(8 * 3600);
    let client_cert = pki_dir.join("client.crt");
    let physician = |purpose: &str| TokenRequest {
        subject: "mette.kjaer".into(),
        scope: "openid fhirUser user/*.rs user/Observation.cruds".into(),
        fhir_user: Some("Practitioner/prac-ns363".into()),
        client_id: Some("journalsystem-demo".into()),
        bind_cert: Some(client_cert.clone()),
        ttl: hours,
        extra: json!({
            "name": "Mette Kjær", "role": "7170", "authorization_id": "NS363",
            "purpose_of_use": purpose,
        }),
        ..TokenRequest::default()
    };
    let practitioner = mint_token(&issuer_dir, &public_url, &physician("TREATMENT"))?;
    let emergency = mint_token(&issuer_dir, &public_url, &physician("EMERGENCY"))?;
    let patient = mint_token(&issuer_dir, &public_url, &TokenRequest {
        subject: "anne.hansen".into(),
        scope: "openid fhirUser launch/patient patient/Patient.rs patient/Observation.rs patient/Condition.rs patient/Encounter.rs patient/MedicationRequest.rs patient/AuditEvent.rs".into(),
        patient: Some("pat-anne".into()),
        fhir_user: Some("Patient/pat-anne".into()),
        client_id: Some("min-sundhed-demo".into()),
        ttl: hours,
        ..TokenRequest::default()
    })?;
    // The same citizen as her browser holds her token: for the citizen listener's audience.
    let citizen = mint_token(
        &issuer_dir,
        &citizen_url,
        &TokenRequest {
            subject: "anne.hansen".into(),
            scope: "openid fhirUser launch/patient patient/AuditEvent.rs patient/Consent.crus"
                .into(),
            patient: Some("pat-anne".into()),
            fhir_user: Some("Patient/pat-anne".into()),
            client_id: Some("minlog-demo".into()),
            ttl: hours,
            ..TokenRequest::default()
        },
    )?;
    let system = mint_token(
        &issuer_dir,
        &public_url,
        &TokenRequest {
            subject: "journalsystem-demo".into(),
            scope: "system/*.cruds".into(),
            client_id: Some("journalsystem-demo".into()),
            bind_cert: Some(client_cert),
            ttl: hours,
            ..TokenRequest::default()
        },
    )?;
    // The migration path from DGWS: a SOSI system card for the demo client certificate, to
    // exchange (once) at POST /token.
    let card = dir.join("sosi-card.xml");
    std::fs::write(
        &card,
        portvagt_certs::saml::SosiCard::system(&pki.client.cert_der).sign(&pki.sts)?,
    )?;
    let env = format!(
        "PORTVAGT_URL={public_url}\nPORTVAGT_CITIZEN_URL={citizen_url}\nPORTVAGT_MINLOG_URL=https://{citizen_addr}/minlog/\n\
         PORTVAGT_CA={pki}/ca.crt\nPORTVAGT_CERT={pki}/client.crt\nPORTVAGT_KEY={pki}/client.key\n\
         PRACTITIONER_TOKEN={practitioner}\nEMERGENCY_TOKEN={emergency}\nPATIENT_TOKEN={patient}\nCITIZEN_TOKEN={citizen}\nSYSTEM_TOKEN={system}\n\
         PORTVAGT_TOKEN_URL=https://{addr}/token\nSOSI_CARD={card}\nPORTVAGT_DEMO_ISSUER={DEMO_ISSUER}\n",
        pki = pki_dir.display(),
        card = card.display(),
    );
    std::fs::write(dir.join("demo.env"), env)?;

    // Sample accesses to Anne's record for her access log, made through the gateway once it
    // listens: a read, a read her block refuses, and the same professional breaking the glass.
    let nurse = |purpose: &str| TokenRequest {
        subject: "jonas.holm".into(),
        scope: "openid fhirUser user/*.rs".into(),
        fhir_user: Some("Practitioner/prac-zk482".into()),
        client_id: Some("journalsystem-demo".into()),
        bind_cert: Some(pki_dir.join("client.crt")),
        ttl: Duration::from_secs(600),
        extra: json!({
            "name": "Jonas Holm", "role": "5166", "authorization_id": "ZK482",
            "purpose_of_use": purpose,
        }),
        ..TokenRequest::default()
    };
    let samples = vec![
        (practitioner.clone(), None, "Patient/pat-anne"),
        (
            mint_token(&issuer_dir, &public_url, &nurse("TREATMENT"))?,
            None,
            "Patient/pat-anne",
        ),
        (
            mint_token(&issuer_dir, &public_url, &nurse("EMERGENCY"))?,
            Some("Bevidstløs ved indlæggelse, ingen pårørende at spørge"),
            "Patient/pat-anne",
        ),
        (practitioner, None, "Patient/pat-bo"),
        (
            emergency,
            Some("Indlagt akut, kan ikke svare"),
            "Patient/pat-bo",
        ),
    ];
    let runtime = Arc::new(runtime);
    tokio::spawn(sample_accesses(
        pki_dir.clone(),
        public_url.clone(),
        backend.base_url().to_owned(),
        samples,
    ));
    print_instructions(&dir, audit_repository.base_url());

    crate::server::serve(
        runtime,
        crate::server::Listeners {
            client: listener,
            admin: None,
            citizen: Some(citizen_listener),
        },
        stop,
    )
    .await;
    drop(backend);
    drop(audit_repository);
    drop(auth_server);
    Ok(())
}

fn print_instructions(dir: &Path, audit_url: &str) {
    let env = dir.join("demo.env");
    let curl =
        "curl -s --cacert \"$PORTVAGT_CA\" --cert \"$PORTVAGT_CERT\" --key \"$PORTVAGT_KEY\"";
    println!(
        r#"
Portvagt demo is running. In another shell:

  set -a; . {env}; set +a

  # A practitioner reads a patient (token bound to the client certificate, RFC 8705):
  {curl} -H "Authorization: Bearer $PRACTITIONER_TOKEN" "$PORTVAGT_URL/Patient/pat-anne"

  # The citizen Anne searches her own observations, and is refused Bo's:
  {curl} -H "Authorization: Bearer $PATIENT_TOKEN" "$PORTVAGT_URL/Observation?patient=pat-anne"
  {curl} -H "Authorization: Bearer $PATIENT_TOKEN" "$PORTVAGT_URL/Observation?patient=pat-bo"

  # A system creates an Observation:
  {curl} -H "Authorization: Bearer $SYSTEM_TOKEN" -H "Content-Type: application/fhir+json" \
    -d '{{"resourceType":"Observation","status":"final","code":{{"text":"puls"}},"subject":{{"reference":"Patient/pat-bo"}},"valueQuantity":{{"value":64,"unit":"/min"}}}}' \
    "$PORTVAGT_URL/Observation"

  # A DGWS system moves to REST: its SOSI ID card (signed by the dev STS, bound to the client
  # certificate) is exchanged once for a Portvagt token, which then reads a patient:
  TOKEN=$({curl} --data-urlencode "saml-token=$(base64 -w0 "$SOSI_CARD")" "$PORTVAGT_TOKEN_URL" \
    | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
  {curl} -H "Authorization: Holder-of-key $TOKEN" "$PORTVAGT_URL/Patient/pat-anne"
  # (a card is accepted once; sign another with
  #  `cargo run -p portvagt-certs -- sosi-card --pki {dir}/pki --out "$SOSI_CARD"`)

  # Dr. Kjær treats Anne (an EpisodeOfCare: Anne is on her practice's list), not Bo: without a
  # treatment relationship she is refused; værdispring (EMERGENCY with a reason) lets her
  # through, marked in Bo's log and listed for follow-up:
  {curl} -H "Authorization: Bearer $PRACTITIONER_TOKEN" "$PORTVAGT_URL/Patient/pat-bo"
  {curl} -H "Authorization: Bearer $EMERGENCY_TOKEN" \
    -H "X-Portvagt-Break-Glass-Reason: indlagt akut, kan ikke svare" "$PORTVAGT_URL/Patient/pat-bo"
  cargo run -p portvagt -- audit follow-up {dir}/audit

  # Carla has blocked Dr. Kjær (a Consent in the backend): refused. In an emergency, with a
  # reason, the block is set aside, and the access is marked in the audit trail:
  {curl} -H "Authorization: Bearer $PRACTITIONER_TOKEN" "$PORTVAGT_URL/Patient/pat-carla"
  {curl} -H "Authorization: Bearer $EMERGENCY_TOKEN" \
    -H "X-Portvagt-Break-Glass-Reason: bevidstløs på skadestuen" "$PORTVAGT_URL/Patient/pat-carla"

  # Anne reads who has looked at her record (newest first):
  {curl} -H "Authorization: Bearer $PATIENT_TOKEN" "$PORTVAGT_URL/AuditEvent"

  # ... on the citizen listener, as her browser would (no client certificate, a token for that
  # listener's audience), or in the page $PORTVAGT_MINLOG_URL (sign in as anne.hansen, any
  # password, or paste $CITIZEN_TOKEN):
  curl -s --cacert "$PORTVAGT_CA" -H "Authorization: Bearer $CITIZEN_TOKEN" "$PORTVAGT_CITIZEN_URL/AuditEvent"

  # The audit spool's hash chain and its seals (nothing altered, nothing cut off), and that it
  # reaches the anchor the audit repository holds:
  cargo run -p portvagt -- audit verify {dir}/audit --jwks {dir}/audit-seal/seal-jwks.json \
    --repository {audit_url} --repository-ca {dir}/pki/ca.crt

  # No token, no access (401 OperationOutcome):
  {curl} -i "$PORTVAGT_URL/Patient/pat-anne"

  # Metrics and SMART configuration:
  {curl} "${{PORTVAGT_URL%/fhir}}/metrics" | grep portvagt_requests_total
  {curl} "$PORTVAGT_URL/.well-known/smart-configuration"

Mint more tokens with `cargo run -p portvagt -- token --dir {dir} --sub ... --scope ...`.
Ctrl-C stops everything.
"#,
        env = env.display(),
        dir = dir.display(),
    );
}
