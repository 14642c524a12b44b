//! The repository: an encrypted, deduplicating, write-once object layout on a [`Store`].
//!
//! Takes a store and a password; gives sealed blobs in packs, index objects, snapshots and
//! key management (see `schema/FORMAT.md`). Every object read is verified against its name
//! (BLAKE3 of its bytes) and every blob against its keyed content id; damage is an error that
//! names the object, never wrong data. Writes follow packs → index → snapshot, so a crash at
//! any instant leaves only unreferenced packs behind. Must not overwrite any object, and must
//! not do CPU-heavy work (hashing, sealing, parsing) on the async runtime.

mod check;
mod index;
mod keycache;
mod lock;
mod prune;
mod repair;
mod writer;

pub use check::{CheckOptions, CheckReport};
pub use index::{BlobLocation, Index};
pub use keycache::{default_dir as default_key_cache_dir, KeyCache};
pub use lock::{
    backoff_delay, lock_state, LockFile, LockGuard, LockKind, LockState, UnlockReport,
    LOCK_BACKOFF_FIRST, LOCK_BACKOFF_MAX, LOCK_REFRESH, LOCK_TTL,
};
pub use prune::{PruneOptions, PruneReport, DEFAULT_GRACE as DEFAULT_PRUNE_GRACE};
pub use repair::{RepairOptions, RepairReport};
pub use writer::{BlobWriter, Claims, WriterStats};

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::crypto::{CryptoError, Keys, Role, Wrapped};
use crate::format::{
    decode_map, object_hash, BlobId, BlobKind, BlockRef, KdfParams, KeyFile, KeyId, RepoConfig,
    Snapshot, SnapshotId, FORMAT_VERSION, MAP_SEGMENT_ENTRIES,
};
use crate::store::{Store, StoreError};

/// Parallel small-object fetches (index, snapshots).
const METADATA_CONCURRENCY: usize = 8;
/// Bound on a decompressed metadata object.
const MAX_METADATA_BYTES: usize = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no lifeboat repository at {location} (no `config` object); create one with `lifeboat repo init`")]
    NotARepository { location: String },
    #[error("{location} already holds a lifeboat repository; `repo init` never overwrites one (choose another location or prefix)")]
    AlreadyInitialized { location: String },
    #[error("{location} is not a lifeboat repository: its `config` object is another tool's or damaged ({reason}); check --repo")]
    Foreign { location: String, reason: String },
    #[error("{location} holds objects but no lifeboat `config`: refusing to initialise a repository over foreign data (choose an empty location or prefix)")]
    NotEmpty { location: String },
    #[error("the password does not open any key of the repository at {location}; check LIFEBOAT_PASSWORD or --password-file{}", damaged_keys(damaged))]
    WrongPassword {
        location: String,
        /// Key objects that could not be read (damaged): the password may have been one of
        /// them.
        damaged: Vec<String>,
    },
    #[error("repository at {location} has format version {found}; this lifeboat reads version {supported}: upgrade lifeboat")]
    UnsupportedVersion {
        location: String,
        found: u32,
        supported: u32,
    },
    #[error("corrupt object `{object}`: {reason}")]
    Corrupt { object: String, reason: String },
    #[error("no snapshot matches `{spec}`; `lifeboat snapshots` lists them (use an id, a unique id prefix, or NAME:latest)")]
    SnapshotNotFound { spec: String },
    #[error("`{spec}` matches {count} snapshots; give more digits of the id")]
    AmbiguousSnapshot { spec: String, count: usize },
    #[error("blob {id} is referenced but not in any index (object `{referenced_by}`); run `lifeboat repo check`")]
    BlobMissing { id: BlobId, referenced_by: String },
    #[error("no key `{spec}` in this repository; `lifeboat repo key list` shows them")]
    KeyNotFound { spec: String },
    #[error("refusing to remove the last key: the repository would become unreadable")]
    LastKey,
    #[error("invalid repository settings: {0}")]
    BadSettings(String),
    #[error("local cache {path}: {source}")]
    Cache {
        path: String,
        source: std::io::Error,
    },
    #[error("internal worker failed: {0}")]
    Worker(String),
    #[error("the repository is locked: {holder}; try again when it is done (a lock of a process that died expires by itself)")]
    Locked { holder: String },
}

fn damaged_keys(damaged: &[String]) -> String {
    if damaged.is_empty() {
        return String::new();
    }
    format!(
        " ({} key object(s) are damaged and were skipped: {}; if the password was theirs, open the repository with another password and add it again, and run `lifeboat repo check`)",
        damaged.len(),
        damaged.join("; ")
    )
}

impl RepoError {
    /// Worth retrying later (network, throttling); everything else needs a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            RepoError::Store(e) => e.is_retryable(),
            RepoError::Locked { .. } => true,
            _ => false,
        }
    }

    fn corrupt(object: impl Into<String>, reason: impl std::fmt::Display) -> RepoError {
        RepoError::Corrupt {
            object: object.into(),
            reason: reason.to_string(),
        }
    }
}

/// Runs CPU-bound work on the blocking pool.
pub(crate) async fn cpu<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RepoError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RepoError::Worker(e.to_string()))
}

/// Settings chosen once at `repo init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub chunk_size: u32,
    pub pack_size: u32,
    pub compression_level: i32,
    pub kdf: KdfParams,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            // 512 KiB: measured against 256 KiB and 1 MiB in benches/README.md (full-backup speed,
            // bytes an incremental adds, index entries per TiB).
            chunk_size: 512 << 10,
            pack_size: 16 << 20,
            compression_level: 1,
            kdf: KdfParams::DEFAULT,
        }
    }
}

impl InitOptions {
    pub fn validate(&self) -> Result<(), RepoError> {
        let c = self.chunk_size;
        if !c.is_power_of_two() || !(64 << 10..=8 << 20).contains(&c) {
            return Err(RepoError::BadSettings(format!(
                "chunk size {c} must be a power of two between 64 KiB and 8 MiB"
            )));
        }
        if !(1 << 20..=1 << 30).contains(&self.pack_size) {
            return Err(RepoError::BadSettings(format!(
                "pack size {} must be between 1 MiB and 1 GiB",
                self.pack_size
            )));
        }
        if !(0..=19).contains(&self.compression_level) {
            return Err(RepoError::BadSettings(format!(
                "compression level {} must be 0 (off) to 19",
                self.compression_level
            )));
        }
        Ok(())
    }
}

/// One key object, as `repo key list` shows it.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct KeyInfo {
    pub id: KeyId,
    #[serde(serialize_with = "crate::util::serialize_timestamp")]
    #[schemars(with = "String")]
    pub created_at: OffsetDateTime,
    /// The host the key was added on.
    pub hostname: String,
    /// The key this command opened the repository with.
    pub current: bool,
    /// Why the key object cannot be read, when it is damaged (it opens nothing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
}

/// An open repository. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Repository {
    store: Arc<dyn Store>,
    config: RepoConfig,
    keys: Arc<Keys>,
    key_id: KeyId,
    cache: Option<PathBuf>,
    cancel: CancellationToken,
    /// How long [`Repository::lock`] waits for a conflicting lock to go (zero: fail at once).
    lock_wait: std::time::Duration,
}

/// A time as RFC 3339 text, for listings and messages: UTC to the millisecond
/// ([`crate::util::timestamp`]).
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    crate::util::timestamp(t)
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

impl Repository {
    /// Creates a repository in an empty location.
    pub async fn init(
        store: Arc<dyn Store>,
        password: &[u8],
        options: &InitOptions,
        cancel: CancellationToken,
    ) -> Result<Repository, RepoError> {
        options.validate()?;
        check_password(password)?;
        let location = store.location();
        if store.head("config", &cancel).await?.is_some() {
            return Err(RepoError::AlreadyInitialized { location });
        }
        if !store.list("", &cancel).await?.is_empty() {
            return Err(RepoError::NotEmpty { location });
        }
        let keys = Keys::generate();
        let mut config = RepoConfig {
            version: FORMAT_VERSION,
            id: hex::encode(rand::random::<[u8; 16]>()),
            chunk_size: options.chunk_size,
            pack_size: options.pack_size,
            compression_level: options.compression_level,
            created: OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .expect("0 ns is valid"),
            mac: String::new(),
        };
        config.mac = keys.config_mac(&config.mac_input());
        // The key first: a config without a key would be a repository nobody can open.
        let kdf = options.kdf;
        let pw = password.to_vec();
        let (keys, wrapped) = cpu(move || {
            let w = keys.wrap(&pw, kdf);
            (keys, w)
        })
        .await?;
        let key_id = write_key(&store, wrapped.map_err(kdf_err)?, kdf, &cancel).await?;
        let json = serde_json::to_vec_pretty(&config).expect("config serialises");
        match store.put("config", Bytes::from(json), &cancel).await {
            Err(StoreError::AlreadyExists { .. }) => {
                return Err(RepoError::AlreadyInitialized { location })
            }
            r => r?,
        }
        tracing::info!(%location, id = %config.id, "repository initialised");
        Ok(Repository {
            store,
            config,
            keys: Arc::new(keys),
            key_id,
            cache: None,
            cancel,
            lock_wait: std::time::Duration::ZERO,
        })
    }

    /// Opens a repository with one of its passwords.
    pub async fn open(
        store: Arc<dyn Store>,
        password: &[u8],
        cache_root: Option<PathBuf>,
        cancel: CancellationToken,
    ) -> Result<Repository, RepoError> {
        Repository::open_with_key_cache(store, password, cache_root, None, cancel).await
    }

    /// [`Repository::open`], taking the keys from `key_cache` when it holds a live entry for
    /// this password (no Argon2), and keeping them there after an Argon2 unlock.
    pub async fn open_with_key_cache(
        store: Arc<dyn Store>,
        password: &[u8],
        cache_root: Option<PathBuf>,
        key_cache: Option<KeyCache>,
        cancel: CancellationToken,
    ) -> Result<Repository, RepoError> {
        let location = store.location();
        let raw = match store.get("config", &cancel).await {
            // Keys without a config: a damaged repository, not an empty place to init.
            Err(StoreError::NotFound { .. }) if !store.list("keys/", &cancel).await?.is_empty() => {
                return Err(RepoError::corrupt(
                    "config",
                    "missing, though the repository holds keys: put back a copy of it (it is small and never changes; every copy of this repository has the same); `repo init` never overwrites a repository",
                ))
            }
            Err(StoreError::NotFound { .. }) => return Err(RepoError::NotARepository { location }),
            r => r?,
        };
        // Read the version alone first, so a newer format gets a useful message.
        #[derive(serde::Deserialize)]
        struct VersionOnly {
            version: u32,
        }
        let v: VersionOnly = serde_json::from_slice(&raw).map_err(|e| RepoError::Foreign {
            location: location.clone(),
            reason: e.to_string(),
        })?;
        if v.version != FORMAT_VERSION {
            return Err(RepoError::UnsupportedVersion {
                location,
                found: v.version,
                supported: FORMAT_VERSION,
            });
        }
        let config: RepoConfig =
            serde_json::from_slice(&raw).map_err(|e| RepoError::corrupt("config", e))?;
        let key_objects = store.list("keys/", &cancel).await?;
        if key_objects.is_empty() {
            return Err(RepoError::corrupt(
                "keys/",
                "the repository has no key objects",
            ));
        }
        let mut found = None;
        if let Some(kc) = key_cache.clone() {
            let (id, pw) = (config.id.clone(), password.to_vec());
            let names: Vec<String> = key_objects.iter().map(|o| o.key.clone()).collect();
            if let Some((object, keys)) = cpu(move || kc.load(&id, &pw, &names)).await? {
                if let Ok(key_id) = object["keys/".len().min(object.len())..].parse::<KeyId>() {
                    tracing::debug!("unlocked with the key cache ({object}); Argon2 skipped");
                    found = Some((key_id, keys, object));
                }
            }
        }
        // One damaged key object must not lock out the passwords of the others.
        let mut damaged = Vec::new();
        for o in key_objects.iter().filter(|_| found.is_none()) {
            let (id, kf) = match read_key(&store, &o.key, &cancel).await {
                Ok(k) => k,
                Err(e @ RepoError::Corrupt { .. }) => {
                    tracing::warn!("skipping a damaged key: {e}");
                    damaged.push(e.to_string());
                    continue;
                }
                // Removed (`repo key remove`) between the listing and the read.
                Err(RepoError::Store(StoreError::NotFound { .. })) => continue,
                Err(e) => return Err(e),
            };
            let pw = password.to_vec();
            let kdf = kf.kdf;
            let w = Wrapped {
                salt: kf.salt,
                nonce: kf.nonce,
                wrapped: kf.wrapped,
            };
            match cpu(move || Keys::unwrap(&pw, kdf, &w)).await? {
                Ok(keys) => {
                    if let Some(kc) = &key_cache {
                        kc.store(&config.id, &o.key, password, &keys);
                        tracing::debug!("unlocked with Argon2; kept in the key cache");
                    }
                    found = Some((id, keys, o.key.clone()));
                    break;
                }
                Err(CryptoError::WrongPassword) => continue,
                Err(e) => {
                    let e = RepoError::corrupt(o.key.clone(), e);
                    tracing::warn!("skipping a damaged key: {e}");
                    damaged.push(e.to_string());
                }
            }
        }
        let (key_id, keys, _) = found.ok_or_else(|| RepoError::WrongPassword {
            location: location.clone(),
            damaged,
        })?;
        if keys.config_mac(&config.mac_input()) != config.mac {
            return Err(RepoError::corrupt(
                "config",
                "its MAC does not match: it was altered, or it belongs to another repository than the keys",
            ));
        }
        let cache = cache_root.map(|root| root.join(&config.id));
        Ok(Repository {
            store,
            config,
            keys: Arc::new(keys),
            key_id,
            cache,
            cancel,
            lock_wait: std::time::Duration::ZERO,
        })
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }
    pub fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }
    /// Makes [`Repository::lock`] wait up to `wait` for a conflicting lock to go (with
    /// jittered exponential backoff) before it fails; zero (the default) fails at once.
    pub fn with_lock_wait(mut self, wait: std::time::Duration) -> Self {
        self.lock_wait = wait;
        self
    }
    pub fn lock_wait(&self) -> std::time::Duration {
        self.lock_wait
    }
    pub fn location(&self) -> String {
        self.store.location()
    }

    // ----- keys ---------------------------------------------------------------------------

    /// Adds a password: a new key object wrapping the same master secret. No data is re-encrypted.
    pub async fn add_key(&self, password: &[u8], kdf: KdfParams) -> Result<KeyId, RepoError> {
        check_password(password)?;
        let keys = self.keys.clone();
        let pw = password.to_vec();
        let wrapped = cpu(move || keys.wrap(&pw, kdf)).await?.map_err(kdf_err)?;
        write_key(&self.store, wrapped, kdf, &self.cancel).await
    }

    /// Every key object; a damaged one is listed as such (it opens nothing) rather than
    /// failing the listing.
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>, RepoError> {
        let mut out = Vec::new();
        for o in self.store.list("keys/", &self.cancel).await? {
            match read_key(&self.store, &o.key, &self.cancel).await {
                Ok((id, kf)) => out.push(KeyInfo {
                    id,
                    created_at: kf.created,
                    hostname: kf.hostname,
                    current: id == self.key_id,
                    damaged: None,
                }),
                Err(e @ RepoError::Corrupt { .. }) => {
                    let Ok(id) = o.key["keys/".len()..].parse::<KeyId>() else {
                        tracing::warn!("{e}");
                        continue;
                    };
                    out.push(KeyInfo {
                        id,
                        created_at: OffsetDateTime::UNIX_EPOCH,
                        hostname: String::new(),
                        current: false,
                        damaged: Some(e.to_string()),
                    })
                }
                // Removed between the listing and the read: not a key any more.
                Err(RepoError::Store(StoreError::NotFound { .. })) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Removes a password's key object (by id or unique id prefix). The last key stays.
    ///
    /// Key changes are serialised by an exclusive repository lock, and the keys are listed
    /// again under it: two removals at once can never both pass the "last key" check (one
    /// of them is refused as locked, retryable), so the repository always keeps a key.
    pub async fn remove_key(&self, spec: &str) -> Result<KeyId, RepoError> {
        let lock = self.lock(LockKind::Exclusive, "key remove").await?;
        let result = self.remove_key_locked(spec).await;
        lock.release().await?;
        result
    }

    async fn remove_key_locked(&self, spec: &str) -> Result<KeyId, RepoError> {
        let keys = self.list_keys().await?;
        let matches: Vec<&KeyInfo> = keys
            .iter()
            .filter(|k| k.id.to_hex().starts_with(spec))
            .collect();
        let k = match matches.as_slice() {
            [k] if !spec.is_empty() => *k,
            [] | [_] => return Err(RepoError::KeyNotFound { spec: spec.into() }),
            _ => {
                return Err(RepoError::BadSettings(format!(
                    "key prefix `{spec}` matches {} keys; give more digits",
                    matches.len()
                )))
            }
        };
        // Only keys that open count: a damaged key object is no fallback.
        if keys
            .iter()
            .filter(|o| o.id != k.id && o.damaged.is_none())
            .count()
            == 0
        {
            return Err(RepoError::LastKey);
        }
        self.store.delete(&k.id.key(), &self.cancel).await?;
        Ok(k.id)
    }

    // ----- verified reads -----------------------------------------------------------------

    /// Reads a content-addressed object (`index/…`, `snapshots/…`), from the local cache when
    /// it is there and `use_cache` allows, and checks its bytes against its name.
    pub(crate) async fn read_verified(
        &self,
        key: &str,
        hash: &[u8; 32],
        use_cache: bool,
    ) -> Result<Bytes, RepoError> {
        let cached = self
            .cache
            .as_ref()
            .filter(|_| use_cache)
            .map(|c| c.join(key));
        if let Some(path) = &cached {
            if let Ok(bytes) = tokio::fs::read(path).await {
                if object_hash(&bytes) == *hash {
                    return Ok(Bytes::from(bytes));
                }
                tracing::warn!(path = %path.display(), "damaged cache entry; fetching it again");
                let _ = tokio::fs::remove_file(path).await;
            }
        }
        let bytes = self.store.get(key, &self.cancel).await?;
        let data = bytes.clone();
        if cpu(move || object_hash(&data)).await? != *hash {
            return Err(RepoError::corrupt(
                key,
                "content does not match its name (BLAKE3)",
            ));
        }
        if let Some(path) = cached {
            if let Err(e) = write_cache(&path, &bytes).await {
                tracing::debug!(path = %path.display(), error = %e, "could not cache object");
            }
        }
        Ok(bytes)
    }

    /// Reads and unseals a JSON metadata object (through the local cache).
    pub(crate) async fn read_sealed_json<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        key: &str,
        hash: &[u8; 32],
        role: Role,
    ) -> Result<T, RepoError> {
        self.read_sealed_json_from(key, hash, role, true).await
    }

    /// Reads and unseals a JSON metadata object; `use_cache: false` reads the store itself,
    /// as `repo check` must.
    pub(crate) async fn read_sealed_json_from<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        key: &str,
        hash: &[u8; 32],
        role: Role,
        use_cache: bool,
    ) -> Result<T, RepoError> {
        let bytes = self.read_verified(key, hash, use_cache).await?;
        let keys = self.keys.clone();
        let k = key.to_string();
        cpu(move || {
            let plain = keys
                .open(role, &bytes, MAX_METADATA_BYTES)
                .map_err(|e| RepoError::corrupt(k.clone(), e))?;
            serde_json::from_slice(&plain)
                .map_err(|e| RepoError::corrupt(k, format!("unexpected content: {e}")))
        })
        .await?
    }

    /// Seals and writes a JSON metadata object under `<dir>/<hash>`; returns the hash.
    pub(crate) async fn write_sealed_json<T: serde::Serialize>(
        &self,
        dir: &str,
        value: &T,
        role: Role,
    ) -> Result<([u8; 32], u64), RepoError> {
        let json = serde_json::to_vec(value).expect("metadata serialises");
        let keys = self.keys.clone();
        let level = self.config.compression_level.max(1);
        let (sealed, hash) = cpu(move || {
            let s = keys.seal(role, &json, level);
            let h = object_hash(&s);
            (s, h)
        })
        .await?;
        let len = sealed.len() as u64;
        let key = format!("{dir}/{}", hex::encode(hash));
        match self
            .store
            .put(&key, Bytes::from(sealed), &self.cancel)
            .await
        {
            Ok(()) | Err(StoreError::AlreadyExists { .. }) => Ok((hash, len)),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads one blob through the index and verifies it.
    pub async fn read_blob(
        &self,
        index: &Index,
        kind: BlobKind,
        id: &BlobId,
    ) -> Result<Vec<u8>, RepoError> {
        let loc = index.get(id).ok_or_else(|| RepoError::BlobMissing {
            id: *id,
            referenced_by: "(read)".into(),
        })?;
        let pack = index.pack_id(loc.pack);
        let bytes = self
            .store
            .get_range(&pack.key(), loc.offset, loc.length as u64, &self.cancel)
            .await?;
        let keys = self.keys.clone();
        let id = *id;
        let raw = loc.raw_length as usize;
        cpu(move || {
            keys.open_blob(kind, &id, &bytes, raw)
                .map_err(|e| RepoError::corrupt(pack.key(), format!("blob {id}: {e}")))
        })
        .await?
    }

    /// One block-map segment by its blob id, read, verified and decoded.
    pub async fn read_map_blob(
        &self,
        index: &Index,
        id: &BlobId,
    ) -> Result<Vec<BlockRef>, RepoError> {
        let bytes = self.read_blob(index, BlobKind::Map, id).await?;
        decode_map(&bytes).map_err(|reason| RepoError::Corrupt {
            object: format!("block-map segment {id}"),
            reason,
        })
    }

    /// Segment `seg` of `snap`'s block map (blocks from `seg * MAP_SEGMENT_ENTRIES` on),
    /// checked to hold exactly the entries the snapshot's size gives it. Empty past the end
    /// of the map, so two snapshots of different sizes can be compared segment by segment.
    pub async fn read_map_segment(
        &self,
        index: &Index,
        snap: &Snapshot,
        seg: usize,
    ) -> Result<Vec<BlockRef>, RepoError> {
        let Some(id) = snap.map.get(seg) else {
            return Ok(Vec::new());
        };
        let entries = self.read_map_blob(index, id).await?;
        let first = seg as u64 * MAP_SEGMENT_ENTRIES as u64;
        let want = snap
            .blocks()
            .saturating_sub(first)
            .min(MAP_SEGMENT_ENTRIES as u64) as usize;
        if entries.len() != want {
            return Err(RepoError::Corrupt {
                object: format!("block-map segment {seg} (blob {id})"),
                reason: format!("{} entries, expected {want}", entries.len()),
            });
        }
        Ok(entries)
    }

    // ----- snapshots ----------------------------------------------------------------------

    pub async fn write_snapshot(&self, snap: &Snapshot) -> Result<(SnapshotId, u64), RepoError> {
        let (hash, len) = self
            .write_sealed_json("snapshots", snap, Role::Snapshot)
            .await?;
        Ok((SnapshotId(hash), len))
    }

    pub async fn load_snapshot(&self, id: &SnapshotId) -> Result<Snapshot, RepoError> {
        self.read_sealed_json(&id.key(), &id.0, Role::Snapshot)
            .await
    }

    /// Every readable snapshot, oldest first. A damaged snapshot object is skipped with a
    /// warning (`repo check` reports it, `repo repair` removes it), so one damaged old
    /// snapshot does not stop listings, `NAME:latest` or new backups.
    pub async fn list_snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>, RepoError> {
        let (found, damaged) = self.load_all_readable("snapshots", Role::Snapshot).await?;
        for e in &damaged {
            tracing::warn!("skipping a damaged snapshot: {e}; run `lifeboat repo check`");
        }
        Ok(sorted_snapshots(found))
    }

    /// Every snapshot, oldest first, failing on the first damaged one: for prune, which
    /// must know everything that is referenced before it deletes anything.
    pub(crate) async fn all_snapshots_strict(
        &self,
    ) -> Result<Vec<(SnapshotId, Snapshot)>, RepoError> {
        let found = self.load_all("snapshots", Role::Snapshot).await?;
        Ok(sorted_snapshots(found))
    }

    pub async fn snapshot_ids(&self) -> Result<Vec<SnapshotId>, RepoError> {
        let listed = self.store.list("snapshots/", &self.cancel).await?;
        listed
            .iter()
            .map(|o| {
                o.key["snapshots/".len()..].parse().map_err(|e| {
                    RepoError::corrupt(o.key.clone(), format!("unexpected object name: {e}"))
                })
            })
            .collect()
    }

    /// The newest snapshot of volume `name`, if any.
    pub async fn latest_of(&self, name: &str) -> Result<Option<(SnapshotId, Snapshot)>, RepoError> {
        Ok(self
            .list_snapshots()
            .await?
            .into_iter()
            .rfind(|(_, s)| s.name == name))
    }

    /// Resolves `SPEC`: a full id, a unique id prefix, or `NAME:latest`.
    pub async fn resolve_snapshot(&self, spec: &str) -> Result<(SnapshotId, Snapshot), RepoError> {
        let not_found = || RepoError::SnapshotNotFound { spec: spec.into() };
        if let Some(name) = spec.strip_suffix(":latest") {
            return self.latest_of(name).await?.ok_or_else(not_found);
        }
        if spec.is_empty() || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(not_found());
        }
        let spec_l = spec.to_ascii_lowercase();
        let ids: Vec<SnapshotId> = self
            .snapshot_ids()
            .await?
            .into_iter()
            .filter(|id| id.to_hex().starts_with(&spec_l))
            .collect();
        match ids.as_slice() {
            [id] => Ok((*id, self.load_snapshot(id).await?)),
            [] => Err(not_found()),
            many => Err(RepoError::AmbiguousSnapshot {
                spec: spec.into(),
                count: many.len(),
            }),
        }
    }

    // ----- index --------------------------------------------------------------------------

    /// Loads every readable index object (from the local cache where it can) into memory. A
    /// damaged index object is skipped with a warning: a backup then stores its blobs again,
    /// a restore that needs one of them says which, and `repo repair` rebuilds the index from
    /// the packs. (Prune reads the index strictly: it must never take a pack for unindexed.)
    pub async fn load_index(&self) -> Result<Index, RepoError> {
        let mut attempt = 0;
        let (found, damaged) = loop {
            match self.load_all_readable("index", Role::Index).await {
                // Listed, then deleted by a prune that replaced the index (which a reader
                // holding no lock can see): the new index is complete, list it again.
                Err(RepoError::Store(StoreError::NotFound { .. })) if attempt < 3 => attempt += 1,
                r => break r?,
            }
        };
        for e in &damaged {
            tracing::warn!("skipping a damaged index object: {e}; run `lifeboat repo check`");
        }
        let files: Vec<crate::format::IndexFile> = found.into_iter().map(|(_, f)| f).collect();
        cpu(move || Index::from_files(files)).await
    }

    /// Every sealed JSON object under `dir/` (each named by the BLAKE3 of its bytes), read and
    /// verified several at a time, through the local cache; in no particular order.
    pub(crate) async fn load_all<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        dir: &str,
        role: Role,
    ) -> Result<Vec<([u8; 32], T)>, RepoError> {
        let listed = self.store.list(&format!("{dir}/"), &self.cancel).await?;
        futures::stream::iter(listed)
            .map(|o| async move {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(&o.key[dir.len() + 1..], &mut hash).map_err(|e| {
                    RepoError::corrupt(o.key.clone(), format!("unexpected object name: {e}"))
                })?;
                let value = self.read_sealed_json(&o.key, &hash, role).await?;
                Ok((hash, value))
            })
            .buffer_unordered(METADATA_CONCURRENCY)
            .try_collect()
            .await
    }

    /// [`Repository::load_index`] without the packs that the store does not hold (lost or
    /// deleted): for a backup that must store a blob again rather than trust an index entry
    /// whose data is gone (`volume backup --full`, the way to recover lost packs).
    pub async fn load_index_of_stored_packs(&self) -> Result<Index, RepoError> {
        let (found, damaged) = self.load_all_readable("index", Role::Index).await?;
        for e in &damaged {
            tracing::warn!("skipping a damaged index object: {e}; run `lifeboat repo check`");
        }
        let stored: std::collections::HashSet<String> = self
            .store
            .list("data/", &self.cancel)
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        let mut lost = 0;
        let files: Vec<crate::format::IndexFile> = found
            .into_iter()
            .map(|(_, mut f): ([u8; 32], crate::format::IndexFile)| {
                let before = f.packs.len();
                f.packs.retain(|p| stored.contains(&p.id.key()));
                lost += before - f.packs.len();
                f
            })
            .collect();
        if lost > 0 {
            tracing::warn!("{lost} pack(s) listed in the index are missing from the store: their blocks are stored again");
        }
        cpu(move || Index::from_files(files)).await
    }

    /// [`Repository::load_all`], but an object that fails verification (damaged, or not
    /// named as lifeboat names objects) is set aside with its error instead of failing the
    /// whole read. Store errors (unreachable, throttled) still fail it.
    pub(crate) async fn load_all_readable<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        dir: &str,
        role: Role,
    ) -> Result<(Vec<([u8; 32], T)>, Vec<RepoError>), RepoError> {
        let listed = self.store.list(&format!("{dir}/"), &self.cancel).await?;
        let mut reads = futures::stream::iter(listed)
            .map(|o| async move {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(&o.key[dir.len() + 1..], &mut hash).map_err(|e| {
                    RepoError::corrupt(o.key.clone(), format!("unexpected object name: {e}"))
                })?;
                let value = self.read_sealed_json(&o.key, &hash, role).await?;
                Ok::<_, RepoError>((hash, value))
            })
            .buffer_unordered(METADATA_CONCURRENCY);
        let (mut found, mut damaged) = (Vec::new(), Vec::new());
        while let Some(r) = reads.next().await {
            match r {
                Ok(v) => found.push(v),
                Err(e @ RepoError::Corrupt { .. }) => damaged.push(e),
                Err(e) => return Err(e),
            }
        }
        Ok((found, damaged))
    }

    /// A writer that packs blobs and uploads packs in the background.
    pub fn writer(self: &Arc<Self>, max_uploads: usize) -> BlobWriter {
        BlobWriter::new(self.clone(), max_uploads)
    }
}

fn sorted_snapshots(found: Vec<([u8; 32], Snapshot)>) -> Vec<(SnapshotId, Snapshot)> {
    let mut all: Vec<(SnapshotId, Snapshot)> =
        found.into_iter().map(|(h, s)| (SnapshotId(h), s)).collect();
    all.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
    all
}

/// A new password may not be empty (an empty secret is what a missing one reads as).
fn check_password(password: &[u8]) -> Result<(), RepoError> {
    if password.is_empty() {
        return Err(RepoError::BadSettings(
            "the password is empty; give a non-empty one (LIFEBOAT_PASSWORD or --password-file)"
                .into(),
        ));
    }
    Ok(())
}

fn kdf_err(e: CryptoError) -> RepoError {
    RepoError::BadSettings(format!("key derivation: {e}"))
}

async fn write_key(
    store: &Arc<dyn Store>,
    w: Wrapped,
    kdf: KdfParams,
    cancel: &CancellationToken,
) -> Result<KeyId, RepoError> {
    let kf = KeyFile {
        version: FORMAT_VERSION,
        created: OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("0 ns is valid"),
        hostname: hostname(),
        kdf,
        salt: w.salt,
        nonce: w.nonce,
        wrapped: w.wrapped,
    };
    let json = serde_json::to_vec_pretty(&kf).expect("key serialises");
    let id = KeyId(object_hash(&json));
    store.put(&id.key(), Bytes::from(json), cancel).await?;
    Ok(id)
}

async fn read_key(
    store: &Arc<dyn Store>,
    key: &str,
    cancel: &CancellationToken,
) -> Result<(KeyId, KeyFile), RepoError> {
    let id: KeyId = key["keys/".len()..]
        .parse()
        .map_err(|e| RepoError::corrupt(key, format!("unexpected object name: {e}")))?;
    let bytes = store.get(key, cancel).await?;
    if object_hash(&bytes) != id.0 {
        return Err(RepoError::corrupt(
            key,
            "content does not match its name (BLAKE3)",
        ));
    }
    let kf: KeyFile = serde_json::from_slice(&bytes).map_err(|e| RepoError::corrupt(key, e))?;
    kf.kdf
        .check_bounds()
        .map_err(|e| RepoError::corrupt(key, e))?;
    Ok((id, kf))
}

async fn write_cache(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let tmp = path.with_extension(format!("tmp{:08x}", rand::random::<u32>()));
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await
}
