//! `portvagt-certs`: writes Portvagt's development PKI to a folder.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "portvagt-certs",
    about = "Development PKI for Portvagt (never for production)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a fresh dev PKI (CA, server, client, employee, revoked client, CRL) as PEM files.
    Dev {
        /// Output folder; created if missing. Existing files with the same names are replaced.
        #[arg(long, default_value = "pki")]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Dev { out } => {
            portvagt_certs::DevPki::generate()?.write_to(&out)?;
            println!("wrote dev PKI to {}", out.display());
        }
    }
    Ok(())
}
