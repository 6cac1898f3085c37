//! The files a reload reads (certificates, keys, CRLs, JWKS files, the rules file) and what
//! each looks like from outside, so that the reloader sees a change without reading them.

use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

/// What a file looks like from outside: `None` if it is missing.
pub type Fingerprint = Option<(u64, u64, u64, i64, i64)>;

pub(crate) fn fingerprint(path: &PathBuf) -> Fingerprint {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

/// Every file a reload reads, with how it looks now. Taken before the files are read at
/// start, so a change made while the gateway starts is still seen as one.
pub fn fingerprints(config: &crate::config::Config) -> Vec<(PathBuf, Fingerprint)> {
    watched(config)
        .into_iter()
        .map(|path| {
            let print = fingerprint(&path);
            (path, print)
        })
        .collect()
}

/// Every file a reload reads.
fn watched(config: &crate::config::Config) -> Vec<PathBuf> {
    let mut paths = vec![
        config.tls.cert.clone(),
        config.tls.key.clone(),
        config.tls.client_ca.clone(),
    ];
    paths.extend(config.tls.crls.iter().cloned());
    paths.extend(config.issuers.iter().filter_map(|i| i.jwks_file.clone()));
    // The client TLS of the backends, the relation service and the audit shipper.
    let backends = std::iter::once(&config.backend)
        .chain(config.upstreams.iter().map(|upstream| &upstream.backend))
        .chain(
            config
                .relationship
                .as_ref()
                .and_then(|relationship| relationship.service.as_ref()),
        );
    for backend in backends {
        paths.extend(
            [&backend.ca_file, &backend.client_cert, &backend.client_key]
                .into_iter()
                .flatten()
                .cloned(),
        );
    }
    if let Some(ship) = config.audit.as_ref().and_then(|audit| audit.ship.as_ref()) {
        paths.extend(
            [&ship.ca_file, &ship.client_cert, &ship.client_key]
                .into_iter()
                .flatten()
                .cloned(),
        );
    }
    paths.extend(config.policy.rules_file.iter().cloned());
    paths.extend(config.policy.shadow_rules_file.iter().cloned());
    paths
}
