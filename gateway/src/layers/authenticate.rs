//! Authentication: the access token verified against the connection's client certificate;
//! the resulting [`Principal`] goes into the request extensions.
//!
//! Schemes: `Bearer` (RFC 6750 §2.1), and OIO IDWS REST's `Holder-of-key`, which is a bearer
//! token that must be bound to the client certificate (RFC 8705). `DPoP` and every other
//! scheme are answered 401 `unsupported-scheme`: a proof-of-possession token must never be
//! taken as a plain bearer token. `[[route]]` rules may require certificate-bound tokens for
//! parts of the API.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, header};
use portvagt_policy::request::canonical_path;
use tower::{Layer, Service};

use super::{BoxFuture, take_ready};
use crate::auth::{AuthnError, Principal, TokenVerifier};
use crate::body::BoxError;
use crate::config::{ConfigError, RouteConfig};
use crate::context::record;
use crate::tls::PeerIdentity;
use crate::trace::{Phase, Traced};

/// Requires a valid access token.
#[derive(Debug, Clone)]
pub struct AuthenticateLayer {
    verifier: Arc<TokenVerifier>,
    routes: Arc<RouteRules>,
    audiences: Option<Arc<Audiences>>,
}

impl AuthenticateLayer {
    /// Verifies tokens with `verifier`, with the per-path demands of `routes`; when
    /// `audiences` is given, a token must also name one of them (this listener's).
    pub fn new(
        verifier: Arc<TokenVerifier>,
        routes: Arc<RouteRules>,
        audiences: Option<Arc<Audiences>>,
    ) -> Self {
        Self {
            verifier,
            routes,
            audiences,
        }
    }
}

/// Which `aud` values each listener accepts. An issuer's audiences say whom its tokens are
/// for; these say which of them a listener serves, so that a token minted for the citizen
/// listener (a browser's, unbound) is refused on the mTLS listener and the other way round.
/// A token that names audiences of both listeners is refused on both: which one it was meant
/// for cannot be told. Audiences compare without a trailing `/` and without regard to ASCII
/// case (a URL's host is case-insensitive; nothing is let in by it that the issuer's own exact
/// check did not).
#[derive(Debug, Clone, Default)]
pub struct ListenerAudiences {
    /// The mTLS listener's; `None`: whatever the issuer accepts.
    pub client: Option<Arc<Audiences>>,
    /// The citizen listener's, when it is configured.
    pub citizen: Option<Arc<Audiences>>,
}

/// One listener's audiences, and the other listener's, which it refuses.
#[derive(Debug, Clone, Default)]
pub struct Audiences {
    accepted: Vec<String>,
    foreign: Vec<String>,
}

impl Audiences {
    /// Whether a token naming `auds` is for this listener.
    pub fn admit(&self, auds: &[String]) -> bool {
        // Compared in place: nothing allocated per request.
        let names = |set: &[String]| {
            auds.iter().any(|aud| {
                let aud = aud.trim_end_matches('/');
                set.iter().any(|known| known.eq_ignore_ascii_case(aud))
            })
        };
        names(&self.accepted) && !names(&self.foreign)
    }
}

/// An audience as compared: no trailing `/`, ASCII lower case.
fn normal(aud: &str) -> String {
    aud.trim_end_matches('/').to_ascii_lowercase()
}

impl ListenerAudiences {
    /// From `[server] audiences`, `[citizen] audiences` (or its `public_base_url`), the
    /// issuers' audiences and token exchange's.
    pub fn from_config(config: &crate::config::Config) -> Result<ListenerAudiences, ConfigError> {
        let normalised = |list: &[String]| {
            let mut list: Vec<String> = list.iter().map(|aud| normal(aud)).collect();
            list.sort();
            list.dedup();
            list
        };
        let citizen = match &config.citizen {
            None => None,
            Some(citizen) if !citizen.audiences.is_empty() => Some(normalised(&citizen.audiences)),
            Some(citizen) => match &citizen.public_base_url {
                Some(url) => Some(vec![normal(url)]),
                None => {
                    return Err(ConfigError::new(
                        "citizen.audiences",
                        "name the aud values of tokens for the citizen listener (or set \
                         citizen.public_base_url, which is then the one)",
                    ));
                }
            },
        };
        let exchange_audience = config.token_exchange.as_ref().map(|exchange| {
            exchange
                .audience
                .clone()
                .unwrap_or_else(|| exchange.issuer.clone())
        });
        let named = normalised(&config.server.audiences);
        if let Some(citizen) = &citizen
            && let Some(shared) = named.iter().find(|aud| citizen.contains(aud))
        {
            return Err(ConfigError::new(
                "server.audiences",
                format!("{shared:?} is the citizen listener's audience too; a listener's own"),
            ));
        }
        if let Some(exchange) = &exchange_audience
            && !named.is_empty()
            && !named.contains(&normal(exchange))
        {
            return Err(ConfigError::new(
                "server.audiences",
                format!(
                    "lacks token exchange's audience {exchange:?}: the tokens Portvagt issues \
                     would be refused"
                ),
            ));
        }
        let client = if !named.is_empty() {
            Some(named)
        } else if let Some(citizen) = &citizen {
            let all: Vec<String> = config
                .issuers
                .iter()
                .flat_map(|issuer| issuer.audiences.iter().cloned())
                .chain(exchange_audience)
                .collect();
            let accepted: Vec<String> = normalised(&all)
                .into_iter()
                .filter(|aud| !citizen.contains(aud))
                .collect();
            if accepted.is_empty() {
                return Err(ConfigError::new(
                    "server.audiences",
                    "every audience the issuers accept is the citizen listener's: no token \
                     would be accepted on the mTLS listener",
                ));
            }
            Some(accepted)
        } else {
            None
        };
        let listener = |accepted: &Option<Vec<String>>, foreign: &Option<Vec<String>>| {
            accepted.as_ref().map(|accepted| {
                Arc::new(Audiences {
                    accepted: accepted.clone(),
                    foreign: foreign.clone().unwrap_or_default(),
                })
            })
        };
        Ok(ListenerAudiences {
            client: listener(&client, &citizen),
            citizen: listener(&citizen, &client),
        })
    }
}

/// `[[route]]` rules: which paths demand certificate-bound tokens.
#[derive(Debug, Clone, Default)]
pub struct RouteRules {
    /// Prefixes (no trailing slash) that demand binding.
    binding: Vec<String>,
}

impl RouteRules {
    /// Checks and prepares the configured routes.
    pub fn new(routes: &[RouteConfig]) -> Result<RouteRules, ConfigError> {
        let mut binding = Vec::new();
        for (index, route) in routes.iter().enumerate() {
            let prefix = route.path_prefix.trim_end_matches('/');
            if !route.path_prefix.starts_with('/')
                || route.path_prefix.contains(['?', '#', '%'])
                || prefix
                    .split('/')
                    .skip(1)
                    .any(|s| s.is_empty() || s == "." || s == "..")
            {
                return Err(ConfigError::new(
                    format!("route[{index}].path_prefix"),
                    "must be a plain absolute path such as /fhir/Patient",
                ));
            }
            if route.require_certificate_binding {
                binding.push(prefix.to_owned());
            }
        }
        Ok(RouteRules { binding })
    }

    /// Whether any route demands binding.
    pub fn binds_anything(&self) -> bool {
        !self.binding.is_empty()
    }

    /// Whether a request for `path` needs a certificate-bound token: the path is below a
    /// binding route, or it is a system-level request (`_search`, `_history`, `$operation`,
    /// a batch at the base) at the level above one, which could reach the same resources.
    pub fn binding_required(&self, path: &str) -> bool {
        let path = path.trim_end_matches('/');
        self.binding.iter().any(|prefix| {
            if below(path, prefix) {
                return true;
            }
            let parent = prefix.rsplit_once('/').map_or("", |(parent, _)| parent);
            if path == parent {
                return true;
            }
            below(path, parent) && path[parent.len() + 1..].starts_with(['_', '$'])
        })
    }
}

/// `path` is `prefix` or below it, on a segment boundary.
fn below(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl<S> Layer<S> for AuthenticateLayer {
    type Service = Authenticate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            verifier: self.verifier.clone(),
            routes: self.routes.clone(),
            audiences: self.audiences.clone(),
        }
    }
}

/// See [`AuthenticateLayer`].
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    verifier: Arc<TokenVerifier>,
    routes: Arc<RouteRules>,
    audiences: Option<Arc<Audiences>>,
}

/// The token from `Authorization: Bearer <token>` or `Holder-of-key <token>` (schemes
/// case-insensitive), and whether the scheme demands a certificate-bound token.
fn presented_token<B>(request: &Request<B>) -> Result<(&str, bool), AuthnError> {
    let mut values = request.headers().get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthnError::MissingToken)?;
    if values.next().is_some() {
        // Which one a backend would read is anyone's guess: refuse.
        return Err(AuthnError::Malformed);
    }
    let value = value.to_str().map_err(|_| AuthnError::Malformed)?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    let bound = if scheme.eq_ignore_ascii_case("bearer") {
        false
    } else if scheme.eq_ignore_ascii_case("holder-of-key") {
        true
    } else {
        return Err(AuthnError::UnsupportedScheme);
    };
    let token = token.trim();
    if token.is_empty() {
        Err(AuthnError::MissingToken)
    } else {
        Ok((token, bound))
    }
}

impl<S, B, R> Service<Request<B>> for Authenticate<S>
where
    S: Service<Request<B>, Response = R, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    R: Send + 'static,
{
    type Response = R;
    type Error = BoxError;
    type Future = BoxFuture<Result<R, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let verifier = self.verifier.clone();
        let routes = self.routes.clone();
        let audiences = self.audiences.clone();
        let mut inner = take_ready(&mut self.inner);
        Box::pin(async move {
            // Ends with the token verified; a refusal drops it, recorded as failed.
            let phase = Phase::start(
                request.extensions().get::<Traced>(),
                "portvagt.authenticate",
            );
            let peer = request
                .extensions()
                .get::<Arc<PeerIdentity>>()
                .cloned()
                .ok_or(AuthnError::NoClientCertificate)?;
            let (token, scheme_binds) = presented_token(&request)?;
            let token = token.to_owned();
            // Route rules match the path as the classifier will read it (percent-decoded);
            // one it cannot read is held to every rule.
            let binding_required = scheme_binds
                || match request.uri().path().strip_prefix('/').map(canonical_path) {
                    Some(Ok(canonical)) => routes.binding_required(&format!("/{canonical}")),
                    _ => routes.binds_anything(),
                };
            // Known keys verify without waiting; an unknown `kid` may wait for one refresh, an
            // opaque token for its introspection (unless cached).
            let principal: Principal = verifier.verify(&token, &peer, binding_required).await?;
            // The issuer accepts the audience; this listener must serve it too.
            if let Some(audiences) = &audiences
                && !audiences.admit(principal.audiences())
            {
                return Err(AuthnError::WrongAudience.into());
            }
            let principal = Arc::new(principal);
            record(&request, |fields| {
                fields.principal = Some(principal.subject().to_owned());
                fields.client_id = principal.client_id().map(str::to_owned);
                fields.caller = Some(principal.clone());
            });
            request.extensions_mut().insert(principal);
            phase.end(false);
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audiences(extra: &str) -> Result<ListenerAudiences, ConfigError> {
        audiences_with("", extra)
    }

    fn audiences_with(server: &str, extra: &str) -> Result<ListenerAudiences, ConfigError> {
        let config = crate::config::Config::parse(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n[tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\n\
             [backend]\nurl = \"http://b/fhir\"\n\
             [[issuer]]\nissuer = \"https://citizen-idp\"\naudiences = [\"https://m.example/fhir/\"]\njwks_file = \"j\"\n\
             [[issuer]]\nissuer = \"https://region-as\"\naudiences = [\"https://fhir.example/fhir\"]\njwks_file = \"j\"\n\
             {extra}"
        ))
        .unwrap();
        ListenerAudiences::from_config(&config)
    }

    fn auds(list: &[&str]) -> Vec<String> {
        list.iter().map(|aud| (*aud).to_owned()).collect()
    }

    #[test]
    fn each_listener_takes_its_own_audience_and_a_token_for_both_is_for_neither() {
        let both = audiences(
            "[citizen]\nlisten = \"127.0.0.1:0\"\npublic_base_url = \"https://M.example/fhir\"\n",
        )
        .unwrap();
        let (client, citizen) = (both.client.unwrap(), both.citizen.unwrap());
        let api = "https://fhir.example/fhir";
        let page = "https://m.example/fhir/";
        assert!(client.admit(&auds(&[api])));
        assert!(!client.admit(&auds(&[page])));
        assert!(citizen.admit(&auds(&[page])));
        assert!(citizen.admit(&auds(&["https://M.EXAMPLE/fhir"])));
        assert!(!citizen.admit(&auds(&[api])));
        // The citizen IdP's token naming the API's audience too (it passes its issuer's check
        // by the page's audience): for neither listener.
        assert!(!client.admit(&auds(&[page, api])));
        assert!(!citizen.admit(&auds(&[page, api])));
        assert!(!client.admit(&auds(&[])));
        // Without a citizen listener, the issuers' own checks are all there is.
        assert!(audiences("").unwrap().client.is_none());
    }

    #[test]
    fn audience_settings_that_cannot_work_are_refused() {
        let field = |extra: &str| audiences(extra).unwrap_err().field;
        assert_eq!(
            field("[citizen]\nlisten = \"127.0.0.1:0\"\n"),
            "citizen.audiences"
        );
        assert_eq!(
            field(
                "[citizen]\nlisten = \"127.0.0.1:0\"\naudiences = [\"https://fhir.example/fhir/\", \"https://m.example/fhir\"]\n"
            ),
            "server.audiences"
        );
        // Named audiences without the one Portvagt's own exchanged tokens carry.
        let exchange = "[token_exchange]\nissuer = \"https://portvagt.example\"\nsigning_key = \"k\"\n\
                        trusted_sts = []\n";
        assert_eq!(
            audiences_with("audiences = [\"https://fhir.example/fhir\"]", exchange)
                .unwrap_err()
                .field,
            "server.audiences"
        );
        assert!(
            audiences_with(
                "audiences = [\"https://fhir.example/fhir\", \"https://portvagt.example/\"]",
                exchange
            )
            .is_ok()
        );
        // A listener's own audience named for the other too.
        assert_eq!(
            audiences_with(
                "audiences = [\"https://fhir.example/fhir\", \"https://M.example/fhir\"]",
                "[citizen]\nlisten = \"127.0.0.1:0\"\naudiences = [\"https://m.example/fhir/\"]\n"
            )
            .unwrap_err()
            .field,
            "server.audiences"
        );
    }

    fn scheme(value: &str) -> Result<(&'static str, bool), AuthnError> {
        let request = Request::get("/fhir/Patient")
            .header(header::AUTHORIZATION, value)
            .body(())
            .unwrap();
        presented_token(&request)
            .map(|(token, bound)| (if token == "t0k" { "t0k" } else { "?" }, bound))
    }

    #[test]
    fn schemes_are_told_apart() {
        assert_eq!(scheme("Bearer t0k"), Ok(("t0k", false)));
        assert_eq!(scheme("bearer  t0k "), Ok(("t0k", false)));
        assert_eq!(scheme("Holder-of-key t0k"), Ok(("t0k", true)));
        assert_eq!(scheme("Bearer"), Err(AuthnError::MissingToken));
        assert_eq!(scheme("DPoP t0k"), Err(AuthnError::UnsupportedScheme));
        assert_eq!(scheme("Basic dTpw"), Err(AuthnError::UnsupportedScheme));
        assert_eq!(scheme("t0k"), Err(AuthnError::UnsupportedScheme));
    }

    #[test]
    fn binding_routes_cover_their_paths_and_the_system_level_above() {
        let routes = RouteRules::new(&[
            RouteConfig {
                path_prefix: "/fhir/Patient/".into(),
                require_certificate_binding: true,
            },
            RouteConfig {
                path_prefix: "/fhir/Observation".into(),
                require_certificate_binding: false,
            },
        ])
        .unwrap();
        for path in [
            "/fhir/Patient",
            "/fhir/Patient/pat-anne",
            "/fhir/Patient/pat-anne/$everything",
            "/fhir",
            "/fhir/",
            "/fhir/_search",
            "/fhir/_history",
            "/fhir/$export",
        ] {
            assert!(routes.binding_required(path), "{path}");
        }
        for path in [
            "/fhir/Observation",
            "/fhir/PatientX",
            "/fhir/metadata",
            "/other/_search",
            "/",
        ] {
            assert!(!routes.binding_required(path), "{path}");
        }
        for bad in [
            "fhir",
            "/fhir/../x",
            "/fhir//Patient",
            "/fhir/%50atient",
            "/fhir?x",
        ] {
            assert!(
                RouteRules::new(&[RouteConfig {
                    path_prefix: bad.into(),
                    require_certificate_binding: true
                }])
                .is_err(),
                "{bad}"
            );
        }
    }
}
