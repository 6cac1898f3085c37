//! The citizen's access-log page, `/minlog/` on the citizen listener: static files built into
//! the binary (`gateway/minlog/`), served with a strict Content-Security-Policy. The page holds
//! no data: it signs the citizen in (authorization code with PKCE against the configured
//! issuer) and reads `AuditEvent` through the same listener with the citizen's own token, so it
//! shows nothing the token could not fetch itself.

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};

use crate::body::{Body, full};
use crate::config::{CitizenConfig, SmartConfig};

const INDEX: &str = include_str!("../minlog/index.html");
const SCRIPT: &str = include_str!("../minlog/app.js");
const STYLE: &str = include_str!("../minlog/style.css");
const ICON: &str = include_str!("../minlog/favicon.svg");
/// The scope the page adds when citizens make their own blocks: her Consents, to read, search,
/// create (a block) and update (lift one).
const BLOCK_SCOPE: &str = "patient/Consent.crus";

/// The page and its settings, made once at start.
#[derive(Debug, Clone)]
pub struct Page {
    csp: HeaderValue,
    settings: Bytes,
}

impl Page {
    /// The page for `citizen`, whose token requests go to `smart.token_endpoint` (the only
    /// origin besides its own it may connect to), reading FHIR under `fhir_base_path`. A block
    /// holds at once, or (`blocks_within`) once every replica's cached Consents have expired:
    /// the page says which.
    pub fn new(
        citizen: &CitizenConfig,
        smart: &SmartConfig,
        fhir_base_path: &str,
        blocks_within: Option<std::time::Duration>,
    ) -> Page {
        let token_origin = smart
            .token_endpoint
            .as_deref()
            .and_then(|endpoint| endpoint.parse::<http::Uri>().ok())
            .and_then(|uri| Some(format!("{}://{}", uri.scheme_str()?, uri.authority()?)))
            .filter(|origin| {
                origin
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b":/.-[]".contains(&b))
            });
        let connect = match &token_origin {
            Some(origin) => format!("'self' {origin}"),
            None => "'self'".to_owned(),
        };
        let csp = format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src {connect}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
        );
        // With blocks, the page asks for her Consents too (to list, make and lift her blocks).
        let mut scope = citizen.scope.clone();
        if citizen.blocks && !scope.split(' ').any(|s| s == BLOCK_SCOPE) {
            scope = format!("{scope} {BLOCK_SCOPE}");
        }
        let settings = serde_json::json!({
            "fhirBase": fhir_base_path.trim_end_matches('/'),
            "clientId": citizen.client_id,
            "scope": scope,
            "blocks": citizen.blocks,
            "blocksWithin": blocks_within.map_or(0, |within| within.as_secs().max(1)),
        });
        Page {
            csp: HeaderValue::try_from(csp)
                .unwrap_or(HeaderValue::from_static("default-src 'none'")),
            settings: Bytes::from(settings.to_string()),
        }
    }

    /// The answer for `path`, if it is the page's.
    pub fn serve(&self, method: &Method, path: &str) -> Option<Response<Body>> {
        if !path.starts_with("/minlog") {
            return None;
        }
        if method != Method::GET && method != Method::HEAD {
            let mut response = Response::new(full(Bytes::new()));
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Some(self.secured(response));
        }
        let (content_type, body) = match path {
            "/minlog" => {
                let mut response = Response::new(full(Bytes::new()));
                *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
                response
                    .headers_mut()
                    .insert(header::LOCATION, HeaderValue::from_static("/minlog/"));
                return Some(self.secured(response));
            }
            "/minlog/" | "/minlog/index.html" => (
                "text/html; charset=utf-8",
                Bytes::from_static(INDEX.as_bytes()),
            ),
            "/minlog/app.js" => (
                "text/javascript; charset=utf-8",
                Bytes::from_static(SCRIPT.as_bytes()),
            ),
            "/minlog/style.css" => (
                "text/css; charset=utf-8",
                Bytes::from_static(STYLE.as_bytes()),
            ),
            "/minlog/favicon.svg" => ("image/svg+xml", Bytes::from_static(ICON.as_bytes())),
            "/minlog/settings.json" => ("application/json", self.settings.clone()),
            _ => {
                let mut response = Response::new(full(Bytes::from_static(b"not found")));
                *response.status_mut() = StatusCode::NOT_FOUND;
                return Some(self.secured(response));
            }
        };
        let mut response = Response::new(full(if method == Method::HEAD {
            Bytes::new()
        } else {
            body
        }));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        Some(self.secured(response))
    }

    fn secured(&self, mut response: Response<Body>) -> Response<Body> {
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_SECURITY_POLICY, self.csp.clone());
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
        headers.insert(
            "cross-origin-opener-policy",
            HeaderValue::from_static("same-origin"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(token_endpoint: Option<&str>) -> Page {
        let citizen: CitizenConfig =
            toml::from_str("listen = \"127.0.0.1:0\"").expect("a citizen table");
        let smart = SmartConfig {
            token_endpoint: token_endpoint.map(str::to_owned),
            ..SmartConfig::default()
        };
        Page::new(&citizen, &smart, "/fhir/", None)
    }

    #[test]
    fn the_page_is_served_with_a_strict_policy_and_nothing_else_under_its_path() {
        let page = page(Some("https://login.example.dk:8443/oauth/token"));
        let index = page.serve(&Method::GET, "/minlog/").unwrap();
        assert_eq!(index.status(), StatusCode::OK);
        let csp = index.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(
            csp.starts_with("default-src 'none'; script-src 'self';"),
            "{csp}"
        );
        assert!(
            csp.contains("connect-src 'self' https://login.example.dk:8443;"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(index.headers()[header::X_FRAME_OPTIONS], "DENY");
        for (path, kind) in [
            ("/minlog/app.js", "text/javascript"),
            ("/minlog/style.css", "text/css"),
            ("/minlog/settings.json", "application/json"),
            ("/minlog/favicon.svg", "image/svg+xml"),
        ] {
            let answer = page.serve(&Method::GET, path).unwrap();
            assert_eq!(answer.status(), StatusCode::OK, "{path}");
            assert!(
                answer.headers()[header::CONTENT_TYPE]
                    .to_str()
                    .unwrap()
                    .starts_with(kind),
                "{path}"
            );
        }
        assert_eq!(
            page.serve(&Method::GET, "/minlog").unwrap().status(),
            StatusCode::MOVED_PERMANENTLY
        );
        assert_eq!(
            page.serve(&Method::GET, "/minlog/../etc/passwd")
                .unwrap()
                .status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            page.serve(&Method::POST, "/minlog/").unwrap().status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert!(page.serve(&Method::GET, "/fhir/AuditEvent").is_none());
    }

    #[test]
    fn without_a_token_endpoint_the_page_connects_only_to_its_own_origin() {
        let answer = page(None).serve(&Method::GET, "/minlog/").unwrap();
        let csp = answer.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("connect-src 'self';"), "{csp}");
        // A token endpoint that would smuggle a directive in is left out.
        let answer = page(Some("https://a.dk;script-src*/token"))
            .serve(&Method::GET, "/minlog/")
            .unwrap();
        let csp = answer.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(!csp.contains("script-src*"), "{csp}");
    }

    #[test]
    fn the_settings_name_the_fhir_base_and_the_client() {
        let answer = page(None)
            .serve(&Method::GET, "/minlog/settings.json")
            .unwrap();
        let bytes = collect(answer.into_body());
        let settings: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(settings["fhirBase"], "/fhir");
        assert_eq!(settings["clientId"], "minlog");
        assert!(
            settings["scope"]
                .as_str()
                .unwrap()
                .contains("patient/AuditEvent.rs")
        );
        assert_eq!(settings["blocks"], false);
        assert!(!settings["scope"].as_str().unwrap().contains("Consent"));
        // With citizens' own blocks, the page asks for her Consents too (once).
        let citizen: CitizenConfig =
            toml::from_str("listen = \"127.0.0.1:0\"\nblocks = true").expect("a citizen table");
        let page = Page::new(
            &citizen,
            &SmartConfig::default(),
            "/fhir",
            Some(std::time::Duration::from_secs(30)),
        );
        let answer = page.serve(&Method::GET, "/minlog/settings.json").unwrap();
        let settings: serde_json::Value =
            serde_json::from_slice(&collect(answer.into_body())).unwrap();
        assert_eq!(settings["blocks"], true);
        assert_eq!(settings["blocksWithin"], 30);
        assert_eq!(
            settings["scope"],
            "openid fhirUser launch/patient patient/AuditEvent.rs patient/Consent.crus"
        );
    }

    fn collect(body: Body) -> Bytes {
        use http_body_util::BodyExt as _;
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(body.collect())
            .unwrap()
            .to_bytes()
    }
}
