//! The suite's HTTPS client: one fresh TLS connection per request (so each case stands alone),
//! presenting a client certificate or none, trusting the deployment's CA.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

/// A client certificate with its key, PEM.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Certificate chain, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
}

/// An answer, fully read.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (`null` if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The Portvagt detail code of an OperationOutcome (empty if none).
    pub fn detail_code(&self) -> String {
        self.json()
            .pointer("/issue/0/details/coding/0/code")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    /// The value of header `name` as text (empty if absent or not text).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// Whether the body is a FHIR OperationOutcome.
    pub fn is_operation_outcome(&self) -> bool {
        self.json()["resourceType"] == "OperationOutcome"
    }
}

/// Connects to one deployment.
#[derive(Debug, Clone)]
pub struct Client {
    host: String,
    port: u16,
    config: Arc<rustls::ClientConfig>,
}

impl Client {
    /// A client for `host:port` trusting `ca_pem`, presenting `identity` (or no certificate).
    pub fn new(
        host: &str,
        port: u16,
        ca_pem: &str,
        identity: Option<&Identity>,
    ) -> anyhow::Result<Client> {
        Self::with_versions(host, port, ca_pem, identity, rustls::DEFAULT_VERSIONS)
    }

    /// Like [`Client::new`], offering only the TLS `versions` given.
    pub fn with_versions(
        host: &str,
        port: u16,
        ca_pem: &str,
        identity: Option<&Identity>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> anyhow::Result<Client> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(versions)?
        .with_root_certificates(roots);
        let config = match identity {
            Some(identity) => {
                let chain = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()?;
                let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())?;
                builder.with_client_auth_cert(chain, key)?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Client {
            host: host.to_owned(),
            port,
            config: Arc::new(config),
        })
    }

    /// Sends one request on a new connection; an error is a failed connection or handshake.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Answer, String> {
        tokio::time::timeout(
            Duration::from_secs(20),
            self.send_inner(method, path, headers, body),
        )
        .await
        .map_err(|_| "timed out".to_owned())?
    }

    async fn send_inner(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Answer, String> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(self.host.clone()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("http: {e}"))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("{}:{}", self.host, self.port))
            .header("accept", "application/fhir+json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let bytes = match body {
            Some((content_type, bytes)) => {
                request = request.header("content-type", content_type);
                bytes
            }
            None => Vec::new(),
        };
        let request = request
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}
