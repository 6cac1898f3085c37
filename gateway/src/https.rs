//! The HTTPS client for the gateway's own requests (JWKS, discovery and introspection at
//! authorization servers, the audit repository) and the client TLS of backends: rustls with the
//! configured CA (or the public web PKI roots), optionally presenting the gateway's own client
//! certificate (RFC 8705 `tls_client_auth`). It knows nothing of tokens or FHIR.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Largest document accepted from an authorization server.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// A client for one authorization server.
#[derive(Clone)]
pub struct HttpsClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient").finish_non_exhaustive()
    }
}

/// The gateway's client certificate and key files.
#[derive(Debug, Clone, Copy)]
pub struct ClientIdentity<'p> {
    /// PEM certificate (chain).
    pub cert: &'p Path,
    /// PEM private key.
    pub key: &'p Path,
}

impl<'p> ClientIdentity<'p> {
    /// A config table's `client_cert` and `client_key`: both or neither (the error is for
    /// `cert_field`, the certificate's dotted path).
    pub fn from_pair(
        cert: Option<&'p PathBuf>,
        key: Option<&'p PathBuf>,
        cert_field: impl Into<String>,
    ) -> Result<Option<Self>, crate::config::ConfigError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(ClientIdentity { cert, key })),
            (None, None) => Ok(None),
            _ => Err(crate::config::ConfigError::new(
                cert_field,
                "give both client_cert and client_key, or neither",
            )),
        }
    }
}

impl HttpsClient {
    /// Trusts the CA certificates in `ca_file` (default: the public web PKI roots) and, with
    /// `identity`, presents that client certificate. Errors name the offending file.
    pub fn new(
        ca_file: Option<&Path>,
        identity: Option<ClientIdentity<'_>>,
        timeout: Duration,
    ) -> Result<HttpsClient, String> {
        Self::build(ca_file, identity, timeout, true)
    }

    /// Like [`HttpsClient::new`], but plain `http://` URLs are allowed too (for services an
    /// operator runs beside the gateway, such as an audit repository on a private network).
    pub fn allowing_plain_http(
        ca_file: Option<&Path>,
        identity: Option<ClientIdentity<'_>>,
        timeout: Duration,
    ) -> Result<HttpsClient, String> {
        Self::build(ca_file, identity, timeout, false)
    }

    fn build(
        ca_file: Option<&Path>,
        identity: Option<ClientIdentity<'_>>,
        timeout: Duration,
        https_only: bool,
    ) -> Result<HttpsClient, String> {
        let tls = client_tls(ca_file, identity)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let connector = if https_only {
            connector.https_only().enable_http1().build()
        } else {
            connector.https_or_http().enable_http1().build()
        };
        Ok(HttpsClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }

    /// Sends `request` and reads the whole answer (at most 1 MiB), within the timeout.
    /// Errors are for logs: they name the URL, never a token.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<Response<Bytes>, String> {
        let uri = request.uri().clone();
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("{uri}: {e}"))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_DOCUMENT_BYTES)
                .collect()
                .await
                .map_err(|e| format!("{uri}: {e}"))?
                .to_bytes();
            Ok(Response::from_parts(parts, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("{uri}: timed out")))
    }
}

/// An [`HttpsClient`] whose CA and client certificate files are read again on reload (the
/// audit shipper's): a new client, so new connections, present the new certificate.
pub struct ReloadableHttps {
    current: arc_swap::ArcSwap<HttpsClient>,
    ca_file: Option<PathBuf>,
    identity: Option<(PathBuf, PathBuf)>,
    timeout: Duration,
    https_only: bool,
}

impl std::fmt::Debug for ReloadableHttps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadableHttps")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl ReloadableHttps {
    /// As [`HttpsClient::allowing_plain_http`] (or [`HttpsClient::new`] with `https_only`).
    pub fn new(
        ca_file: Option<&Path>,
        identity: Option<ClientIdentity<'_>>,
        timeout: Duration,
        https_only: bool,
    ) -> Result<ReloadableHttps, String> {
        let client = HttpsClient::build(ca_file, identity, timeout, https_only)?;
        Ok(ReloadableHttps {
            current: arc_swap::ArcSwap::from_pointee(client),
            ca_file: ca_file.map(Path::to_path_buf),
            identity: identity.map(|i| (i.cert.to_path_buf(), i.key.to_path_buf())),
            timeout,
            https_only,
        })
    }

    /// The client in force.
    pub fn client(&self) -> Arc<HttpsClient> {
        self.current.load_full()
    }

    /// Reads the files again; the new client is used only if they load.
    pub fn reload(&self) -> Result<(), String> {
        let identity = self
            .identity
            .as_ref()
            .map(|(cert, key)| ClientIdentity { cert, key });
        let client = HttpsClient::build(
            self.ca_file.as_deref(),
            identity,
            self.timeout,
            self.https_only,
        )?;
        self.current.store(Arc::new(client));
        Ok(())
    }
}

/// Parses an `https://` URL.
pub fn https_uri(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{text:?} must be an https:// URL"));
    }
    Ok(uri)
}

/// A TLS client configuration trusting the CA certificates in `ca_file` (default: the public
/// web PKI roots) and, with `identity`, presenting that client certificate. Errors name the
/// offending file.
pub(crate) fn client_tls(
    ca_file: Option<&Path>,
    identity: Option<ClientIdentity<'_>>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("not a usable CA certificate: {e}"))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    let tls = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let chain = CertificateDer::pem_file_iter(identity.cert)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{}: {e}", identity.cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(identity.key)
                .map_err(|e| format!("{}: {e}", identity.key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{}: {e}", identity.cert.display()))?
        }
    };
    Ok(tls)
}
