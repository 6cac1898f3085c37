//! The `portvagt` command line: serve, check-config, demo, token, audit verify.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use portvagt::config::{Config, ConfigError, LogFormat};
use portvagt::demo::{self, DemoOptions, TokenRequest};
use portvagt::runtime::Runtime;
use tracing_subscriber::EnvFilter;

/// mimalloc: per-thread free lists make the many short-lived allocations of a request (headers,
/// claims, the audit record) cheaper than glibc's malloc, which showed up as a seventh of the
/// gateway's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "portvagt",
    version,
    about = "Portvagt: a FHIR REST security gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration with its certificates and keys; exit 1 with reasons.
    CheckConfig {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a complete local demo: dev PKI, reference backend with sample data, gateway.
    Demo {
        /// Folder for the PKI, issuer key, config and demo.env.
        #[arg(long, default_value = "demo")]
        dir: PathBuf,
        /// Gateway port on 127.0.0.1.
        #[arg(long, default_value_t = 8443)]
        port: u16,
        /// The testbed folder (reference backend).
        #[arg(long, env = "PORTVAGT_TESTBED")]
        testbed: Option<PathBuf>,
    },
    /// Mint a development token from the demo issuer key (demo and tests only).
    Token {
        /// The demo folder (`portvagt demo --dir`).
        #[arg(long, default_value = "demo")]
        dir: PathBuf,
        /// `sub`.
        #[arg(long)]
        sub: String,
        /// `scope`, space-separated.
        #[arg(long)]
        scope: String,
        /// `patient` launch context.
        #[arg(long)]
        patient: Option<String>,
        /// `fhirUser`.
        #[arg(long)]
        fhir_user: Option<String>,
        /// `client_id`.
        #[arg(long)]
        client_id: Option<String>,
        /// Bind the token to this client certificate (PEM), RFC 8705.
        #[arg(long)]
        bind_cert: Option<PathBuf>,
        /// Lifetime, e.g. `1h`.
        #[arg(long, default_value = "1h", value_parser = humantime_serde::re::humantime::parse_duration)]
        ttl: Duration,
        /// `aud`; default: the demo's PORTVAGT_URL.
        #[arg(long)]
        audience: Option<String>,
        /// Make a fresh issuer key in `<dir>/issuer` first (for set-ups without `portvagt demo`,
        /// such as the load tests).
        #[arg(long)]
        new_issuer: bool,
        /// More claims, `NAME=VALUE` (repeatable), e.g. `purpose_of_use=EMERGENCY`, `role=7170`,
        /// `authorization_id=NS363`, `name="Mette Kjær"`.
        #[arg(long = "claim", value_parser = parse_claim)]
        claims: Vec<(String, String)>,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check a spool's hash chain, and with --jwks its seals: print OK, or the first broken
    /// record, or that the trail stops without a close (exit 1).
    Verify {
        /// The spool folder (`[audit] spool_dir`).
        dir: PathBuf,
        /// The JWK Set of the seal key(s) (`[audit] seal_key`): proves nothing was cut off.
        #[arg(long)]
        jwks: Option<PathBuf>,
        /// A restart after a run that did not close (at this open seal's sequence number),
        /// investigated and accepted (a known crash); repeat for several.
        #[arg(long = "accept-restart", value_name = "SEQ")]
        accepted: Vec<u64>,
        /// The audit repository's FHIR base: the spool must reach the chain's anchor there
        /// (with --jwks).
        #[arg(long, requires = "jwks")]
        repository: Option<String>,
        /// CA certificates for an https repository (default: the public web PKI roots).
        #[arg(long, requires = "repository")]
        repository_ca: Option<PathBuf>,
        /// The chain id this spool must have (printed by an earlier verify): a spool swapped
        /// for another one sealed with the same key is found (with --jwks).
        #[arg(long, requires = "jwks")]
        chain: Option<String>,
    },
    /// The accesses to follow up: every værdispring (a professional reading a patient without a
    /// treatment relationship, in an emergency) in the spool, one JSON object per line: when,
    /// who, organisation, patient, reason, request id.
    FollowUp {
        /// The spool folder (`[audit] spool_dir`).
        dir: PathBuf,
        /// Only those recorded at or after this time (RFC 3339, or a date: `2026-12-01`).
        #[arg(long)]
        since: Option<String>,
    },
    /// Make a seal key: DIR/seal.key (for `[audit] seal_key`, keep it secret) and
    /// DIR/seal-jwks.json (for `audit verify --jwks`).
    NewSealKey {
        /// Where to write the two files.
        dir: PathBuf,
        /// The key's `kid` (`[audit] seal_key_id`).
        #[arg(long, default_value = "audit-seal-1")]
        kid: String,
    },
}

fn parse_claim(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

/// Logs (the access log among them) go to standard output through a writer thread: request
/// tasks format their line and hand it over; the thread writes what has gathered in one go.
/// Nothing is dropped (a full queue makes the logger wait); the returned guard flushes at exit.
fn init_logging(format: LogFormat, level: &str) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(64 * 1024)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        ));
    // Colour only for a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_writer(writer);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
    guard
}

/// `portvagt audit verify`: the chain, and with seal keys its completeness.
fn verify_audit(
    dir: &std::path::Path,
    jwks: Option<&std::path::Path>,
    accepted: &[u64],
    repository: Option<(&str, Option<&std::path::Path>)>,
    expected_chain: Option<&str>,
) -> anyhow::Result<ExitCode> {
    use portvagt::audit::verify::{Check, End, verify};
    let keys = jwks
        .map(portvagt::audit::seal::SealKeys::load)
        .transpose()
        .map_err(|e| anyhow::anyhow!(e))?;
    let now = portvagt::audit::seal::unix_now();
    let report = match verify(
        dir,
        Check {
            keys: keys.as_ref(),
            now,
        },
    ) {
        Ok(report) => report,
        Err(broken) => {
            println!("BROKEN: {broken}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(expected) = expected_chain
        && report.chain.as_deref() != Some(expected)
    {
        println!(
            "BROKEN: this spool's chain is {}, not {expected}: another spool (swapped, or a new one after a wipe)",
            report.chain.as_deref().unwrap_or("unknown (no seal)")
        );
        return Ok(ExitCode::FAILURE);
    }
    let mut anchored = None;
    if let (Some((url, ca)), Some(keys)) = (repository, &keys) {
        let Some(chain) = &report.chain else {
            println!("BROKEN: the spool holds no seal to compare with the repository's anchor");
            return Ok(ExitCode::FAILURE);
        };
        match fetch_anchor(url, ca, chain)? {
            Some(jws) => {
                if let Err(broken) = portvagt::audit::verify::check_anchor(dir, &report, keys, &jws)
                {
                    println!("BROKEN: {broken}");
                    return Ok(ExitCode::FAILURE);
                }
                anchored = Some(format!("the spool reaches the anchor in {url}"));
            }
            None => anchored = Some(format!("{url} holds no anchor for chain {chain} yet")),
        }
    }
    let when = |time: u64| {
        time::OffsetDateTime::from_unix_timestamp(i64::try_from(time).unwrap_or(0))
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| time.to_string())
    };
    let summary = format!(
        "{} records (sequence {} to {}) in {} segments{}, chain head {}",
        report.records,
        report.first_seq,
        report.last_seq,
        report.segments,
        report
            .chain
            .as_ref()
            .map(|chain| format!(" of chain {chain}"))
            .unwrap_or_default(),
        report.head
    );
    let mut notes = Vec::new();
    if let Some(segment) = &report.unfinished_tail {
        notes.push(format!(
            "note: {} ends in a record cut short by a crash (never acknowledged)",
            segment.display()
        ));
    }
    let mut unaccepted = Vec::new();
    for restart in &report.unclean_restarts {
        let seq = restart.seq;
        let what = format!(
            "the run before record {seq} ({}) ended without a close, {} after its last seal: a crash or kill, or records cut off or forged while it was down",
            when(restart.time),
            restart.unsealed.map_or_else(
                || "records (the segment was pruned) ".to_owned(),
                |n| format!("{n} records")
            )
        );
        if accepted.contains(&seq) {
            notes.push(format!("note (accepted): {what}"));
        } else {
            notes.push(format!(
                "UNCLEAN RESTART: {what}; once investigated, accept it with --accept-restart {seq}"
            ));
            unaccepted.push(seq);
        }
    }
    let code = match report.end {
        End::Closed(_) | End::Live(_) if !unaccepted.is_empty() => {
            println!(
                "INCOMPLETE: {summary}; {} restarts after runs that did not close are not accepted",
                unaccepted.len()
            );
            ExitCode::FAILURE
        }
        End::Unchecked if report.seals > 0 => {
            println!(
                "OK (chain only): {summary}; its {} seals were not checked: give --jwks to prove nothing was cut off",
                report.seals
            );
            ExitCode::SUCCESS
        }
        End::Unchecked => {
            println!(
                "OK (chain only): {summary}; the spool is not sealed, so records cut off either end cannot be detected"
            );
            ExitCode::SUCCESS
        }
        End::Closed(time) => {
            println!(
                "OK: {summary}; {} seals hold, closed cleanly at {}",
                report.seals,
                when(time)
            );
            ExitCode::SUCCESS
        }
        End::Live(time) => {
            println!(
                "OK: {summary}; {} seals hold, the gateway is writing (last seal {})",
                report.seals,
                when(time)
            );
            ExitCode::SUCCESS
        }
        End::Unclosed { last_seal, after } => {
            println!(
                "INCOMPLETE: {summary}; the trail stops {} with {after} records after it, and no close: the gateway crashed or was killed (start it again: its open seal records this), or records were cut off the end",
                last_seal.map_or_else(
                    || "without any seal".to_owned(),
                    |time| format!("at the seal of {}", when(time))
                ),
            );
            ExitCode::FAILURE
        }
    };
    if let Some(anchored) = anchored {
        println!("note: {anchored}");
    }
    for note in notes {
        println!("{note}");
    }
    Ok(code)
}

/// The seal the audit repository at `url` holds as the anchor of the chain `chain` (none:
/// nothing anchored yet).
fn fetch_anchor(
    url: &str,
    ca: Option<&std::path::Path>,
    chain: &str,
) -> anyhow::Result<Option<String>> {
    use portvagt::audit::anchor::{anchor_id, anchor_seal, repository_get};
    let client = portvagt::https::HttpsClient::allowing_plain_http(
        ca,
        None,
        std::time::Duration::from_secs(30),
    )
    .map_err(|e| anyhow::anyhow!("--repository: {e}"))?;
    let path = format!("Provenance/{}", anchor_id(chain));
    let anchor = tokio::runtime::Runtime::new()?
        .block_on(repository_get(&client, url, &path))
        .map_err(|e| anyhow::anyhow!("--repository: {e}"))?;
    anchor
        .map(|resource| anchor_seal(&resource).context("the repository's anchor holds no seal"))
        .transpose()
}

/// Writes a private key readable by its owner only.
fn write_secret(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("portvagt: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Audit {
            command:
                AuditCommand::Verify {
                    dir,
                    jwks,
                    accepted,
                    repository,
                    repository_ca,
                    chain,
                },
        } => verify_audit(
            &dir,
            jwks.as_deref(),
            &accepted,
            repository
                .as_deref()
                .map(|url| (url, repository_ca.as_deref())),
            chain.as_deref(),
        ),
        Command::Audit {
            command: AuditCommand::FollowUp { dir, since },
        } => {
            let found = portvagt::audit::follow_up::follow_ups(&dir, since.as_deref())?;
            for access in &found {
                println!("{}", serde_json::to_string(access)?);
            }
            eprintln!("{} access(es) to follow up", found.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::NewSealKey { dir, kid },
        } => {
            let key = portvagt::auth::issuer_key::IssuerKey::generate(&kid)?;
            std::fs::create_dir_all(&dir)?;
            let private = dir.join("seal.key");
            write_secret(&private, key.pem())?;
            std::fs::write(dir.join("seal-jwks.json"), key.jwks())?;
            println!(
                "wrote {} (audit.seal_key, seal_key_id = \"{kid}\") and {}",
                private.display(),
                dir.join("seal-jwks.json").display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { config: path } => {
            let config = Config::load(&path)?;
            let _logs = init_logging(config.log.format, &config.log.level);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(serve(config, &path))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config: path } => {
            let config = match Config::load(&path) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("{}: {error}", path.display());
                    return Ok(ExitCode::FAILURE);
                }
            };
            let addr = config.server.listen;
            let (unshared, replicas) = (config.unshared_state(), config.server.replicas);
            match Runtime::build(config, addr) {
                Ok(runtime) => {
                    println!("{}: OK", path.display());
                    for unshared in &unshared {
                        println!("warning: [server] replicas = {replicas}, but {unshared}");
                    }
                    if !runtime.pager.shares_key() && unshared.is_empty() {
                        println!(
                            "note: no [paging] key_file: a paging link is good only in the process \
                             that made it (one replica, until it restarts)"
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    for error in errors {
                        eprintln!("{}: {error}", path.display());
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Demo { dir, port, testbed } => {
            let _logs = init_logging(LogFormat::Text, "info");
            let options = DemoOptions {
                dir,
                port,
                testbed: testbed.unwrap_or_else(demo::default_testbed),
            };
            tokio::runtime::Runtime::new()?.block_on(demo::run(options))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token {
            dir,
            sub,
            scope,
            patient,
            fhir_user,
            client_id,
            bind_cert,
            ttl,
            audience,
            claims,
            new_issuer,
        } => {
            if new_issuer {
                portvagt::auth::issuer_key::IssuerKey::generate(portvagt::demo::DEMO_KEY_ID)?
                    .save(&dir.join("issuer"))?;
            }
            let audience = match audience {
                Some(audience) => audience,
                None => demo_url(&dir)?,
            };
            let request = TokenRequest {
                subject: sub,
                scope,
                patient,
                fhir_user,
                client_id,
                bind_cert,
                ttl,
                extra: serde_json::Value::Object(
                    claims
                        .into_iter()
                        .map(|(name, value)| (name, serde_json::Value::String(value)))
                        .collect(),
                ),
            };
            println!(
                "{}",
                demo::mint_token(&dir.join("issuer"), &audience, &request)?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn demo_url(dir: &std::path::Path) -> anyhow::Result<String> {
    let env = std::fs::read_to_string(dir.join("demo.env")).with_context(|| {
        format!(
            "reading {} (run `portvagt demo` first, or pass --audience)",
            dir.join("demo.env").display()
        )
    })?;
    env.lines()
        .find_map(|line| line.strip_prefix("PORTVAGT_URL="))
        .map(str::to_owned)
        .context("no PORTVAGT_URL in demo.env")
}

async fn serve(config: Config, path: &std::path::Path) -> anyhow::Result<()> {
    // Before anything is opened: a stop asked for during start-up is a clean stop.
    let stop = portvagt::server::shutdown_signal();
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("server.listen: cannot bind {}", config.server.listen))?;
    let listeners = portvagt::server::Listeners::bind(listener, &config)
        .await
        .map_err(|(what, error)| anyhow::anyhow!("{what}: {error}"))?;
    let addr = listeners.client.local_addr()?;
    for unshared in config.unshared_state() {
        tracing::warn!(
            replicas = config.server.replicas,
            "state not shared between replicas: {unshared}"
        );
    }
    let runtime = Runtime::build(config, addr)
        .map_err(|errors| anyhow::anyhow!(ConfigError::join(&errors, "\n")))?;
    let mut runtime = runtime;
    runtime.watch_config_file(path);
    runtime.open()?;
    tracing::info!(
        addr = %addr,
        admin_addr = %listeners.admin.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()).unwrap_or_default(),
        citizen_addr = %listeners.citizen.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()).unwrap_or_default(),
        public_base_url = %runtime.public_base_url,
        backend = %runtime.backend.base_url(),
        "listening"
    );
    portvagt::server::serve(Arc::new(runtime), listeners, stop).await;
    Ok(())
}
