//! What the CLI keeps between runs, and where:
//!
//! - `$XDG_CONFIG_HOME/openai-key-server/config.toml`: the server's address.
//! - `$XDG_CACHE_HOME/openai-key-server/` (mode 0700): `session.json` (the
//!   CLI session), `key.json` (the key being handed out, and when it
//!   expires), `obtained.json` (the keys this CLI got, for `logout`), and
//!   `lock` (held while a key is renewed).
//!
//! Without the XDG variables, the platform's directories (`~/.config` and
//! `~/.cache` on Linux). Secrets are written 0600, atomically (a temporary
//! file renamed over the old one), and a file or directory that others can
//! read is refused rather than used.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

const APP: &str = "openai-key-server";

fn expose<S: Serializer>(secret: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose_secret())
}

/// The remembered settings (`config.toml`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Settings {
    /// The key server's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

/// The CLI session (`session.json`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Session {
    /// The server it belongs to.
    pub server: String,
    /// The bearer token.
    #[serde(serialize_with = "expose")]
    pub token: SecretString,
    /// When it ends (Unix seconds).
    pub expires_at: i64,
    /// Whom it signs in.
    pub email: String,
}

/// The key being handed out (`key.json`).
#[derive(Debug, Serialize, Deserialize)]
pub struct CachedKey {
    /// The server it came from.
    pub server: String,
    /// Its id on the server.
    pub id: String,
    /// The key.
    #[serde(serialize_with = "expose")]
    pub key: SecretString,
    /// When OpenAI stops accepting it (Unix seconds).
    pub expires_at: i64,
    /// When this CLI got it (Unix seconds), for its lifetime.
    pub issued_at: i64,
}

/// A key this CLI obtained (`obtained.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Obtained {
    /// The server it came from.
    pub server: String,
    /// Its id on the server.
    pub id: String,
    /// When it expires (Unix seconds).
    pub expires_at: i64,
}

/// The CLI's directories.
#[derive(Clone)]
pub struct Store {
    config_dir: PathBuf,
    cache_dir: PathBuf,
}

/// `$VAR` if set to an absolute path (the XDG spec ignores relative ones),
/// else the platform's directory.
fn base_dir(var: &str, platform: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(var).map(PathBuf::from)
        && dir.is_absolute()
    {
        return Ok(dir);
    }
    platform.with_context(|| format!("cannot tell where to keep files: set HOME or {var}"))
}

impl Store {
    /// The directories of this user.
    pub fn locate() -> anyhow::Result<Self> {
        Ok(Self {
            config_dir: base_dir("XDG_CONFIG_HOME", dirs::config_dir())?.join(APP),
            cache_dir: base_dir("XDG_CACHE_HOME", dirs::cache_dir())?.join(APP),
        })
    }

    /// Where `config.toml` is.
    pub fn settings_path(&self) -> PathBuf {
        self.config_dir.join("config.toml")
    }

    /// Where the key is cached.
    pub fn key_path(&self) -> PathBuf {
        self.cache_dir.join("key.json")
    }

    fn session_path(&self) -> PathBuf {
        self.cache_dir.join("session.json")
    }

    fn obtained_path(&self) -> PathBuf {
        self.cache_dir.join("obtained.json")
    }

    /// The remembered settings (none yet: the defaults).
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let path = self.settings_path();
        match fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("{} cannot be read as TOML", path.display())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Remembers the server's address.
    pub fn remember_server(&self, server: &Url) -> anyhow::Result<()> {
        let mut settings = self.settings()?;
        settings.server = Some(server.as_str().trim_end_matches('/').to_owned());
        let text = toml::to_string(&settings).context("writing the settings")?;
        // Not a secret, but nobody else's business either.
        private_dir(&self.config_dir)?;
        write_atomically(&self.settings_path(), text.as_bytes())
    }

    /// The CLI session, if there is one.
    pub fn session(&self) -> anyhow::Result<Option<Session>> {
        self.read(&self.session_path())
    }

    /// Stores the CLI session.
    pub fn save_session(&self, session: &Session) -> anyhow::Result<()> {
        self.write(&self.session_path(), session)
    }

    /// The cached key, if there is one.
    pub fn key(&self) -> anyhow::Result<Option<CachedKey>> {
        self.read(&self.key_path())
    }

    /// Caches a key.
    pub fn save_key(&self, key: &CachedKey) -> anyhow::Result<()> {
        self.write(&self.key_path(), key)
    }

    /// The keys this CLI obtained and that have not expired at `now`.
    pub fn obtained(&self, now: i64) -> anyhow::Result<Vec<Obtained>> {
        let all: Vec<Obtained> = self.read(&self.obtained_path())?.unwrap_or_default();
        Ok(all.into_iter().filter(|k| k.expires_at > now).collect())
    }

    /// Notes a key this CLI obtained.
    pub fn record_obtained(&self, key: Obtained, now: i64) -> anyhow::Result<()> {
        let mut all = self.obtained(now)?;
        all.push(key);
        self.write(&self.obtained_path(), &all)
    }

    /// Forgets that a key was obtained (it was revoked).
    pub fn forget_obtained(&self, id: &str, now: i64) -> anyhow::Result<()> {
        let all: Vec<Obtained> = self
            .obtained(now)?
            .into_iter()
            .filter(|k| k.id != id)
            .collect();
        self.write(&self.obtained_path(), &all)
    }

    /// Forgets the cached key, if it is `id` (or whatever it is, for
    /// `None`).
    pub fn forget_key(&self, id: Option<&str>) -> anyhow::Result<()> {
        if let Some(id) = id
            && self.key()?.is_none_or(|key| key.id != id)
        {
            return Ok(());
        }
        remove(&self.key_path())
    }

    /// Forgets the session, the cached key and the obtained keys.
    pub fn forget_all(&self) -> anyhow::Result<()> {
        remove(&self.session_path())?;
        remove(&self.key_path())?;
        remove(&self.obtained_path())
    }

    /// Holds the renewal lock until the file is dropped: concurrent `key`
    /// calls wait here, and the first renews for all.
    pub fn lock(&self) -> anyhow::Result<File> {
        private_dir(&self.cache_dir)?;
        let path = self.cache_dir.join("lock");
        let file = private_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(file)
    }

    fn read<T: serde::de::DeserializeOwned>(&self, path: &Path) -> anyhow::Result<Option<T>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(error).with_context(|| format!("reading {}", path.display()));
            }
        };
        check_private(&self.cache_dir, true)?;
        check_private_file(&file, path)?;
        match serde_json::from_reader(io::BufReader::new(file)) {
            Ok(value) => Ok(Some(value)),
            // Unreadable (an older version's, a torn disk): as if absent;
            // the next write replaces it.
            Err(_) => Ok(None),
        }
    }

    fn write<T: Serialize>(&self, path: &Path, value: &T) -> anyhow::Result<()> {
        private_dir(&self.cache_dir)?;
        let json = serde_json::to_vec(value).context("serialising")?;
        write_atomically(path, &json)
    }
}

fn remove(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(unix)]
fn private_options() -> OpenOptions {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut options = OpenOptions::new();
    options.mode(0o600);
    options
}

#[cfg(not(unix))]
fn private_options() -> OpenOptions {
    OpenOptions::new()
}

/// Creates `dir` (0700) if need be, and refuses one that others can open.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut builder = fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            builder.mode(0o700);
        }
        match builder.create(dir) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => {
                return Err(error).with_context(|| format!("creating {}", dir.display()));
            }
        }
    }
    check_private(dir, false)
}

/// Refuses a directory that others can read or enter.
#[cfg(unix)]
fn check_private(dir: &Path, may_be_missing: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let metadata = match fs::metadata(dir) {
        Ok(metadata) => metadata,
        Err(error) if may_be_missing && error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).with_context(|| format!("reading {}", dir.display())),
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "refusing to use {}: others may open it (mode {mode:04o}), and it holds your session and keys; run `chmod 700 {}`",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path, _: bool) -> anyhow::Result<()> {
    Ok(())
}

/// Refuses a file that others can read.
#[cfg(unix)]
fn check_private_file(file: &File, path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "refusing to use {}: others may read it (mode {mode:04o}) and it holds a secret; delete it (then sign in again) or run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_file(_: &File, _: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// Writes `bytes` to `path` as a new 0600 file renamed over the old one, so
/// that a reader sees the old file or the new, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temporary = path.with_file_name(format!(
        ".{name}.{}.{:x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut file = private_options()
            .write(true)
            .create_new(true)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(root: &Path) -> Store {
        Store {
            config_dir: root.join("config").join(APP),
            cache_dir: root.join("cache").join(APP),
        }
    }

    fn temp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("oks-store-{:x}", rand::random::<u64>()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[cfg(unix)]
    #[test]
    fn secrets_are_written_private_and_a_wider_file_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = temp();
        let store = store(&root);
        let key = CachedKey {
            server: "http://127.0.0.1:1".into(),
            id: "svc".into(),
            key: SecretString::from("sk-test"),
            expires_at: 10,
            issued_at: 0,
        };
        store.save_key(&key).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.cache_dir), 0o700);
        assert_eq!(mode(&store.key_path()), 0o600);
        assert_eq!(store.key().unwrap().unwrap().key.expose_secret(), "sk-test");
        fs::set_permissions(store.key_path(), fs::Permissions::from_mode(0o644)).unwrap();
        let error = store.key().unwrap_err().to_string();
        assert!(error.contains("mode 0644"), "{error}");
        assert!(error.contains("chmod 600"), "{error}");
        fs::set_permissions(store.key_path(), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&store.cache_dir, fs::Permissions::from_mode(0o755)).unwrap();
        let error = store.key().unwrap_err().to_string();
        assert!(error.contains("chmod 700"), "{error}");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn the_server_is_remembered_in_toml() {
        let root = temp();
        let store = store(&root);
        assert_eq!(store.settings().unwrap().server, None);
        store
            .remember_server(&Url::parse("https://keys.example.com/").unwrap())
            .unwrap();
        let text = fs::read_to_string(store.settings_path()).unwrap();
        assert_eq!(text.trim(), "server = \"https://keys.example.com\"");
        assert_eq!(
            store.settings().unwrap().server.as_deref(),
            Some("https://keys.example.com")
        );
        fs::remove_dir_all(root).unwrap();
    }
}
