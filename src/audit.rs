//! The audit trail: one JSON event per issuance, refusal, revocation,
//! deletion at expiry, admin action, terminal session and configuration
//! load, in one schema (README, "Audit trail"). Each event is a log line
//! (target `audit`) and, with `AUDIT_LOG_FILE`, a line appended to that
//! file, fsynced, in a hash chain: each line carries its number, the hash
//! of the line before and its own hash, so `audit verify` names the first
//! line edited, removed or inserted. Never a key, a token or a secret:
//! the event's fields are ids, names and addresses only.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The hash the first line's `prev` carries.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit event. Absent fields are left out of the JSON.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// When (RFC 3339, UTC, seconds).
    #[serde(default)]
    pub time: String,
    /// What happened: `key.issued`, `key.refused`, `key.revoked`,
    /// `key.deleted`, `admin.revoking`, `admin.refused`, `admin.cleanup`,
    /// `session.cli`, `session.device`, `config.loaded`, `secret.rotated`,
    /// `secret.refused`.
    pub event: String,
    /// Who did it: an address, `github:<id>`, or `server` (the schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Whose key (the owner), or who was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The issuer the actor came through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The rule that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The service account (`svc_acct_…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// The key's id (`key_…`), never its value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The OpenAI project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The key's OpenAI scopes (empty: unrestricted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// The key's lifetime in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_s: Option<u64>,
    /// When the key expires (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Why (a refusal's reason, an action's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How many accounts an action reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// The client's address (after `TRUSTED_PROXIES`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The request's id (`x-request-id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Event {
    /// An event named `event`.
    pub fn new(event: &str) -> Self {
        Self {
            event: event.to_owned(),
            ..Self::default()
        }
    }
}

/// A line of the audit file: its number, the hash of the line before, the
/// event, and the hash of all of it but `hash`.
#[derive(Serialize, Deserialize)]
struct Line {
    seq: u64,
    prev: String,
    #[serde(flatten)]
    event: Event,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    hash: String,
}

impl Line {
    /// The hash of the line as written without its `hash` field.
    fn digest(&self) -> String {
        let unhashed = Self {
            seq: self.seq,
            prev: self.prev.clone(),
            event: self.event.clone(),
            hash: String::new(),
        };
        hex(&Sha256::digest(
            serde_json::to_string(&unhashed)
                .unwrap_or_default()
                .as_bytes(),
        ))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The request an event belongs to, kept for the task that serves it (and
/// the tasks it hands work to).
#[derive(Clone, Debug, Default)]
pub struct Context {
    /// The request's id.
    pub request_id: Option<String>,
    /// The client's address.
    pub client: Option<String>,
}

tokio::task_local! {
    static CONTEXT: Context;
}

/// Runs `work` as part of the request `context`.
pub async fn within<F: Future>(context: Context, work: F) -> F::Output {
    CONTEXT.scope(context, work).await
}

/// The current request's context, to carry into a spawned task.
pub fn context() -> Context {
    CONTEXT.try_with(Clone::clone).unwrap_or_default()
}

/// Where events go. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Audit {
    file: Option<Arc<Mutex<Chain>>>,
}

#[derive(Debug)]
struct Chain {
    path: PathBuf,
    file: File,
    seq: u64,
    prev: String,
}

/// Why the audit file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// It cannot be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Its last line is not a line of this trail.
    #[error(
        "{path}: the last line is not an audit line; verify the file (`openai-key-server audit verify {path}`), keep it, and start a new one"
    )]
    NotATrail {
        /// The file.
        path: String,
    },
}

impl Audit {
    /// Log lines only.
    pub fn log_only() -> Self {
        Self::default()
    }

    /// Log lines, and lines appended to `path` (created 0600 if missing),
    /// continuing the chain of its last line.
    pub fn to_file(path: &Path) -> Result<Self, Error> {
        let shown = path.display().to_string();
        let io = |source| Error::Io {
            path: shown.clone(),
            source,
        };
        let (seq, prev) = match File::open(path) {
            Ok(file) => match BufReader::new(file).lines().map_while(Result::ok).last() {
                None => (0, GENESIS.to_owned()),
                Some(last) => {
                    let line: Line = serde_json::from_str(&last).map_err(|_| Error::NotATrail {
                        path: shown.clone(),
                    })?;
                    (line.seq, line.hash)
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => (0, GENESIS.to_owned()),
            Err(error) => return Err(io(error)),
        };
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path).map_err(io)?;
        Ok(Self {
            file: Some(Arc::new(Mutex::new(Chain {
                path: path.to_owned(),
                file,
                seq,
                prev,
            }))),
        })
    }

    /// Records `event` at `now`, with the current request's context.
    pub fn record(&self, mut event: Event, now: SystemTime) {
        event.time = humantime::format_rfc3339_seconds(now).to_string();
        let context = context();
        event.request_id = event.request_id.or(context.request_id);
        event.client = event.client.or(context.client);
        let scopes = event.scopes.as_ref().map(|s| s.join(" "));
        tracing::info!(
            target: "audit",
            audit = %event.event,
            time = %event.time,
            actor = event.actor.as_deref(),
            subject = event.subject.as_deref(),
            issuer = event.issuer.as_deref(),
            rule = event.rule.as_deref(),
            account_id = event.account_id.as_deref(),
            key_id = event.key_id.as_deref(),
            project = event.project.as_deref(),
            scopes = scopes.as_deref(),
            lifetime_s = event.lifetime_s,
            expires_at = event.expires_at,
            reason = event.reason.as_deref(),
            count = event.count.map(|c| c as u64),
            client = event.client.as_deref(),
            request_id = event.request_id.as_deref(),
            "{}",
            event.event
        );
        let Some(chain) = &self.file else {
            return;
        };
        let mut chain = chain.lock().unwrap_or_else(PoisonError::into_inner);
        let mut line = Line {
            seq: chain.seq + 1,
            prev: chain.prev.clone(),
            event,
            hash: String::new(),
        };
        line.hash = line.digest();
        let text = serde_json::to_string(&line).unwrap_or_default();
        // One write per line and an fsync per event: a crash loses at most
        // the event being written.
        let written = chain
            .file
            .write_all(format!("{text}\n").as_bytes())
            .and_then(|()| chain.file.sync_data());
        match written {
            Ok(()) => {
                chain.seq = line.seq;
                chain.prev = line.hash;
            }
            Err(error) => tracing::error!(
                %error,
                file = %chain.path.display(),
                "could not append to the audit file; the event is in the log only"
            ),
        }
    }
}

/// What `audit verify` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every line is in its place and unchanged.
    Intact {
        /// How many lines.
        lines: u64,
    },
    /// The first line that is not.
    Broken {
        /// Its line number in the file (from 1).
        line: usize,
        /// What is wrong with it.
        why: String,
    },
}

/// Checks the chain of the audit file at `path`.
pub fn verify(path: &Path) -> Result<Verdict, Error> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut seq = 0;
    let mut prev = GENESIS.to_owned();
    for (i, text) in BufReader::new(file).lines().enumerate() {
        let number = i + 1;
        let text = text.map_err(io)?;
        let broken = |why: String| Ok(Verdict::Broken { line: number, why });
        let Ok(line) = serde_json::from_str::<Line>(&text) else {
            return broken("it is not an audit line (inserted or damaged)".to_owned());
        };
        if line.hash != line.digest() {
            return broken(format!(
                "its content does not match its hash: event {} was edited",
                line.seq
            ));
        }
        if line.seq != seq + 1 {
            return broken(if line.seq > seq + 1 {
                format!(
                    "it is event {} but event {} should come here: {} event(s) missing before it",
                    line.seq,
                    seq + 1,
                    line.seq - seq - 1
                )
            } else {
                format!(
                    "it is event {} again or out of order, after event {seq}",
                    line.seq
                )
            });
        }
        if line.prev != prev {
            return broken(format!(
                "it does not follow the line before it (event {seq} was replaced)"
            ));
        }
        seq = line.seq;
        prev = line.hash;
    }
    Ok(Verdict::Intact { lines: seq })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trail(events: usize) -> (PathBuf, Vec<String>) {
        let path = std::env::temp_dir().join(format!("oks-audit-{:x}", rand::random::<u64>()));
        let audit = Audit::to_file(&path).unwrap();
        for i in 0..events {
            let mut event = Event::new("key.issued");
            event.subject = Some(format!("p{i}@example.com"));
            audit.record(event, SystemTime::UNIX_EPOCH);
        }
        let lines = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        (path, lines)
    }

    fn rewrite(path: &Path, lines: &[String]) {
        std::fs::write(
            path,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
    }

    #[test]
    fn an_intact_trail_verifies_and_a_restart_continues_its_chain() {
        let (path, _) = trail(3);
        let again = Audit::to_file(&path).unwrap();
        again.record(Event::new("config.loaded"), SystemTime::UNIX_EPOCH);
        assert_eq!(verify(&path).unwrap(), Verdict::Intact { lines: 4 });
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn an_edit_a_deletion_and_an_insertion_are_each_named() {
        let (path, lines) = trail(5);
        let mut edited = lines.clone();
        edited[2] = edited[2].replace("p2@example.com", "mallory@example.com");
        rewrite(&path, &edited);
        assert!(
            matches!(verify(&path).unwrap(), Verdict::Broken { line: 3, ref why } if why.contains("edited"))
        );

        let mut deleted = lines.clone();
        deleted.remove(1);
        rewrite(&path, &deleted);
        assert!(
            matches!(verify(&path).unwrap(), Verdict::Broken { line: 2, ref why } if why.contains("1 event(s) missing"))
        );

        let mut inserted = lines.clone();
        inserted.insert(4, lines[3].clone());
        rewrite(&path, &inserted);
        assert!(matches!(
            verify(&path).unwrap(),
            Verdict::Broken { line: 5, .. }
        ));

        // A line rewritten whole, its hash recomputed: the next one says so.
        let mut forged: Vec<Line> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        forged[1].event.subject = Some("mallory@example.com".into());
        forged[1].hash = forged[1].digest();
        let forged: Vec<String> = forged
            .iter()
            .map(|l| serde_json::to_string(l).unwrap())
            .collect();
        rewrite(&path, &forged);
        assert!(
            matches!(verify(&path).unwrap(), Verdict::Broken { line: 3, ref why } if why.contains("replaced"))
        );
        let _ = std::fs::remove_file(path);
    }
}
