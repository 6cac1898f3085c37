//! Test harness: the real reference backend (one per test process), the real `portvagt` binary
//! (one per test) with a fresh dev PKI and issuer key, and an HTTPS client with client
//! certificates built on rustls and hyper.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portvagt::auth::issuer_key::IssuerKey;
use portvagt::demo::BackendProcess;
use portvagt_certs::{DevPki, IssuedCert};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};

pub const ISSUER: &str = "https://issuer.test.portvagt.invalid";
pub const AUDIENCE: &str = "https://fhir.test.portvagt.invalid/fhir";
/// The citizen listener's audience (`[citizen] audiences`): tokens for citizens' browsers.
pub const CITIZEN_AUDIENCE: &str = "https://minlog.test.portvagt.invalid/fhir";

/// Another FHIR server to run against instead of the reference backend (`make compat`): its
/// base URL, seeded with the testbed's sample data.
pub fn other_backend() -> Option<&'static str> {
    static OTHER: OnceLock<Option<String>> = OnceLock::new();
    OTHER
        .get_or_init(|| std::env::var("PORTVAGT_TEST_BACKEND").ok())
        .as_deref()
}

/// The reference backend, started once per test process; it exits with the process. Under
/// `make compat`, the other FHIR server instead.
pub fn backend_url() -> &'static str {
    if let Some(other) = other_backend() {
        return other;
    }
    static BACKEND: OnceLock<BackendProcess> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            BackendProcess::start(&portvagt::demo::default_testbed(), true)
                .expect("start the reference backend")
        })
        .base_url()
}

/// A running gateway process with its PKI and issuer.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub pki: Arc<DevPki>,
    pub issuer: IssuerKey,
    pub addr: SocketAddr,
    pub base_url: String,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    shell_prefix: Option<String>,
}

/// Starts `portvagt serve` and waits for it to announce its address.
fn spawn(
    config_path: &std::path::Path,
    shell_prefix: Option<&str>,
) -> (Child, Arc<Mutex<Vec<String>>>, SocketAddr) {
    let mut command = match shell_prefix {
        None => {
            let mut command = Command::new(env!("CARGO_BIN_EXE_portvagt"));
            command.arg("serve").arg("--config").arg(config_path);
            command
        }
        Some(prefix) => {
            let mut command = Command::new("sh");
            command.arg("-c").arg(format!(
                "{prefix} exec \"{}\" serve --config \"{}\"",
                env!("CARGO_BIN_EXE_portvagt"),
                config_path.display()
            ));
            command
        }
    };
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // Kept before the address is announced: whoever waits for it finds the line.
            let listening = serde_json::from_str::<Value>(&line)
                .ok()
                .filter(|value| value["message"] == "listening");
            sink.lock().unwrap().push(line);
            if let Some(value) = listening {
                let _ = tx.send(value["addr"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    let addr: SocketAddr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the gateway announced its address")
        .parse()
        .unwrap();
    (child, logs, addr)
}

/// Knobs for a test's gateway.
#[derive(Clone, Default)]
pub struct Options {
    pub backend_url: Option<String>,
    pub extra_config: String,
    pub issuer_extra: String,
    pub server_extra: String,
    /// Extra files (name, contents) written beside the config before start.
    pub files: Vec<(String, String)>,
    /// The PKI to use (default: a fresh one), e.g. shared with an authorization server.
    pub pki: Option<Arc<DevPki>>,
    /// Lines added to the `[audit]` table (the spool is `audit/` beside the config).
    pub audit_extra: String,
    /// A shell prefix for the gateway command (e.g. `ulimit -f 64;`), run through `sh -c`.
    pub shell_prefix: Option<String>,
    /// Lines added to the `[backend]` table.
    pub backend_extra: String,
    /// No `[audit]` table: the gateway keeps no audit trail.
    pub no_audit: bool,
}

impl Gateway {
    pub fn start() -> Gateway {
        Self::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> Gateway {
        let backend = options
            .backend_url
            .clone()
            .unwrap_or_else(|| backend_url().to_owned());
        let dir = tempfile::tempdir().unwrap();
        let pki = options
            .pki
            .clone()
            .unwrap_or_else(|| Arc::new(DevPki::generate().unwrap()));
        pki.write_to(&dir.path().join("pki")).unwrap();
        let issuer = IssuerKey::generate("test-1").unwrap();
        issuer.save(&dir.path().join("issuer")).unwrap();
        // The audit chain's seal key, and its public half for `audit verify --jwks`.
        let seal = IssuerKey::generate("seal-test-1").unwrap();
        std::fs::create_dir_all(dir.path().join("seal")).unwrap();
        std::fs::write(dir.path().join("seal/seal.key"), seal.pem()).unwrap();
        std::fs::write(dir.path().join("seal/seal-jwks.json"), seal.jwks()).unwrap();
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"
{server_extra}

[tls]
cert = "pki/server.crt"
key = "pki/server.key"
client_ca = "pki/ca.crt"
crls = ["pki/crl.pem"]

[[issuer]]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}", "{CITIZEN_AUDIENCE}"]
jwks_file = "issuer/jwks.json"
{issuer_extra}

[backend]
url = "{backend}"
{backend_extra}

{audit}

[log]
format = "json"
level = "info"

{extra}
"#,
            issuer_extra = options.issuer_extra,
            audit = if options.no_audit {
                String::new()
            } else {
                format!(
                    "[audit]\nspool_dir = \"audit\"\nseal_key = \"seal/seal.key\"\n\
                     seal_key_id = \"seal-test-1\"\n{}",
                    options.audit_extra
                )
            },
            backend_extra = options.backend_extra,
            server_extra = options.server_extra,
            extra = options.extra_config,
        );
        for (name, contents) in &options.files {
            std::fs::write(dir.path().join(name), contents).unwrap();
        }
        let config_path = dir.path().join("portvagt.toml");
        std::fs::write(&config_path, config).unwrap();
        let (child, logs, addr) = spawn(&config_path, options.shell_prefix.as_deref());
        Gateway {
            dir,
            pki,
            issuer,
            addr,
            base_url: format!("https://{addr}/fhir"),
            child,
            logs,
            shell_prefix: options.shell_prefix,
        }
    }

    /// Kills the process (SIGKILL: no shutdown of any kind) and starts it again with the
    /// same configuration, folder and spool; it listens on a new port.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, logs, addr) = spawn(
            &self.dir.path().join("portvagt.toml"),
            self.shell_prefix.as_deref(),
        );
        self.child = child;
        self.logs = logs;
        self.addr = addr;
        self.base_url = format!("https://{addr}/fhir");
    }

    /// Standard claims, with `patch` merged over them (a `null` removes a claim).
    pub fn claims(&self, patch: Value) -> Value {
        let now = jsonwebtoken::get_current_timestamp();
        let mut claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "mette.kjaer", "iat": now, "exp": now + 300,
            "jti": uuid::Uuid::new_v4().to_string(), "client_id": "journalsystem-test",
            "scope": "openid user/*.rs user/Observation.cruds",
        });
        for (key, value) in patch.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(key);
            } else {
                claims[key] = value.clone();
            }
        }
        claims
    }

    /// A token from this gateway's issuer.
    pub fn token(&self, patch: Value) -> String {
        self.issuer.sign(&self.claims(patch)).unwrap()
    }

    /// A token for the citizen listener (`aud` its audience), with `patch` applied.
    pub fn citizen_token(&self, patch: Value) -> String {
        let mut claims = self.claims(patch);
        claims["aud"] = Value::String(CITIZEN_AUDIENCE.into());
        self.issuer.sign(&claims).unwrap()
    }

    /// A client presenting the organisation certificate.
    pub fn client(&self) -> Client {
        self.client_with(Some(&self.pki.client))
    }

    /// A client presenting `cert` (or none), trusting this gateway's CA.
    pub fn client_with(&self, cert: Option<&IssuedCert>) -> Client {
        Client::new(self.addr, &self.pki.ca.certificate().cert_pem, cert)
    }

    /// The access-log lines written so far, parsed.
    pub fn access_log(&self) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|value| value["message"] == "access")
            .collect()
    }

    /// The citizen listener's address (`[citizen] listen`), from the start-up log line.
    pub fn citizen_addr(&self) -> SocketAddr {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["message"] == "listening")
            .and_then(|line| line["citizen_addr"].as_str()?.parse().ok())
            .expect("the gateway announced a citizen listener")
    }

    /// A client of the citizen listener, presenting no certificate (a browser's).
    pub fn citizen_client(&self) -> Client {
        Client::new(
            self.citizen_addr(),
            &self.pki.ca.certificate().cert_pem,
            None,
        )
    }

    /// Every AuditEvent in the spool so far, in order.
    pub fn audit_events(&self) -> Vec<Value> {
        let dir = self.dir.path().join("audit");
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .filter(|path| path.extension().is_some_and(|e| e == "jsonl"))
            .flat_map(|path| {
                std::fs::read_to_string(path)
                    .unwrap_or_default()
                    .lines()
                    .skip(1)
                    .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                    .filter_map(|record| record.get("event").cloned())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The AuditEvents of the request with id `request_id`.
    pub fn audit_events_for(&self, request_id: &str) -> Vec<Value> {
        self.audit_events()
            .into_iter()
            .filter(|event| {
                event["entity"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|entity| {
                        entity["type"]["code"] == "XrequestId"
                            && entity["what"]["identifier"]["value"] == request_id
                    })
            })
            .collect()
    }

    /// The seal keys of this gateway's audit chain.
    pub fn seal_keys(&self) -> portvagt::audit::seal::SealKeys {
        portvagt::audit::seal::SealKeys::load(&self.dir.path().join("seal/seal-jwks.json")).unwrap()
    }

    /// `portvagt audit verify` of this gateway's spool with its seal keys: whether it says OK,
    /// and what it printed.
    pub fn verify_audit(&self) -> (bool, String) {
        self.verify_audit_accepting(&[])
    }

    /// [`Gateway::verify_audit`], accepting the unclean restarts at `restarts` (the sequence
    /// numbers it names in `--accept-restart N`).
    pub fn verify_audit_accepting(&self, restarts: &[String]) -> (bool, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_portvagt"))
            .args(["audit", "verify"])
            .arg(self.dir.path().join("audit"))
            .arg("--jwks")
            .arg(self.dir.path().join("seal/seal-jwks.json"))
            .args(restarts.iter().flat_map(|seq| ["--accept-restart", seq]))
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }

    /// The unclean restarts `audit verify` named (the N of each `--accept-restart N`).
    pub fn unclean_restarts(verify_output: &str) -> Vec<String> {
        verify_output
            .split("--accept-restart ")
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    /// Every stdout line so far.
    pub fn raw_log(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Kills the process (SIGKILL) and waits for it; [`Gateway::restart`] starts it again.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the gateway did not exit within 5 s of SIGTERM");
    }

    pub fn child_id(&self) -> u32 {
        self.child.id()
    }

    /// The gateway process's resident memory now, KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child_id()))
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An answer, fully read.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The Portvagt detail code of an OperationOutcome answer.
    pub fn detail_code(&self) -> String {
        let json = self.json();
        assert_eq!(json["resourceType"], "OperationOutcome", "{json}");
        json["issue"][0]["details"]["coding"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// What a server sent back to raw bytes.
#[derive(Debug)]
pub struct RawAnswer {
    /// Everything received, lossily as text.
    pub text: String,
    /// Whether the server closed the connection (else the wait ran out).
    pub closed: bool,
}

impl RawAnswer {
    /// The status codes of the HTTP/1.1 responses received, in order.
    pub fn statuses(&self) -> Vec<u16> {
        self.text
            .match_indices("HTTP/1.1 ")
            .filter_map(|(at, _)| self.text.get(at + 9..at + 12)?.parse().ok())
            .collect()
    }
}

/// HTTPS client with an optional client certificate; one connection per request.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
}

impl Client {
    pub fn new(addr: SocketAddr, ca_pem: &str, cert: Option<&IssuedCert>) -> Client {
        Self::with_alpn(addr, ca_pem, cert, vec![b"http/1.1".to_vec()])
    }

    pub fn with_alpn(
        addr: SocketAddr,
        ca_pem: &str,
        cert: Option<&IssuedCert>,
        alpn: Vec<Vec<u8>>,
    ) -> Client {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match cert {
            Some(cert) => {
                let chain = vec![CertificateDer::from(cert.cert_der.clone())];
                let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn;
        Client {
            addr,
            config: Arc::new(config),
        }
    }

    /// HTTP/2 instead of HTTP/1.1.
    pub fn http2(mut self) -> Client {
        let mut config = (*self.config).clone();
        config.alpn_protocols = vec![b"h2".to_vec()];
        self.config = Arc::new(config);
        self
    }

    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<Answer, String> {
        tokio::time::timeout(Duration::from_secs(20), self.send_inner(request))
            .await
            .map_err(|_| "timed out".to_owned())?
    }

    /// Sends the body without a declared length (chunked on HTTP/1.1).
    pub async fn send_chunked(&self, request: Request<Full<Bytes>>) -> Result<Answer, String> {
        let request = request.map(Unsized);
        tokio::time::timeout(Duration::from_secs(20), self.send_inner(request))
            .await
            .map_err(|_| "timed out".to_owned())?
    }

    /// A TLS connection (this client's certificate and ALPN) for writing raw bytes.
    pub async fn raw_connect(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))
    }

    /// Writes `bytes` on a fresh connection and reads what comes back until the server closes
    /// the connection (`closed` true) or `wait` passes.
    pub async fn raw(&self, bytes: &[u8], wait: Duration) -> Result<RawAnswer, String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut tls = self.raw_connect().await?;
        tls.write_all(bytes).await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut received = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        let mut buffer = [0u8; 16 * 1024];
        let closed = loop {
            match tokio::time::timeout_at(deadline, tls.read(&mut buffer)).await {
                Err(_) => break false,
                Ok(Ok(0) | Err(_)) => break true,
                Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            }
        };
        Ok(RawAnswer {
            text: String::from_utf8_lossy(&received).into_owned(),
            closed,
        })
    }

    async fn send_inner<B>(&self, mut request: Request<B>) -> Result<Answer, String>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::error::Error + Send + Sync,
    {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let response = if h2 {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(connection);
            *request.version_mut() = http::Version::HTTP_2;
            if request.uri().authority().is_none() {
                let uri = format!("https://localhost:{}{}", self.addr.port(), request.uri());
                *request.uri_mut() = uri.parse().unwrap();
            }
            sender
                .send_request(request)
                .await
                .map_err(|e| format!("request: {e}"))?
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("http1 handshake: {e}"))?;
            tokio::spawn(connection);
            request.headers_mut().entry(http::header::HOST).or_insert(
                http::HeaderValue::from_str(&format!("localhost:{}", self.addr.port())).unwrap(),
            );
            sender
                .send_request(request)
                .await
                .map_err(|e| format!("request: {e}"))?
        };
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// `GET path` (path from the host root, e.g. `/fhir/Patient/1`) with an optional token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Result<Answer, String> {
        self.send(request(Method::GET, path, token, None)).await
    }
}

/// A body that hides its length, so it is sent chunked.
pub struct Unsized(Full<Bytes>);

impl http_body::Body for Unsized {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::pin::Pin::new(&mut self.0).poll_frame(cx)
    }
}

/// A request with optional bearer token and FHIR JSON body.
pub fn request(
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header("accept", "application/fhir+json");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let body = match body {
        Some(value) => {
            builder = builder.header("content-type", "application/fhir+json");
            Bytes::from(value.to_string())
        }
        None => Bytes::new(),
    };
    builder.body(Full::new(body)).unwrap()
}

/// Sends a batch or transaction Bundle to the base with a bearer token; the Bundle as a whole
/// must be answered 200 (its entries carry their own statuses).
pub async fn send_batch(client: &Client, token: &str, bundle: Value) -> Answer {
    let answer = client
        .send(request(Method::POST, "/fhir", Some(token), Some(bundle)))
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer
}

/// A plain-HTTP request straight to a backend at `base` (bypassing the gateway), for setting
/// up data and for comparisons: its status and JSON answer (`Null` if none).
pub async fn backend_exchange(
    base: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    backend_exchange_with(base, method, path, &[], body).await
}

/// [`backend_exchange`] with more request headers.
pub async fn backend_exchange_with(
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let text = body.map(Value::to_string).unwrap_or_default();
    let (status, bytes) = backend_exchange_bytes(base, method, path, headers, text).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// [`backend_exchange_with`] with a body written as text (JSON a `Value` cannot hold, such as
/// a lone surrogate escape), the answer as its bytes.
pub async fn backend_exchange_bytes(
    base: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: String,
) -> (StatusCode, Bytes) {
    let url: http::Uri = format!("{base}/{path}").parse().unwrap();
    let tcp = tokio::net::TcpStream::connect((url.host().unwrap(), url.port_u16().unwrap()))
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(url.path_and_query().unwrap().as_str())
        .header("host", url.authority().unwrap().as_str())
        .header("accept", "application/fhir+json")
        .header("content-type", "application/fhir+json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body))).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

/// A port nothing listens on now (for a server a test starts later, or never).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A configuration `check-config` can read without a backend or an issuer running, for `dir`
/// as [`checkable_dir`] makes it; what a test checks goes after it.
pub const CHECKABLE_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
[tls]
cert = "pki/server.crt"
key = "pki/server.key"
client_ca = "pki/ca.crt"
[[issuer]]
issuer = "https://issuer.example"
audiences = ["https://fhir.example/fhir"]
jwks_file = "issuer/jwks.json"
[backend]
url = "http://127.0.0.1:1/fhir"
"#;

/// A folder with what [`CHECKABLE_CONFIG`] names: a dev PKI and an issuer key.
pub fn checkable_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    DevPki::generate()
        .unwrap()
        .write_to(&dir.path().join("pki"))
        .unwrap();
    IssuerKey::generate("k")
        .unwrap()
        .save(&dir.path().join("issuer"))
        .unwrap();
    dir
}

/// `portvagt check-config` on `config`, written as `dir/portvagt.toml`: its exit code and what
/// it said.
pub fn check_config(dir: &std::path::Path, config: &str) -> (Option<i32>, String) {
    let path = dir.join("portvagt.toml");
    std::fs::write(&path, config).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_portvagt"))
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// [`backend_exchange`], its JSON answer only.
pub async fn backend_send(base: &str, method: Method, path: &str, body: Option<Value>) -> Value {
    backend_exchange(base, method, path, body.as_ref()).await.1
}

/// An identifier system the tests mark what they write with: a token search on `identifier`
/// finds it on any FHIR server (`code:text` and `total` are not everywhere).
pub const MARKER_SYSTEM: &str = "urn:portvagt:test-marker";

/// The resources of `resource_type` carrying the test marker `marker`, straight from the
/// shared backend (outcome entries a server adds to a searchset left out).
pub async fn marked(resource_type: &str, marker: &str) -> Vec<Value> {
    let (status, bundle) = backend_get(&format!(
        "{resource_type}?identifier={MARKER_SYSTEM}%7C{marker}"
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{bundle}");
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["resource"]["resourceType"] == resource_type)
        .map(|entry| entry["resource"].clone())
        .collect()
}

/// A plain-HTTP GET straight to the shared reference backend, for comparisons.
pub async fn backend_get(path: &str) -> (StatusCode, Value) {
    backend_exchange(backend_url(), Method::GET, path, None).await
}

/// A JSON Patch (RFC 6902) request with a bearer token and optional extra headers.
pub fn json_patch(
    path: &str,
    token: &str,
    patch: &str,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder()
        .method(Method::PATCH)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json-patch+json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::from(patch.to_owned())))
        .unwrap()
}

/// The value of the Prometheus sample whose line starts with `line_prefix`.
pub fn metric_value(metrics: &str, line_prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(line_prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A TLS acceptor with the dev PKI's server certificate that requires a client certificate
/// from its CA: the front of the test servers that stand in for mTLS peers.
pub fn mtls_acceptor(pki: &DevPki) -> tokio_rustls::TlsAcceptor {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(pki.ca.certificate().cert_der.clone()))
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(pki.server.cert_der.clone())],
            PrivateKeyDer::from_pem_slice(pki.server.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// An audit repository as deployed: HTTPS, taking writes only from the gateway's own
/// certificate (`gateway.crt` of the PKI it shares with the gateways that ship to it).
pub struct Repository {
    pub process: portvagt::demo::BackendProcess,
    pub pki: Arc<DevPki>,
    _dir: tempfile::TempDir,
}

impl Repository {
    pub fn start() -> Repository {
        Self::start_with(Arc::new(DevPki::generate().unwrap()), 0)
    }

    /// With the PKI `pki`, on `port` (0: any free port).
    pub fn start_with(pki: Arc<DevPki>, port: u16) -> Repository {
        let dir = tempfile::tempdir().unwrap();
        pki.write_to(dir.path()).unwrap();
        let process = portvagt::demo::BackendProcess::start_repository(
            &portvagt::demo::default_testbed(),
            dir.path(),
            port,
        )
        .unwrap();
        Repository {
            process,
            pki,
            _dir: dir,
        }
    }

    pub fn base_url(&self) -> &str {
        self.process.base_url()
    }

    /// The `[audit.ship]` table for `url` (this repository's, or one not yet listening), for a
    /// gateway started with `pki: Some(repository.pki.clone())`, then `extra` lines.
    pub fn ship(url: &str, extra: &str) -> String {
        format!(
            "[audit.ship]\nurl = \"{url}\"\nca_file = \"pki/ca.crt\"\nclient_cert = \"pki/gateway.crt\"\nclient_key = \"pki/gateway.key\"\n{extra}"
        )
    }

    /// Options for a gateway shipping here, with `extra` lines in `[audit.ship]`.
    pub fn gateway_options(&self, extra: &str) -> Options {
        Options {
            pki: Some(self.pki.clone()),
            audit_extra: Self::ship(self.base_url(), extra),
            ..Options::default()
        }
    }

    /// A client of the repository presenting `cert` (or none).
    pub fn client(&self, cert: Option<&IssuedCert>) -> Client {
        let url: http::Uri = self.base_url().parse().unwrap();
        let addr = format!("{}:{}", url.host().unwrap(), url.port_u16().unwrap());
        Client::new(
            addr.parse().unwrap(),
            &self.pki.ca.certificate().cert_pem,
            cert,
        )
    }

    /// The repository's FHIR base path (`/fhir/R4`).
    pub fn path(&self, rest: &str) -> String {
        let url: http::Uri = self.base_url().parse().unwrap();
        format!("{}/{rest}", url.path().trim_end_matches('/'))
    }

    /// Every AuditEvent it holds (one page of up to 1000).
    pub async fn events(&self) -> Vec<Value> {
        let answer = self
            .client(None)
            .get(&self.path("AuditEvent?_count=1000"), None)
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
        answer.json()["entry"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|entry| entry["resource"].clone())
            .collect()
    }
}

/// A TLS front that checks client certificates and records each connection's (the leaf, DER),
/// then forwards every request to `target` over plain HTTP, unchanged.
pub struct TlsFront {
    /// Its base URL, `https://localhost:<port>/fhir`.
    pub url: String,
    /// The client certificate each connection presented, in order.
    pub presented: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl TlsFront {
    pub async fn start(pki: &DevPki, target: &str) -> TlsFront {
        let acceptor = crate::support::mtls_acceptor(pki);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let backend: http::Uri = target.parse().unwrap();
        let presented: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let seen = presented.clone();
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Full<Bytes>>();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, client, backend) =
                    (acceptor.clone(), client.clone(), backend.clone());
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first())
                    {
                        seen.lock().unwrap().push(leaf.to_vec());
                    }
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let (client, backend) = (client.clone(), backend.clone());
                            async move {
                                let (parts, body) = request.into_parts();
                                let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                                let rest = path.strip_prefix("/fhir").unwrap_or(path);
                                let uri: http::Uri =
                                    format!("{}{rest}", backend.to_string().trim_end_matches('/'))
                                        .parse()
                                        .unwrap();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let mut forwarded = http::Request::new(Full::new(body));
                                *forwarded.method_mut() = parts.method;
                                *forwarded.uri_mut() = uri;
                                if let Some(value) = parts.headers.get("content-type") {
                                    forwarded
                                        .headers_mut()
                                        .insert("content-type", value.clone());
                                }
                                let response = client.request(forwarded).await;
                                Ok::<_, std::convert::Infallible>(match response {
                                    Ok(response) => {
                                        let (parts, body) = response.into_parts();
                                        let bytes = body
                                            .collect()
                                            .await
                                            .map(|b| b.to_bytes())
                                            .unwrap_or_default();
                                        http::Response::from_parts(parts, Full::new(bytes))
                                    }
                                    Err(_) => http::Response::builder()
                                        .status(502)
                                        .body(Full::new(Bytes::new()))
                                        .unwrap(),
                                })
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsFront {
            url: format!("https://localhost:{}/fhir", address.port()),
            presented,
        }
    }
}
