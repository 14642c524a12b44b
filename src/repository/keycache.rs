//! The unlocked-key cache (opt-in: `LIFEBOAT_KEY_CACHE=SECONDS`): after a password unlocked a
//! key with Argon2, the master secret is kept for a short time in a file of the user's own
//! (mode 0600 in a 0700 directory, normally `$XDG_RUNTIME_DIR/lifeboat/keys/`, a tmpfs that
//! goes at logout), sealed under a fast key derivation of the same password
//! ([`Keys::seal_for_cache`]), so a series of commands pays Argon2 once.
//!
//! Takes a directory, a lifetime, the repository's id, its key objects' names and the
//! password; gives the keys, or nothing (then the caller runs Argon2 as without a cache).
//! An entry is bound to its repository, its key object and its expiry (all authenticated):
//! an expired, altered or foreign entry, or one whose key object was removed
//! (`repo key remove`), is deleted and ignored. Must not be needed: any failure here is a
//! debug line and a fall-back, never an error. Blocking file IO: call it off the runtime.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::crypto::Keys;

/// Where and for how long unlocked keys are kept.
#[derive(Debug, Clone)]
pub struct KeyCache {
    pub dir: PathBuf,
    pub lifetime: Duration,
}

/// One cached unlock, as its file holds it (local state of this host, not part of the
/// repository format).
#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    /// The key object the password unlocked (`keys/…`).
    key_object: String,
    /// Unix seconds after which the entry is ignored and removed.
    expires_at: u64,
    /// [`Keys::seal_for_cache`] of the master secret, hex.
    sealed: String,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn context(repo_id: &str, key_object: &str, expires_at: u64) -> Vec<u8> {
    format!("{repo_id}|{key_object}|{expires_at}").into_bytes()
}

impl KeyCache {
    /// The entry's file: named by a hash of the repository id, never by the password.
    fn path(&self, repo_id: &str) -> PathBuf {
        let name = blake3::hash(repo_id.as_bytes()).to_hex();
        self.dir.join(format!("{}.json", &name[..32]))
    }

    /// The cached keys of `repo_id` for `password`, with the key object they came from, if a
    /// live entry exists whose key object is still among `key_objects`.
    pub fn load(
        &self,
        repo_id: &str,
        password: &[u8],
        key_objects: &[String],
    ) -> Option<(String, Keys)> {
        let path = self.path(repo_id);
        let text = std::fs::read(&path).ok()?;
        let drop = |why: &str| {
            tracing::debug!("unlocked-key cache entry ignored and removed: {why}");
            let _ = std::fs::remove_file(&path);
            None
        };
        let Ok(e) = serde_json::from_slice::<Entry>(&text) else {
            return drop("unreadable");
        };
        if e.expires_at <= now() {
            return drop("expired");
        }
        if !key_objects.contains(&e.key_object) {
            return drop("its key was removed from the repository");
        }
        let Ok(sealed) = hex::decode(&e.sealed) else {
            return drop("unreadable");
        };
        match Keys::open_from_cache(
            password,
            &context(repo_id, &e.key_object, e.expires_at),
            &sealed,
        ) {
            Ok(keys) => Some((e.key_object, keys)),
            // Another password (the entry stays for its own) or an altered entry.
            Err(_) => {
                tracing::debug!("unlocked-key cache entry does not open with this password");
                None
            }
        }
    }

    /// Keeps `keys` (unlocked from `key_object` with `password`) for the cache's lifetime.
    pub fn store(&self, repo_id: &str, key_object: &str, password: &[u8], keys: &Keys) {
        if let Err(e) = self.write(repo_id, key_object, password, keys) {
            tracing::debug!("unlocked-key cache not written: {e}");
        }
    }

    fn write(
        &self,
        repo_id: &str,
        key_object: &str,
        password: &[u8],
        keys: &Keys,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        // A directory that exists already must be the user's alone too.
        let meta = std::fs::metadata(&self.dir)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(std::io::Error::other(format!(
                "{} is readable by others",
                self.dir.display()
            )));
        }
        let expires_at = now() + self.lifetime.as_secs().max(1);
        let entry = Entry {
            key_object: key_object.to_string(),
            expires_at,
            sealed: hex::encode(
                keys.seal_for_cache(password, &context(repo_id, key_object, expires_at)),
            ),
        };
        let path = self.path(repo_id);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(&entry).expect("serialises"))?;
        drop(f);
        std::fs::rename(&tmp, &path)
    }
}

/// The default directory: `$XDG_RUNTIME_DIR/lifeboat/keys`, else a per-user directory under
/// the system's temporary directory.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => Path::new(&d).join("lifeboat").join("keys"),
        None => std::env::temp_dir()
            // SAFETY: getuid has no preconditions and cannot fail.
            .join(format!("lifeboat-{}", unsafe { libc::getuid() }))
            .join("keys"),
    }
}
