//! `portvagt demo`: a complete local deployment in one command. Makes the dev PKI and a demo
//! token issuer, starts the reference FHIR backend (testbed/backend) with Danish sample data,
//! starts the gateway in front of it, and writes `demo.env` with ready-to-use tokens.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::auth::issuer_key::IssuerKey;
use crate::config::{Config, ConfigError};
use crate::runtime::Runtime;
use crate::tls::PeerIdentity;

/// The demo issuer's `iss`.
pub const DEMO_ISSUER: &str = "https://issuer.demo.portvagt.invalid";

/// The demo issuer key's `kid`.
pub const DEMO_KEY_ID: &str = "demo-1";
/// The `kid` of the demo's audit seal key.
const DEMO_SEAL_KEY_ID: &str = "audit-seal-demo";

/// Where the testbed lives when not told otherwise: beside the gateway crate.
pub fn default_testbed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testbed")
}

/// The reference FHIR backend (Medplum's FHIR router in memory) as a child process. It exits
/// when dropped, and also on its own when this process dies (it watches its stdin).
#[derive(Debug)]
pub struct BackendProcess {
    child: Child,
    _stdin: ChildStdin,
    base_url: String,
}

impl BackendProcess {
    /// Starts the backend from `testbed`, installing its npm packages first if needed.
    pub fn start(testbed: &Path, seed: bool) -> anyhow::Result<BackendProcess> {
        Self::start_on(testbed, seed, 0)
    }

    /// Like [`BackendProcess::start`], on a given port (0: any free port).
    pub fn start_on(testbed: &Path, seed: bool, port: u16) -> anyhow::Result<BackendProcess> {
        Self::start_with(testbed, seed, port, &[])
    }

    /// An empty audit repository on `port` (0: any free port), serving HTTPS with the dev PKI
    /// in `pki` (`server.crt`) and taking writes only from the gateway's certificate
    /// (`gateway.crt`, presented by the shipper): nobody else can add, change or delete an
    /// AuditEvent in it.
    pub fn start_repository(
        testbed: &Path,
        pki: &Path,
        port: u16,
    ) -> anyhow::Result<BackendProcess> {
        let file = |name: &str| pki.join(name).display().to_string();
        let tls = [
            ("--tls-cert", "server.crt"),
            ("--tls-key", "server.key"),
            ("--client-ca", "ca.crt"),
            ("--writer-cert", "gateway.crt"),
        ]
        .map(|(flag, name)| [flag.to_owned(), file(name)]);
        Self::start_with(testbed, false, port, tls.as_flattened())
    }

    fn start_with(
        testbed: &Path,
        seed: bool,
        port: u16,
        extra: &[String],
    ) -> anyhow::Result<BackendProcess> {
        let mut args = vec![
            "--watch-stdin".to_owned(),
            "--port".into(),
            port.to_string(),
        ];
        if seed {
            args.extend(["--seed".into(), "seed/bundle.json".into()]);
        }
        args.extend_from_slice(extra);
        let (child, stdin, announced) =
            start_node(&testbed.join("backend"), &args, "the reference backend")?;
        let base_url = announced["listening"]
            .as_str()
            .context("no `listening` in the backend's announcement")?
            .to_owned();
        Ok(BackendProcess {
            child,
            _stdin: stdin,
            base_url,
        })
    }

    /// The backend's FHIR base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
}

/// Starts `node server.mjs ARGS` in `dir` (after `npm ci` there if needed), and reads the one
/// JSON line it announces itself with. It exits when its stdin closes.
fn start_node(
    dir: &Path,
    args: &[String],
    what: &str,
) -> anyhow::Result<(Child, ChildStdin, serde_json::Value)> {
    if !dir.join("node_modules").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir)
            .status()
            .with_context(|| format!("running npm ci for {what} (is Node.js installed?)"))?;
        if !status.success() {
            bail!("npm ci failed in {}", dir.display());
        }
    }
    let mut child = Command::new("node")
        .arg("server.mjs")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {what} (is Node.js installed?)"))?;
    let stdin = child.stdin.take().context("stdin")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .with_context(|| format!("reading the first line of {what}"))?;
    let announced = serde_json::from_str(line.trim())
        .with_context(|| format!("{what} did not announce its address: {line:?}"))?;
    Ok((child, stdin, announced))
}

/// The testbed authorization server (oidc-provider), signing citizens in for the citizen page
/// (authorization code with PKCE). It exits when dropped, or when this process dies.
#[derive(Debug)]
pub struct AuthServerProcess {
    child: Child,
    _stdin: ChildStdin,
    issuer: String,
}

impl AuthServerProcess {
    /// Starts it from `testbed` with the TLS certificate and key in `pki`, issuing tokens for
    /// `audience` to the citizen page at `redirect_uri`.
    pub fn start(
        testbed: &Path,
        pki: &Path,
        audience: &str,
        redirect_uri: &str,
    ) -> anyhow::Result<AuthServerProcess> {
        let path = |file: &str| pki.join(file).display().to_string();
        let args = [
            "--issuer-port".to_owned(),
            "0".into(),
            "--watch-stdin".into(),
            "--tls-cert".into(),
            path("server.crt"),
            "--tls-key".into(),
            path("server.key"),
            "--audience".into(),
            audience.into(),
            "--citizen-client".into(),
            redirect_uri.into(),
        ];
        let (child, stdin, announced) = start_node(
            &testbed.join("authserver"),
            &args,
            "the authorization server",
        )?;
        let issuer = announced["issuer"]
            .as_str()
            .context("no `issuer` in the authorization server's announcement")?
            .to_owned();
        Ok(AuthServerProcess {
            child,
            _stdin: stdin,
            issuer,
        })
    }

    /// Its issuer URL (`https://127.0.0.1:<port>`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
}

impl Drop for AuthServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a demo token says.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    /// `sub`.
    pub subject: String,
    /// `scope`, space-separated.
    pub scope: String,
    /// `patient` launch context.
    pub patient: Option<String>,
    /// `fhirUser`.
    pub fhir_user: Option<String>,
    /// `client_id`.
    pub client_id: Option<String>,
    /// Bind to this client certificate (PEM file) with `cnf.x5t#S256`.
    pub bind_cert: Option<PathBuf>,
    /// Lifetime.
    pub ttl: Duration,
    /// More claims (an object), e.g. `name`, `role`, `authorization_id`, `purpose_of_use`.
    pub extra: serde_json::Value,
}

/// Mints a token from the demo issuer key in `issuer_dir` for `audience`.
pub fn mint_token(
    issuer_dir: &Path,
    audience: &str,
    request: &TokenRequest,
) -> anyhow::Result<String> {
    let key = IssuerKey::load(issuer_dir)?;
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = json!({
        "iss": DEMO_ISSUER,
        "aud": audience,
        "sub": request.subject,
        "iat": now,
        "nbf": now,
        "exp": now + request.ttl.as_secs(),
        "jti": uuid::Uuid::new_v4().to_string(),
        "scope": request.scope,
    });
    if let Some(patient) = &request.patient {
        claims["patient"] = json!(patient);
    }
    if let Some(fhir_user) = &request.fhir_user {
        claims["fhirUser"] = json!(fhir_user);
    }
    if let Some(client_id) = &request.client_id {
        claims["client_id"] = json!(client_id);
    }
    if let Some(extra) = request.extra.as_object() {
        for (name, value) in extra {
            claims[name] = value.clone();
        }
    }
    if let Some(path) = &request.bind_cert {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let der = x509_parser::pem::parse_x509_pem(&pem)
            .map_err(|e| anyhow::anyhow!("{}: not a PEM certificate: {e}", path.display()))?
            .1
            .contents;
        let identity =
            PeerIdentity::from_verified_leaf(&der).context("not an X.509 certificate")?;
        claims["cnf"] = json!({ "x5t#S256": identity.thumbprint_sha256() });
    }
    key.sign(&claims)
}

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
        options.port + 1
    };
    let citizen_listener = tokio::net::TcpListener::bind(("127.0.0.1", citizen_port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{citizen_port} for the citizen listener"))?;
    let citizen_addr = citizen_listener.local_addr()?;
    let citizen_url = format!("https://{citizen_addr}/fhir");
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
         PRACTITIONER_TOKEN={practitioner}\nEMERGENCY_TOKEN={emergency}\nPATIENT_TOKEN={patient}\nSYSTEM_TOKEN={system}\n\
         PORTVAGT_TOKEN_URL=https://{addr}/token\nSOSI_CARD={card}\n",
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

/// Anne blocks nurse Jonas Holm (authorisation ZK482) in the backend, then the `samples`
/// (token, break-the-glass reason, path) are requested through the gateway at `public_url`.
async fn sample_accesses(
    pki: PathBuf,
    public_url: String,
    backend_url: String,
    samples: Vec<(String, Option<&'static str>, &'static str)>,
) {
    use http_body_util::Full;
    let block = json!({
        "resourceType": "Consent",
        "id": "consent-anne-blocks-zk482",
        "status": "active",
        "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy" }] },
        "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }] }],
        "patient": { "reference": "Patient/pat-anne" },
        "policyRule": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT" }] },
        "provision": { "type": "deny", "actor": [{
            "role": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "PRCP" }] },
            "reference": { "identifier": { "system": "https://autregweb.sst.dk", "value": "ZK482" }, "display": "Jonas Holm" }
        }]}
    });
    let run = async {
        let plain = crate::auth::https::HttpsClient::allowing_plain_http(
            None,
            None,
            Duration::from_secs(10),
        )?;
        let put = http::Request::put(format!("{backend_url}/Consent/consent-anne-blocks-zk482"))
            .header(http::header::CONTENT_TYPE, "application/fhir+json")
            .body(Full::new(bytes::Bytes::from(block.to_string())))
            .map_err(|e| e.to_string())?;
        plain.send(put).await?;
        let (cert, key) = (pki.join("client.crt"), pki.join("client.key"));
        let client = crate::auth::https::HttpsClient::new(
            Some(&pki.join("ca.crt")),
            Some(crate::auth::https::ClientIdentity {
                cert: &cert,
                key: &key,
            }),
            Duration::from_secs(10),
        )?;
        for (token, reason, path) in samples {
            let request = || {
                let mut request = http::Request::get(format!("{public_url}/{path}"))
                    .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
                if let Some(reason) = reason {
                    // UTF-8 (obs-text on the wire), as the gateway reads it.
                    request = request.header(
                        crate::consent::BREAK_GLASS_HEADER,
                        http::HeaderValue::from_bytes(reason.as_bytes())
                            .map_err(|e| e.to_string())?,
                    );
                }
                request
                    .body(Full::new(bytes::Bytes::new()))
                    .map_err(|e| e.to_string())
            };
            // The first attempt may come before the listener accepts.
            for _ in 0..50 {
                match client.send(request()?).await {
                    Ok(_) => break,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        Ok::<(), String>(())
    };
    if let Err(error) = run.await {
        eprintln!("the demo's sample accesses failed: {error}");
    }
}

fn demo_config(
    addr: std::net::SocketAddr,
    public_url: &str,
    citizen_addr: std::net::SocketAddr,
    auth_issuer: &str,
    backend_url: &str,
    audit_url: &str,
) -> String {
    format!(
        r#"# Written by `portvagt demo`. Paths are relative to this file.
[server]
listen = "{addr}"
public_base_url = "{public_url}"
shutdown_grace = "5s"

[tls]
cert = "pki/server.crt"
key = "pki/server.key"
client_ca = "pki/ca.crt"
crls = ["pki/crl.pem"]

[[issuer]]
issuer = "{DEMO_ISSUER}"
audiences = ["{public_url}", "https://{citizen_addr}/fhir"]
jwks_file = "issuer/jwks.json"

# The testbed authorization server: citizens signing in to the page /minlog/ (PKCE).
[[issuer]]
issuer = "{auth_issuer}"
audiences = ["https://{citizen_addr}/fhir"]
jwks_url = "{auth_issuer}/jwks"
ca_file = "pki/ca.crt"

[smart]
issuer = "{auth_issuer}"
jwks_uri = "{auth_issuer}/jwks"
authorization_endpoint = "{auth_issuer}/auth"
token_endpoint = "{auth_issuer}/token"

[backend]
url = "{backend_url}"

# SOSI ID cards and OIOSAML assertions signed by the dev STS, exchanged for Portvagt tokens.
[token_exchange]
issuer = "https://{addr}"
signing_key = "portvagt-key/issuer.key"
key_id = "portvagt-1"
trusted_sts = ["pki/sts.crt"]
assertion_audiences = ["https://{addr}"]

# Every access becomes IHE BALP AuditEvents: durable in audit/ before the answer leaves,
# shipped to the audit repository, where citizens read their own.
[audit]
spool_dir = "audit"
# Signed checkpoints in the chain: `audit verify --jwks` proves nothing was cut off.
seal_key = "audit-seal/seal.key"
seal_key_id = "{DEMO_SEAL_KEY_ID}"

# The repository takes writes only from the gateway's own certificate.
[audit.ship]
url = "{audit_url}"
ca_file = "pki/ca.crt"
client_cert = "pki/gateway.crt"
client_key = "pki/gateway.key"

# Citizens' blocks (Consent resources in the backend) are enforced.
[consent]

# Citizens' browsers (no client certificate) read their own access log here, and the
# page /minlog/ shows it.
[citizen]
listen = "{citizen_addr}"

[log]
format = "text"
"#
    )
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

  # Carla has blocked Dr. Kjær (a Consent in the backend): refused. In an emergency, with a
  # reason, the block is set aside, and the access is marked in the audit trail:
  {curl} -H "Authorization: Bearer $PRACTITIONER_TOKEN" "$PORTVAGT_URL/Patient/pat-carla"
  {curl} -H "Authorization: Bearer $EMERGENCY_TOKEN" \
    -H "X-Portvagt-Break-Glass-Reason: bevidstløs på skadestuen" "$PORTVAGT_URL/Patient/pat-carla"

  # Anne reads who has looked at her record (newest first):
  {curl} -H "Authorization: Bearer $PATIENT_TOKEN" "$PORTVAGT_URL/AuditEvent"

  # ... on the citizen listener, as her browser would (no client certificate), or in the page
  # $PORTVAGT_MINLOG_URL (sign in as anne.hansen, any password, or paste $PATIENT_TOKEN):
  curl -s --cacert "$PORTVAGT_CA" -H "Authorization: Bearer $PATIENT_TOKEN" "$PORTVAGT_CITIZEN_URL/AuditEvent"

  # The audit spool's hash chain and its seals (nothing altered, nothing cut off), and that it
  # reaches the anchor the audit repository holds:
  cargo run -p portvagt -- audit verify {dir}/audit --jwks {dir}/audit-seal/seal-jwks.json \
    --repository {audit_url} --repository-ca {dir}/pki/ca.crt

  # No token, no access (401 OperationOutcome):
  {curl} -i "$PORTVAGT_URL/Patient/pat-anne"

  # Metrics and SMART configuration:
  {curl} "${{PORTVAGT_URL%/fhir}}/metrics" | grep portvagt_requests_total
  {curl} "$PORTVAGT_URL/.well-known/smart-configuration"

Mint more tokens with `portvagt token --dir {dir} --sub ... --scope ...`. Ctrl-C stops everything.
"#,
        env = env.display(),
        dir = dir.display(),
    );
}
