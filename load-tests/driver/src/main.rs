//! `portvagt-load`: one load run, its outcome as JSON on stdout.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use http::{HeaderName, HeaderValue};
use portvagt_load::{Plan, TlsPlan, Variant};

#[derive(Debug, Parser)]
#[command(
    name = "portvagt-load",
    about = "Load generator for Portvagt's load tests"
)]
struct Cli {
    /// The URL to request (GET).
    url: String,
    /// Open connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// How long, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime_serde::re::humantime::parse_duration)]
    duration: Duration,
    /// Requests per second in all (open loop); without it, as fast as answers come.
    #[arg(long)]
    rate: Option<f64>,
    /// HTTP/2.
    #[arg(long)]
    http2: bool,
    /// Trusted CA (PEM) for https URLs.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Client certificate and key (PEM).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
    /// A header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Instead of load: open `--connections` connections, one answered request each, print
    /// `ready <n>` on standard error, hold them idle for `--duration`, then report.
    #[arg(long)]
    idle: bool,
    /// A mix of requests taken in turn (the URL gives the origin): one per line, the path and
    /// query, then tab-separated `Name: value` headers of its own (a caller's token).
    #[arg(long)]
    mix: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let tls = match &cli.cacert {
        None => None,
        Some(ca) => Some(TlsPlan {
            ca_pem: read(ca)?,
            client: match (&cli.cert, &cli.key) {
                (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                _ => None,
            },
        }),
    };
    let header = |header: &str| -> anyhow::Result<(HeaderName, HeaderValue)> {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("{header:?} is not `Name: value`"))?;
        Ok((
            HeaderName::try_from(name.trim())?,
            HeaderValue::try_from(value.trim())?,
        ))
    };
    let headers = cli
        .headers
        .iter()
        .map(|text| header(text))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mix = match &cli.mix {
        None => Vec::new(),
        Some(path) => read(path)?
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let mut fields = line.split('\t');
                let path = fields.next().unwrap_or("/").to_owned();
                let headers = fields.map(header).collect::<anyhow::Result<Vec<_>>>()?;
                Ok(Variant { path, headers })
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    let plan = Plan {
        url: cli.url.parse()?,
        headers,
        connections: cli.connections.max(1),
        duration: cli.duration,
        rate: cli.rate,
        http2: cli.http2,
        tls,
        mix: std::sync::Arc::new(mix),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if cli.idle {
        let hold = plan.duration;
        let outcome = runtime.block_on(portvagt_load::hold_idle(plan, hold, |held| {
            eprintln!("ready {held}");
        }))?;
        println!("{}", serde_json::to_string(&outcome)?);
        return Ok(());
    }
    let outcome = runtime.block_on(portvagt_load::run(plan))?;
    println!("{}", serde_json::to_string(&outcome)?);
    Ok(())
}
