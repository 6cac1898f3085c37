//! Hot reload without dropping a connection: the server certificate and key, the client CA
//! bundle and CRLs, the issuers' JWKS files, the operator rules file and the config file's
//! routes to backends (`[[upstream]]`) are read again on
//! SIGHUP and whenever one of them changes (polled every two seconds by device, inode, size and
//! modification time, so Kubernetes' symlink swap of a mounted Secret counts as a change). Each
//! part is swapped whole when it loads; one that does not load is refused with a log line and
//! `portvagt_config_reloads_total{outcome="error"}`, and the previous one keeps serving.
//! New connections get the new TLS configuration; open ones keep theirs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::prelude::FromDer as _;

use crate::config::ConfigError;
use crate::runtime::{Runtime, load_rules};
use crate::watched::{Fingerprint, fingerprint};

/// How often files are looked at.
const POLL: Duration = Duration::from_secs(2);

/// Watches for SIGHUP and changed files, and reloads; runs until the process ends.
pub async fn watch(runtime: Arc<Runtime>) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let paths: Vec<PathBuf> = runtime
        .loaded_files
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    let mut seen: Vec<Fingerprint> = runtime.loaded_files.iter().map(|(_, f)| *f).collect();
    update_expiry(&runtime);
    loop {
        let signalled = tokio::select! {
            () = tokio::time::sleep(POLL) => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let now: Vec<Fingerprint> = paths.iter().map(fingerprint).collect();
        if signalled || now != seen {
            tracing::info!(signalled, "reloading certificates, keys and policy");
            reload(&runtime);
            seen = now;
        }
        update_expiry(&runtime);
    }
}

/// Reloads every part; each is swapped only if it loads.
pub fn reload(runtime: &Runtime) {
    let outcome = |component: &str, result: Result<(), String>| {
        let label = match &result {
            Ok(()) => "ok",
            Err(_) => "error",
        };
        runtime
            .metrics
            .config_reloads
            .with_label_values(&[component, label])
            .inc();
        if let Err(error) = result {
            tracing::error!(component, %error, "reload refused: the previous configuration keeps serving");
        }
    };
    outcome(
        "tls",
        crate::tls::server_config(&runtime.config.tls)
            .and_then(|tls| {
                // Both listeners' configurations are made before either is swapped in.
                let citizen = match &runtime.citizen_tls {
                    Some(_) => Some(crate::tls::citizen_server_config(&runtime.config.tls)?),
                    None => None,
                };
                runtime.tls.store(tls);
                if let (Some(current), Some(next)) = (&runtime.citizen_tls, citizen) {
                    current.store(next);
                }
                Ok(())
            })
            .map_err(|e| e.to_string()),
    );
    let key_errors = runtime.verifier.reload_key_files();
    outcome(
        "jwks",
        match key_errors.as_slice() {
            [] => Ok(()),
            errors => Err(ConfigError::join(errors, "; ")),
        },
    );
    // From the config file itself: the routes to backends ([[upstream]]) and which rules
    // files `[policy]` names (so naming the shadow rules as `rules_file` promotes them); the
    // rest of it is read at start only.
    let reread = runtime
        .config_path
        .as_ref()
        .map(|path| crate::config::Config::load(path).map_err(|e| e.to_string()));
    if let Some(reread) = &reread {
        outcome(
            "routes",
            reread
                .clone()
                .and_then(|config| {
                    crate::routing::build_routes(
                        &config,
                        &runtime.fhir_base_path,
                        &runtime.public_base_url,
                        &runtime.backend,
                    )
                    .map_err(|errors| ConfigError::join(&errors, "; "))
                })
                .map(|routes| runtime.upstreams.store(Arc::new(routes))),
        );
    }
    // A config file that does not load leaves the rules files named at start.
    let policy = match reread {
        Some(Ok(config)) => config.policy,
        _ => runtime.config.policy.clone(),
    };
    outcome(
        "rules",
        reload_rules(&policy.rules_file, "policy.rules_file", &runtime.rules),
    );
    if policy.shadow_rules_file.is_some() && !runtime.decisions.logs() {
        outcome(
            "shadow_rules",
            Err(
                "policy.shadow_rules_file: the shadow rules' disagreements are written to the \
                 decision log, and [decision_log] is read at start only: restart with it"
                    .into(),
            ),
        );
    } else {
        outcome(
            "shadow_rules",
            reload_rules(
                &policy.shadow_rules_file,
                "policy.shadow_rules_file",
                &runtime.decisions.shadow,
            ),
        );
    }
}

/// Loads the rules file `path` names into `rules`; none named, none enforced (or tried).
fn reload_rules(
    path: &Option<PathBuf>,
    field: &str,
    rules: &crate::decisions::SharedRules,
) -> Result<(), String> {
    match path {
        None => {
            if rules.swap(None).is_some() {
                tracing::warn!(
                    field,
                    "the configuration names no rules file any more: none are used"
                );
            }
            Ok(())
        }
        Some(path) => load_rules(path, field)
            .map(|loaded| rules.store(Some(Arc::new(loaded))))
            .map_err(|errors| ConfigError::join(&errors, "; ")),
    }
}

/// Sets the expiry gauges: seconds until the server certificate and the client CA expire, and
/// until the earliest CRL's next update (negative once past).
fn update_expiry(runtime: &Runtime) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let tls = &runtime.config.tls;
    let earliest_not_after = |path: &PathBuf| {
        CertificateDer::pem_file_iter(path)
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|der| {
                x509_parser::parse_x509_certificate(der.as_ref())
                    .ok()
                    .map(|(_, cert)| cert.validity().not_after.timestamp())
            })
            .min()
    };
    for (name, path) in [("server", &tls.cert), ("client_ca", &tls.client_ca)] {
        if let Some(not_after) = earliest_not_after(path) {
            runtime
                .metrics
                .certificate_expiry
                .with_label_values(&[name])
                .set(not_after - now);
        }
    }
    let next_update = tls
        .crls
        .iter()
        .filter_map(|path| std::fs::read(path).ok())
        .flat_map(|bytes| {
            CertificateRevocationListDer::pem_slice_iter(&bytes)
                .filter_map(Result::ok)
                .collect::<Vec<_>>()
        })
        .filter_map(|der| {
            x509_parser::revocation_list::CertificateRevocationList::from_der(der.as_ref())
                .ok()
                .and_then(|(_, crl)| crl.next_update().map(|t| t.timestamp()))
        })
        .min();
    if let Some(next_update) = next_update {
        runtime.metrics.crl_next_update.set(next_update - now);
    }
}
