//! `portvagt-conformance`: runs the conformance suite against a deployment and writes the
//! reports. Exit code 0 only if every case that ran passed.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use portvagt_conformance::client::Identity;
use portvagt_conformance::{Settings, Tokens, Verdict};

#[derive(Debug, Parser)]
#[command(
    name = "portvagt-conformance",
    about = "Checks that a Portvagt deployment enforces what it should"
)]
struct Cli {
    /// The deployment's FHIR base URL, e.g. https://fhir.example.dk/fhir
    #[arg(long)]
    target: String,
    /// The CA certificate(s) of the deployment's server certificate (PEM).
    #[arg(long)]
    ca: PathBuf,
    /// The client certificate the deployment accepts (PEM), and its key.
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// A token: NAME=VALUE, NAME one of user, patient, narrow, expired, wrong-audience,
    /// granular, v1, blocked, emergency.
    #[arg(long = "token", value_parser = pair)]
    tokens: Vec<(String, String)>,
    /// A command that prints a token: NAME=COMMAND (run with sh -c).
    #[arg(long = "token-command", value_parser = pair)]
    token_commands: Vec<(String, String)>,
    /// The patient the patient token is for.
    #[arg(long)]
    own_patient: Option<String>,
    /// A patient the patient token must not reach.
    #[arg(long)]
    other_patient: Option<String>,
    /// A second client certificate the deployment accepts, and its key.
    #[arg(long, requires = "other_key")]
    other_cert: Option<PathBuf>,
    #[arg(long)]
    other_key: Option<PathBuf>,
    /// A client certificate from a CA the deployment does not trust, and its key.
    #[arg(long, requires = "foreign_key")]
    foreign_cert: Option<PathBuf>,
    #[arg(long)]
    foreign_key: Option<PathBuf>,
    /// A signed SOSI ID card for --cert, for the token exchange cases (used up by them).
    #[arg(long)]
    sosi_card: Option<PathBuf>,
    /// A patient who has blocked the professional of the blocked/emergency tokens.
    #[arg(long)]
    blocked_patient: Option<String>,
    /// The citizen listener's FHIR base URL (no client certificate), for the CITIZEN cases.
    #[arg(long)]
    citizen_target: Option<String>,
    /// Run only the cases whose id starts with this (repeatable), e.g. AUTH or PAT-02.
    #[arg(long)]
    only: Vec<String>,
    /// Write a JUnit XML report here.
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Write a JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a Markdown report here.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

fn pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(name, _)| !name.is_empty())
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn identity(cert: &Option<PathBuf>, key: &Option<PathBuf>) -> anyhow::Result<Option<Identity>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(Identity {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        })),
        _ => Ok(None),
    }
}

fn settings(cli: &Cli) -> anyhow::Result<Settings> {
    let mut tokens = Tokens::default();
    let mut given = cli.tokens.clone();
    for (name, command) in &cli.token_commands {
        let output = std::process::Command::new("sh")
            .args(["-c", command])
            .output()
            .with_context(|| format!("running the {name} token command"))?;
        anyhow::ensure!(output.status.success(), "the {name} token command failed");
        given.push((
            name.clone(),
            String::from_utf8(output.stdout)?.trim().to_owned(),
        ));
    }
    for (name, value) in given {
        let slot = match name.as_str() {
            "user" => &mut tokens.user,
            "patient" => &mut tokens.patient,
            "narrow" => &mut tokens.narrow,
            "expired" => &mut tokens.expired,
            "wrong-audience" => &mut tokens.wrong_audience,
            "granular" => &mut tokens.granular,
            "v1" => &mut tokens.v1,
            "blocked" => &mut tokens.blocked,
            "emergency" => &mut tokens.emergency,
            other => anyhow::bail!("unknown token name {other:?}"),
        };
        *slot = Some(value);
    }
    Ok(Settings {
        base_url: cli.target.trim_end_matches('/').to_owned(),
        ca_pem: read(&cli.ca)?,
        identity: Identity {
            cert_pem: read(&cli.cert)?,
            key_pem: read(&cli.key)?,
        },
        other_identity: identity(&cli.other_cert, &cli.other_key)?,
        foreign_identity: identity(&cli.foreign_cert, &cli.foreign_key)?,
        tokens,
        own_patient: cli.own_patient.clone(),
        other_patient: cli.other_patient.clone(),
        sosi_card: cli.sosi_card.as_ref().map(read).transpose()?,
        blocked_patient: cli.blocked_patient.clone(),
        citizen_base_url: cli
            .citizen_target
            .as_ref()
            .map(|url| url.trim_end_matches('/').to_owned()),
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("portvagt-conformance: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let cli = Cli::parse();
    let settings = settings(&cli)?;
    let terminal = std::io::stderr().is_terminal();
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(portvagt_conformance::run(
        settings,
        &cli.only,
        |done, total, result| {
            let mark = match result.verdict {
                Verdict::Pass => "pass",
                Verdict::Fail(_) => "FAIL",
                Verdict::Skip(_) => "skip",
            };
            if terminal {
                let filled = done * 30 / total.max(1);
                eprint!(
                    "\r[{}{}] {done}/{total} {:<9} {mark}",
                    "#".repeat(filled),
                    ".".repeat(30 - filled),
                    result.id
                );
                if done == total {
                    eprintln!();
                }
            } else {
                eprintln!("{done}/{total} {} {mark}", result.id);
            }
            let _ = std::io::stderr().flush();
        },
    ))?;
    print!("{}", report.summary());
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    if let Some(path) = &cli.junit {
        std::fs::write(path, report.junit())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &cli.json {
        std::fs::write(path, report.json())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &cli.markdown {
        std::fs::write(path, report.markdown(&now))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report.all_passed())
}
