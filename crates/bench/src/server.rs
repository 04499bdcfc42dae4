//! The key server under test: finding (or building) the release binary,
//! starting it as a child process wired to the sandbox, waiting until it is
//! ready, reading its CPU time and memory, and killing it at the end.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail, ensure};
use sandbox::Sandbox;

use crate::procfs::{self, Memory};

/// The server binary's name.
const BINARY: &str = "openai-key-server";

/// Base64 of 48 bytes, so that the cookie key is fixed for the run.
const SESSION_SECRET: &str = "YmVuY2gtc2Vzc2lvbi1zZWNyZXQtNDgtYnl0ZXMtbG9uZy1mb3ItY29va2llcyEh";

/// How long the server may take to answer `/readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What the server binary is built from, relative to the workspace.
const SOURCES: [&str; 6] = [
    "src",
    "templates",
    "assets",
    "crates/sandbox/src",
    "Cargo.toml",
    "Cargo.lock",
];

/// The binary to run: `explicit`, or `openai-key-server` next to this
/// executable, built first when it is absent, older than its sources (so
/// that a stale build is never measured), or `rebuild` is set.
pub(crate) fn locate(explicit: Option<PathBuf>, rebuild: bool) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        ensure!(path.is_file(), "no server binary at {}", path.display());
        // The server runs in another working directory.
        return std::fs::canonicalize(&path)
            .with_context(|| format!("resolving {}", path.display()));
    }
    let exe = std::env::current_exe().context("finding this executable")?;
    let dir = exe
        .parent()
        .context("this executable has no parent directory")?;
    let path = dir.join(BINARY);
    let workspace = workspace();
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let sources = SOURCES
        .iter()
        .filter_map(|source| newest(&workspace.join(source), 0))
        .max();
    let stale = match (built, sources) {
        (Some(built), Some(sources)) => sources > built,
        (built, _) => built.is_none(),
    };
    if rebuild || stale {
        build(&workspace)?;
    }
    ensure!(
        path.is_file(),
        "{} is still missing after the build; pass --server-bin",
        path.display()
    );
    Ok(path)
}

/// The workspace this crate was built in.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The latest modification time of a file, or of any file under a
/// directory (at most 8 levels down).
fn newest(path: &Path, depth: u32) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    if depth >= 8 {
        return None;
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| newest(&entry.path(), depth + 1))
        .max()
}

/// `cargo build --release -p openai-key-server --bin openai-key-server` in
/// this workspace.
fn build(workspace: &Path) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "bench: the server binary is missing or older than its sources: \
         cargo build --release -p {BINARY} --bin {BINARY}"
    );
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", BINARY, "--bin", BINARY])
        .current_dir(workspace)
        .status()
        .context("running cargo build")?;
    ensure!(status.success(), "cargo build failed ({status})");
    Ok(())
}

/// A running server process. Killed when dropped.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    /// Its process id.
    pub(crate) pid: u32,
    /// `http://127.0.0.1:PORT`.
    pub(crate) base_url: String,
    /// When it was spawned.
    pub(crate) spawned: Instant,
    workdir: PathBuf,
}

/// Settings for the server beyond the sandbox's.
pub(crate) type Env = Vec<(&'static str, String)>;

/// `NAME=value` settings given with `--server-env`, applied last to every
/// server started.
static OVERRIDES: OnceLock<Vec<(String, String)>> = OnceLock::new();

/// Sets the `--server-env` overrides (once, before any server starts).
pub(crate) fn set_overrides(pairs: &[String]) -> anyhow::Result<()> {
    let parsed = pairs
        .iter()
        .map(|pair| {
            let (name, value) = pair
                .split_once('=')
                .with_context(|| format!("--server-env {pair:?} is not NAME=value"))?;
            Ok((name.to_owned(), value.to_owned()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let _ = OVERRIDES.set(parsed);
    Ok(())
}

/// The value `--server-env` gives the setting `name` (the last one wins, as
/// when the server is spawned), if any.
pub(crate) fn overridden(name: &str) -> Option<String> {
    OVERRIDES
        .get()?
        .iter()
        .rev()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.clone())
}

impl Server {
    /// Starts `binary` wired to `sandbox`, with only the settings it needs
    /// (`extra` on top of the defaults below), in an empty working
    /// directory so that no stray `.env` is read. Does not wait for ready.
    pub(crate) fn spawn(binary: &Path, sandbox: &Sandbox, extra: Env) -> anyhow::Result<Self> {
        static RUN: AtomicU32 = AtomicU32::new(0);
        let port = free_port()?;
        let base_url = format!("http://127.0.0.1:{port}");
        let redirect_uri = format!("{base_url}/oauth2/callback");
        sandbox.oidc.allow_redirect_uri(&redirect_uri);

        let mut env: Env = sandbox.env(&redirect_uri);
        env.extend([
            ("ALLOWED_DOMAINS", "example.com".to_owned()),
            ("BIND_ADDRESS", "127.0.0.1".to_owned()),
            ("PORT", port.to_string()),
            ("LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
            ("SESSION_SECRET", SESSION_SECRET.to_owned()),
            // Every browser of the bench comes from 127.0.0.1: a few failed
            // flows would use up the one allowance they all share and fail
            // the rest. The per-user limits stay on (each flow signs in a
            // different person).
            ("RATE_LIMIT_PER_IP", "0".to_owned()),
            // How long each answer waited on the sandbox, so that the
            // latency the server adds can be told from the sandbox's.
            ("SERVER_TIMING", "true".to_owned()),
        ]);
        let mut env: Vec<(String, String)> =
            env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let overrides = OVERRIDES.get().into_iter().flatten().cloned();
        for (key, value) in extra
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .chain(overrides)
        {
            env.retain(|(k, _)| *k != key);
            env.push((key, value));
        }

        let run = RUN.fetch_add(1, Ordering::SeqCst);
        let workdir = std::env::temp_dir().join(format!("oks-bench-{}-{run}", std::process::id()));
        std::fs::create_dir_all(&workdir)
            .with_context(|| format!("creating {}", workdir.display()))?;
        let log = File::create(workdir.join("server.log")).context("creating the server log")?;
        let spawned = Instant::now();
        let child = Command::new(binary)
            .arg("serve")
            .env_clear()
            .envs(env)
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("sharing the server log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            pid: child.id(),
            child,
            base_url,
            spawned,
            workdir,
        })
    }

    /// Waits until `GET /readyz` answers 200 and returns when it did.
    pub(crate) async fn wait_ready(&mut self, client: &reqwest::Client) -> anyhow::Result<Instant> {
        let url = format!("{}/readyz", self.base_url);
        while self.spawned.elapsed() < READY_TIMEOUT {
            if let Ok(response) = client.get(&url).send().await
                && response.status() == reqwest::StatusCode::OK
            {
                return Ok(Instant::now());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the server exited ({status}):\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        bail!(
            "the server was not ready after {READY_TIMEOUT:?}:\n{}",
            self.log_tail()
        )
    }

    /// CPU time it has used so far.
    pub(crate) fn cpu(&self) -> anyhow::Result<procfs::Cpu> {
        procfs::cpu_time(self.pid)
    }

    /// Its resident memory now and at its peak.
    pub(crate) fn memory(&self) -> anyhow::Result<Memory> {
        procfs::memory(self.pid)
    }

    /// Fails, with the end of its log, if it has exited.
    pub(crate) fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the server exited ({status}):\n{}", self.log_tail());
        }
        Ok(())
    }

    /// The last lines of its log (warnings and errors only, as `RUST_LOG`
    /// is `warn`).
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.workdir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// How many lines it logged (at `warn` and above).
    pub(crate) fn log_lines(&self) -> usize {
        std::fs::read_to_string(self.workdir.join("server.log"))
            .map_or(0, |text| text.lines().count())
    }
}

impl Drop for Server {
    /// SIGTERM first (the server's own shutdown, and a profiler wrapping it
    /// gets to write its output), SIGKILL after 5 s.
    fn drop(&mut self) {
        let asked = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        let deadline = Instant::now() + Duration::from_secs(5);
        while asked && Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

/// A loopback port free right now (the server binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Size of the server binary in MiB, like every `_mb` figure.
pub(crate) fn binary_mb(binary: &Path) -> Option<f64> {
    std::fs::metadata(binary)
        .ok()
        .map(|m| m.len() as f64 / (1024.0 * 1024.0))
}
