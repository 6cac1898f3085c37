//! Where requests go: the routes in force (each a FHIR base on the gateway, optionally for some
//! resource types, and the backend behind it), built from the configuration and swapped whole
//! on reload, and the canonical FHIR path a request is forwarded by. Below the proxy and the
//! layers, which read it; above the backend clients.

use std::sync::Arc;

use crate::backend::Backend;
use crate::backend::rewrite::UrlRewriter;
use crate::config::{BackendConfig, Config, ConfigError};

/// The routes in force; swapped whole when the config file's `[[upstream]]`s are reloaded.
pub type SharedRoutes = Arc<arc_swap::ArcSwap<Vec<Route>>>;

/// Where requests go: below the gateway path `base_path` (a FHIR base), for `resource_types`
/// (all when empty), to `backend`, whose URLs in answers are rewritten to the public base.
#[derive(Debug, Clone)]
pub struct Route {
    /// The FHIR base on the gateway, e.g. `/fhir` or `/fhir/regionh`.
    pub base_path: String,
    /// The resource types it takes (all when empty).
    pub resource_types: Vec<String>,
    /// The backend.
    pub backend: Arc<Backend>,
    /// Rewrites the backend's URLs in its answers to the gateway's.
    pub(crate) rewriter: Arc<UrlRewriter>,
}

impl Route {
    /// A route; `public_base` is the URL clients know this base by.
    pub fn new(
        base_path: String,
        resource_types: Vec<String>,
        backend: Arc<Backend>,
        public_base: &str,
    ) -> Route {
        Route {
            rewriter: Arc::new(UrlRewriter::new(backend.base_url(), public_base)),
            base_path,
            resource_types,
            backend,
        }
    }

    /// Whether it takes requests below `base_path` for `resource_type`.
    pub(crate) fn takes(&self, base_path: &str, resource_type: Option<&str>) -> bool {
        self.base_path == base_path
            && (self.resource_types.is_empty()
                || resource_type.is_some_and(|t| self.resource_types.iter().any(|r| r == t)))
    }
}

/// What the proxy forwards: the canonical path below the FHIR base (as classified, see
/// [`FhirRequest::path`]) and the raw query.
#[derive(Debug, Clone)]
pub struct FhirPath {
    /// The FHIR base on the gateway the request was under (which route it takes).
    pub base: String,
    /// Canonical path relative to the base, without the leading slash (`Patient/1`).
    pub relative: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// For `POST _search`: every parameter, as the form body to forward (the URL then has none).
    pub form: Option<String>,
}

/// The routes: each `[[upstream]]` (its own FHIR base, or resource types under the main one),
/// the audit repository for `AuditEvent` (where the shipper puts them, and citizens read their
/// log), and last the main backend.
pub(crate) fn build_routes(
    config: &Config,
    fhir_base_path: &str,
    public_base_url: &str,
    backend: &Arc<Backend>,
) -> Result<Vec<Route>, Vec<ConfigError>> {
    let origin = public_base_url
        .strip_suffix(fhir_base_path)
        .unwrap_or(public_base_url)
        .to_owned();
    let mut routes = Vec::new();
    let mut errors = Vec::new();
    for (index, upstream) in config.upstreams.iter().enumerate() {
        let field = |name: &str| format!("upstream[{index}].{name}");
        let base_path = match &upstream.path_prefix {
            None if upstream.resource_types.is_empty() => {
                errors.push(ConfigError::new(
                    field("path_prefix"),
                    "give a path_prefix, resource_types, or both",
                ));
                continue;
            }
            None => fhir_base_path.to_owned(),
            Some(prefix) => {
                let prefix = prefix.trim_end_matches('/');
                if !prefix.starts_with('/') || prefix == fhir_base_path {
                    errors.push(ConfigError::new(
                        field("path_prefix"),
                        "must be a path of its own, like /fhir/regionh",
                    ));
                    continue;
                }
                prefix.to_owned()
            }
        };
        for name in &upstream.resource_types {
            if portvagt_policy::ResourceType::parse(name).is_none() {
                errors.push(ConfigError::new(
                    field("resource_types"),
                    format!("{name:?} is not an R4 resource type"),
                ));
            }
        }
        match Backend::named(&upstream.backend, &field("backend"), &upstream.name) {
            Ok(backend) => routes.push(Route::new(
                base_path.clone(),
                upstream.resource_types.clone(),
                Arc::new(backend),
                &format!("{origin}{base_path}"),
            )),
            Err(error) => errors.push(error),
        }
    }
    if let Some(ship) = config.audit.as_ref().and_then(|audit| audit.ship.as_ref()) {
        let repository = BackendConfig {
            url: ship.url.clone(),
            ca_file: ship.ca_file.clone(),
            client_cert: ship.client_cert.clone(),
            client_key: ship.client_key.clone(),
            // The main backend's identity assertions are for the main backend's audience.
            identity: None,
            ..config.backend.clone()
        };
        match Backend::named(&repository, "audit.ship", "audit") {
            Ok(backend) => routes.push(Route::new(
                fhir_base_path.to_owned(),
                vec!["AuditEvent".into()],
                Arc::new(backend),
                public_base_url,
            )),
            Err(error) => errors.push(error),
        }
    }
    // Resource-type routes before the catch-all ones of their base.
    routes.sort_by_key(|route| route.resource_types.is_empty());
    routes.push(Route::new(
        fhir_base_path.to_owned(),
        Vec::new(),
        backend.clone(),
        public_base_url,
    ));
    if errors.is_empty() {
        Ok(routes)
    } else {
        Err(errors)
    }
}
