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
    /// A running `portvagt demo`'s folder: every input is made from its files (its URLs,
    /// certificates, STS and token issuer key), and the reports go to DIR/conformance/ unless
    /// given. Instead of --target, --ca, --cert, --key and the tokens.
    #[arg(long, conflicts_with_all = [
        "target", "ca", "cert", "key", "tokens", "token_commands", "own_patient", "other_patient",
        "other_cert", "other_key", "foreign_cert", "foreign_key", "sosi_card", "blocked_patient",
        "citizen_target", "related_patient", "unrelated_patient",
    ])]
    demo: Option<PathBuf>,
    /// The deployment's FHIR base URL, e.g. https://fhir.example.dk/fhir
    #[arg(long, required_unless_present = "demo")]
    target: Option<String>,
    /// The CA certificate(s) of the deployment's server certificate (PEM).
    #[arg(long, required_unless_present = "demo")]
    ca: Option<PathBuf>,
    /// The client certificate the deployment accepts (PEM), and its key.
    #[arg(long, required_unless_present = "demo")]
    cert: Option<PathBuf>,
    #[arg(long, required_unless_present = "demo")]
    key: Option<PathBuf>,
    /// A token: NAME=VALUE, NAME one of user, patient, narrow, expired, wrong-audience,
    /// granular, v1, blocked, emergency, bound, bound-emergency, citizen, colleague, duplicate-member,
    /// critical-header.
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
    /// A patient the professional of the bound/bound-emergency tokens treats (RELATION cases).
    #[arg(long)]
    related_patient: Option<String>,
    /// A patient she does not treat (and who has not blocked her).
    #[arg(long)]
    unrelated_patient: Option<String>,
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
    if let Some(dir) = &cli.demo {
        return portvagt_conformance::demo::settings(dir);
    }
    let (Some(target), Some(ca), Some(cert), Some(key)) =
        (&cli.target, &cli.ca, &cli.cert, &cli.key)
    else {
        anyhow::bail!("--target, --ca, --cert and --key are needed without --demo");
    };
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
            "bound" => &mut tokens.bound,
            "bound-emergency" => &mut tokens.bound_emergency,
            "citizen" => &mut tokens.citizen,
            "colleague" => &mut tokens.colleague,
            "duplicate-member" => &mut tokens.duplicate_member,
            "critical-header" => &mut tokens.critical_header,
            other => anyhow::bail!("unknown token name {other:?}"),
        };
        *slot = Some(value);
    }
    Ok(Settings {
        base_url: target.trim_end_matches('/').to_owned(),
        ca_pem: read(ca)?,
        identity: Identity {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
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
        related_patient: cli.related_patient.clone(),
        unrelated_patient: cli.unrelated_patient.clone(),
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
    let mut cli = Cli::parse();
    let settings = settings(&cli)?;
    if let Some(dir) = cli.demo.clone() {
        portvagt_conformance::demo::check_running(&settings.base_url)?;
        let reports = portvagt_conformance::demo::report_dir(&dir);
        std::fs::create_dir_all(&reports)
            .with_context(|| format!("creating {}", reports.display()))?;
        cli.junit.get_or_insert_with(|| reports.join("junit.xml"));
        cli.json.get_or_insert_with(|| reports.join("report.json"));
        cli.markdown
            .get_or_insert_with(|| reports.join("report.md"));
    }
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
    let reports = [
        ("JUnit", &cli.junit, report.junit()),
        ("JSON", &cli.json, report.json()),
        ("Markdown", &cli.markdown, report.markdown(&now)),
    ];
    for (kind, path, text) in reports {
        if let Some(path) = path {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            println!("{kind} report: {}", path.display());
        }
    }
    Ok(report.all_passed())
}
