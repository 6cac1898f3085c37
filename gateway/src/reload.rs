//! Hot reload without dropping a connection: the server certificate and key, the client CA
//! bundle and CRLs, the client certificates and CAs of the backends, the relation service and
//! the audit shipper, the issuers' JWKS files, the operator rules file and the config file's
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
    let started: Vec<PathBuf> = runtime
        .loaded_files
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    let mut paths = started.clone();
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
            // A rules file the configuration names since (a promoted or new shadow file) is
            // watched from now on.
            let before = paths.clone();
            if let Some(named) = reload(&runtime) {
                paths = started.clone();
                paths.extend(named.into_iter().filter(|path| !started.contains(path)));
            }
            // As they looked before the reload read them (a change made meanwhile is seen next
            // time); a newly watched file as it looks now.
            seen = paths
                .iter()
                .map(|path| match before.iter().position(|old| old == path) {
                    Some(at) => now[at],
                    None => fingerprint(path),
                })
                .collect();
        }
        update_expiry(&runtime);
    }
}

/// Reloads every part; each is swapped only if it loads. Answers the rules files the
/// configuration now names (for the watcher), or `None` when it could not be read.
pub fn reload(runtime: &Runtime) -> Option<Vec<PathBuf>> {
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
    // The client certificates and CAs the gateway reaches its backends and the audit
    // repository with: new connections use the new ones.
    outcome(
        "backend_tls",
        runtime.backend.reload_tls().and_then(|()| {
            runtime
                .relationships
                .as_ref()
                .map_or(Ok(()), |relationships| relationships.reload_tls())
        }),
    );
    outcome(
        "audit_ship_tls",
        runtime
            .auditor
            .as_ref()
            .map_or(Ok(()), |auditor| auditor.reload_ship_tls()),
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
    let policy = match reread {
        Some(Ok(config)) => config.policy,
        None => runtime.config.policy.clone(),
        // A config file that does not load (or is caught half written) changes no rules: the
        // ones in force stay, whatever files the last good one named.
        Some(Err(error)) => {
            outcome(
                "rules",
                Err(format!(
                    "the config file does not load ({error}): the rules in force stay"
                )),
            );
            return None;
        }
    };
    let named: Vec<PathBuf> = [&policy.rules_file, &policy.shadow_rules_file]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    outcome(
        "rules",
        match &policy.rules_file {
            // Rules stop being enforced only by a restart, never by a file that lost a line.
            None if runtime.rules.load().is_some() => Err(
                "policy.rules_file is no longer named: the rules in force stay until a restart"
                    .into(),
            ),
            None => Ok(()),
            Some(path) => reload_rules(path, "policy.rules_file", &runtime.rules),
        },
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
            match &policy.shadow_rules_file {
                // Shadow rules are never enforced: dropping them loosens nothing.
                None => {
                    runtime.decisions.shadow.store(None);
                    Ok(())
                }
                Some(path) => {
                    reload_rules(path, "policy.shadow_rules_file", &runtime.decisions.shadow)
                }
            },
        );
    }
    Some(named)
}

/// Loads the rules file at `path` into `rules`, if it compiles.
fn reload_rules(
    path: &std::path::Path,
    field: &str,
    rules: &crate::decisions::SharedRules,
) -> Result<(), String> {
    load_rules(path, field)
        .map(|loaded| rules.store(Some(Arc::new(loaded))))
        .map_err(|errors| ConfigError::join(&errors, "; "))
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
