//! `portvagt-certs`: writes Portvagt's development PKI to a folder, and signs SOSI ID cards and
//! OIOSAML assertions with its test STS certificate.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use portvagt_certs::IssuedCert;
use portvagt_certs::saml::{OiosamlAssertion, SignatureAlgorithm, SosiCard};

#[derive(Debug, Parser)]
#[command(
    name = "portvagt-certs",
    about = "Development PKI and SAML fixtures for Portvagt (never for production)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a fresh dev PKI (CA, server, client, employee, revoked client, STS, CRL) as PEM
    /// files.
    Dev {
        /// Output folder; created if missing. Existing files with the same names are replaced.
        #[arg(long, default_value = "pki")]
        out: PathBuf,
    },
    /// Sign a SOSI ID card (DGWS 1.0.1) bound to a client certificate.
    SosiCard {
        #[command(flatten)]
        signing: Signing,
        /// A user card (a physician) instead of a system card.
        #[arg(long)]
        user: bool,
        /// Authentication level (3: system certificate, 4: personal certificate).
        #[arg(long)]
        level: Option<u8>,
        /// Hours the card is valid (DGWS cards live at most 24).
        #[arg(long, default_value_t = 24)]
        hours: i64,
    },
    /// Sign an OIOSAML / IDWS XUA-style assertion for a physician treating a patient.
    Oiosaml {
        #[command(flatten)]
        signing: Signing,
        /// The service the assertion is for (its AudienceRestriction).
        #[arg(long)]
        audience: String,
        /// The patient's CPR number (XUA resource-id).
        #[arg(long, default_value = "1111111118")]
        patient_cpr: String,
    },
}

/// Which STS signs, for which client certificate, how, and where the XML goes.
#[derive(Debug, clap::Args)]
struct Signing {
    /// Folder with `sts.crt`, `sts.key` and the client certificate (as `dev` writes them).
    #[arg(long, default_value = "pki")]
    pki: PathBuf,
    /// The client certificate the assertion is bound to (holder-of-key), relative to --pki.
    #[arg(long, default_value = "client.crt")]
    client_cert: PathBuf,
    /// Signature algorithm.
    #[arg(long, value_enum, default_value_t = Algorithm::RsaSha256)]
    algorithm: Algorithm,
    /// Where to write the signed XML.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Algorithm {
    RsaSha1,
    RsaSha256,
}

impl From<Algorithm> for SignatureAlgorithm {
    fn from(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::RsaSha1 => SignatureAlgorithm::RsaSha1,
            Algorithm::RsaSha256 => SignatureAlgorithm::RsaSha256,
        }
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

impl Signing {
    /// The STS certificate with its key, and the client certificate's DER.
    fn load(&self) -> anyhow::Result<(IssuedCert, Vec<u8>)> {
        let sts = IssuedCert::from_pem(
            &read(&self.pki.join("sts.crt"))?,
            &read(&self.pki.join("sts.key"))?,
        )?;
        let client = IssuedCert::from_pem(&read(&self.pki.join(&self.client_cert))?, "")?;
        Ok((sts, client.cert_der))
    }

    fn write(&self, xml: &str) -> anyhow::Result<()> {
        std::fs::write(&self.out, xml)
            .with_context(|| format!("writing {}", self.out.display()))?;
        println!("wrote {}", self.out.display());
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Dev { out } => {
            portvagt_certs::DevPki::generate()?.write_to(&out)?;
            println!("wrote dev PKI to {}", out.display());
        }
        Command::SosiCard {
            signing,
            user,
            level,
            hours,
        } => {
            let (sts, client) = signing.load()?;
            let mut card = if user {
                SosiCard::user(&client)
            } else {
                SosiCard::system(&client)
            };
            if let Some(level) = level {
                card.level = level;
            }
            card.algorithm = signing.algorithm.into();
            card.not_on_or_after = card.not_before + time::Duration::hours(hours);
            signing.write(&card.sign(&sts)?)?;
        }
        Command::Oiosaml {
            signing,
            audience,
            patient_cpr,
        } => {
            let (sts, client) = signing.load()?;
            let mut assertion = OiosamlAssertion::physician(&client, &audience, &patient_cpr);
            assertion.algorithm = signing.algorithm.into();
            signing.write(&assertion.sign(&sts)?)?;
        }
    }
    Ok(())
}
