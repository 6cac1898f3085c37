//! The testbed's Node.js processes: the reference FHIR backend (and, with other flags, the
//! audit repository) and the authorization server, each started with `npm ci` if needed and
//! stopped when dropped. It only starts and stops them: what the demo does with them is
//! [`super::run`]'s.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use anyhow::{Context as _, bail};

/// Where the testbed lives when not told otherwise: beside the gateway crate.
pub fn default_testbed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testbed")
}

/// The reference FHIR backend (Medplum's FHIR router in memory) as a child process. It exits
/// when dropped, and also on its own when this process dies (it watches its stdin).
#[derive(Debug)]
pub struct BackendProcess {
    child: Child,
    _stdin: ChildStdin,
    base_url: String,
}

impl BackendProcess {
    /// Starts the backend from `testbed`, installing its npm packages first if needed.
    pub fn start(testbed: &Path, seed: bool) -> anyhow::Result<BackendProcess> {
        Self::start_on(testbed, seed, 0)
    }

    /// Like [`BackendProcess::start`], on a given port (0: any free port).
    pub fn start_on(testbed: &Path, seed: bool, port: u16) -> anyhow::Result<BackendProcess> {
        Self::start_with(testbed, seed, port, &[])
    }

    /// Like [`BackendProcess::start`], with more of the backend's flags (e.g. `--paging
    /// opaque`).
    pub fn start_flagged(
        testbed: &Path,
        seed: bool,
        flags: &[&str],
    ) -> anyhow::Result<BackendProcess> {
        let flags: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
        Self::start_with(testbed, seed, 0, &flags)
    }

    /// An empty audit repository on `port` (0: any free port), serving HTTPS with the dev PKI
    /// in `pki` (`server.crt`) and taking writes only from the gateway's certificate
    /// (`gateway.crt`, presented by the shipper): nobody else can add, change or delete an
    /// AuditEvent in it.
    pub fn start_repository(
        testbed: &Path,
        pki: &Path,
        port: u16,
    ) -> anyhow::Result<BackendProcess> {
        let file = |name: &str| pki.join(name).display().to_string();
        let tls = [
            ("--tls-cert", "server.crt"),
            ("--tls-key", "server.key"),
            ("--client-ca", "ca.crt"),
            ("--writer-cert", "gateway.crt"),
        ]
        .map(|(flag, name)| [flag.to_owned(), file(name)]);
        Self::start_with(testbed, false, port, tls.as_flattened())
    }

    fn start_with(
        testbed: &Path,
        seed: bool,
        port: u16,
        extra: &[String],
    ) -> anyhow::Result<BackendProcess> {
        let mut args = vec![
            "--watch-stdin".to_owned(),
            "--port".into(),
            port.to_string(),
        ];
        if seed {
            args.extend(["--seed".into(), "seed/bundle.json".into()]);
        }
        args.extend_from_slice(extra);
        let (child, stdin, announced) =
            start_node(&testbed.join("backend"), &args, "the reference backend")?;
        let base_url = announced["listening"]
            .as_str()
            .context("no `listening` in the backend's announcement")?
            .to_owned();
        Ok(BackendProcess {
            child,
            _stdin: stdin,
            base_url,
        })
    }

    /// The backend's FHIR base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }
}

/// Starts `node server.mjs ARGS` in `dir` (after `npm ci` there if needed), and reads the one
/// JSON line it announces itself with. It exits when its stdin closes.
fn start_node(
    dir: &Path,
    args: &[String],
    what: &str,
) -> anyhow::Result<(Child, ChildStdin, serde_json::Value)> {
    if !dir.join("node_modules").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir)
            .status()
            .with_context(|| format!("running npm ci for {what} (is Node.js installed?)"))?;
        if !status.success() {
            bail!("npm ci failed in {}", dir.display());
        }
    }
    let mut child = Command::new("node")
        .arg("server.mjs")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {what} (is Node.js installed?)"))?;
    let stdin = child.stdin.take().context("stdin")?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .with_context(|| format!("reading the first line of {what}"))?;
    let announced = serde_json::from_str(line.trim())
        .with_context(|| format!("{what} did not announce its address: {line:?}"))?;
    Ok((child, stdin, announced))
}

/// The testbed authorization server (oidc-provider), signing citizens in for the citizen page
/// (authorization code with PKCE). It exits when dropped, or when this process dies.
#[derive(Debug)]
pub struct AuthServerProcess {
    child: Child,
    _stdin: ChildStdin,
    issuer: String,
}

impl AuthServerProcess {
    /// Starts it from `testbed` with the TLS certificate and key in `pki`, issuing tokens for
    /// `audience` to the citizen page at `redirect_uri`.
    pub fn start(
        testbed: &Path,
        pki: &Path,
        audience: &str,
        redirect_uri: &str,
    ) -> anyhow::Result<AuthServerProcess> {
        let path = |file: &str| pki.join(file).display().to_string();
        let args = [
            "--issuer-port".to_owned(),
            "0".into(),
            "--watch-stdin".into(),
            "--tls-cert".into(),
            path("server.crt"),
            "--tls-key".into(),
            path("server.key"),
            "--audience".into(),
            audience.into(),
            "--citizen-client".into(),
            redirect_uri.into(),
        ];
        let (child, stdin, announced) = start_node(
            &testbed.join("authserver"),
            &args,
            "the authorization server",
        )?;
        let issuer = announced["issuer"]
            .as_str()
            .context("no `issuer` in the authorization server's announcement")?
            .to_owned();
        Ok(AuthServerProcess {
            child,
            _stdin: stdin,
            issuer,
        })
    }

    /// Its issuer URL (`https://127.0.0.1:<port>`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
}

impl Drop for AuthServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
