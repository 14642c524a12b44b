//! Object storage: the one place that talks to disks and buckets.
//!
//! Takes object keys (`data/ab/…`, `snapshots/…`) and opaque bytes; gives them back, ranged
//! reads included. A [`Store`] must not interpret content, retry on its own (that is the
//! [`retry::Retry`] decorator's job) or replace an existing object: `put` is create-only.
//! Every call takes a cancellation token; remote implementations also bound each call with a
//! timeout. Implementations: [`local::LocalStore`], [`s3::S3Store`], [`memory::MemoryStore`],
//! plus the decorators [`retry::Retry`] and [`fault::Faulty`].

pub mod fault;
pub mod local;
pub mod memory;
pub mod retry;
pub mod s3;

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

/// What went wrong talking to a store. [`StoreError::is_retryable`] tells transient faults
/// (throttling, 5xx, timeouts, dropped connections) from permanent ones.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object `{key}` does not exist")]
    NotFound { key: String },
    #[error("object `{key}` already exists and objects are never overwritten")]
    AlreadyExists { key: String },
    #[error("{op} `{key}` timed out after {after:?}")]
    Timeout {
        op: &'static str,
        key: String,
        after: Duration,
    },
    #[error("cancelled")]
    Cancelled,
    #[error("{op} `{key}` failed (transient): {message}")]
    Transient {
        op: &'static str,
        key: String,
        message: String,
    },
    #[error("{op} `{key}` failed: {message}")]
    Permanent {
        op: &'static str,
        key: String,
        message: String,
    },
    #[error("{op} `{key}`: no space left on the storage device ({message}); free space or use another repository, nothing stored so far was changed")]
    NoSpace {
        op: &'static str,
        key: String,
        message: String,
    },
    #[error("invalid repository location `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    /// Missing or rejected credentials: a configuration error, not worth retrying.
    /// `problem` names the call (`get `config`: …`).
    #[error("{problem}; {fix}")]
    Credentials { problem: String, fix: &'static str },
    /// The store refused a write or delete that its reads allow: read-only credentials (a
    /// DR site's key), a read-only mount. A configuration error, not worth retrying.
    #[error("{op} `{key}`: the storage refused to write ({message}); these credentials can only read the repository: restore, standby, drill, `repo check` and listings work with them, but backups, forget, prune and key changes need credentials that can write")]
    WriteDenied {
        op: &'static str,
        key: String,
        message: String,
    },
}

impl StoreError {
    /// True for faults worth another attempt: timeouts and transient server or network errors.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Timeout { .. } | StoreError::Transient { .. }
        )
    }

    pub(crate) fn from_io(op: &'static str, key: &str, e: std::io::Error) -> StoreError {
        use std::io::ErrorKind;
        let key = key.to_string();
        match e.kind() {
            ErrorKind::NotFound => StoreError::NotFound { key },
            ErrorKind::AlreadyExists => StoreError::AlreadyExists { key },
            ErrorKind::Interrupted | ErrorKind::TimedOut | ErrorKind::WouldBlock => {
                StoreError::Transient {
                    op,
                    key,
                    message: e.to_string(),
                }
            }
            ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
                if matches!(op, "put" | "delete") =>
            {
                StoreError::WriteDenied {
                    op,
                    key,
                    message: e.to_string(),
                }
            }
            _ if e.raw_os_error() == Some(libc::ENOSPC)
                || e.raw_os_error() == Some(libc::EDQUOT) =>
            {
                StoreError::NoSpace {
                    op,
                    key,
                    message: e.to_string(),
                }
            }
            _ => StoreError::Permanent {
                op,
                key,
                message: e.to_string(),
            },
        }
    }
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

/// A flat key/value object store. Keys are `/`-separated relative paths of safe characters.
#[async_trait]
pub trait Store: Send + Sync + Debug {
    /// Where this store lives, for messages (`s3://bucket/prefix`, `/srv/repo`).
    fn location(&self) -> String;
    /// Creates `key`. Fails with [`StoreError::AlreadyExists`] when it exists and the store can
    /// tell; never replaces an object's content with different bytes.
    async fn put(
        &self,
        key: &str,
        data: Bytes,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError>;
    async fn get(&self, key: &str, cancel: &CancellationToken) -> Result<Bytes, StoreError>;
    /// `length` bytes from `offset`; fewer only when the object ends first.
    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
        cancel: &CancellationToken,
    ) -> Result<Bytes, StoreError>;
    /// The object's size, or `None` when it does not exist.
    async fn head(&self, key: &str, cancel: &CancellationToken) -> Result<Option<u64>, StoreError>;
    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<ObjectInfo>, StoreError>;
    /// Removes `key`; removing a missing object is not an error.
    async fn delete(&self, key: &str, cancel: &CancellationToken) -> Result<(), StoreError>;
}

/// Settings that apply to every backend opened from a URL.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Upper bound of one remote call (one PUT of a pack, one GET).
    pub op_timeout: Duration,
    /// Attempts of a retryable call before giving up.
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt (with jitter), capped at 30 s.
    pub base_delay: Duration,
    /// Objects at least this large go up as S3 multipart uploads.
    pub multipart_threshold: u64,
    /// Part size of multipart uploads (S3 requires at least 5 MiB except the last part).
    pub multipart_part_size: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            op_timeout: Duration::from_secs(120),
            max_attempts: 8,
            base_delay: Duration::from_millis(200),
            multipart_threshold: 64 << 20,
            multipart_part_size: 16 << 20,
        }
    }
}

/// Opens the store a repository URL names: a path or `file://` URL, `s3://bucket[/prefix]`,
/// or `memory://` (an empty in-memory store, for tests and demos). The store comes wrapped in
/// the retry decorator.
pub async fn open(url: &str, options: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, None, options).await
}

/// [`open`], an S3 store with these settings rather than the environment's.
pub async fn open_with(
    url: &str,
    s3: Option<s3::S3Settings>,
    options: &StoreOptions,
) -> Result<Arc<dyn Store>, StoreError> {
    let inner: Arc<dyn Store> = if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::BadUrl {
                url: url.to_string(),
                reason: "no bucket name; write s3://BUCKET/PREFIX".into(),
            });
        }
        let settings = s3.unwrap_or_else(s3::S3Settings::from_env);
        Arc::new(s3::S3Store::new(bucket, prefix, settings, options.clone()).await?)
    } else if url == "memory://" {
        Arc::new(memory::MemoryStore::new())
    } else if let Some(path) = url.strip_prefix("file://") {
        Arc::new(local::LocalStore::new(path))
    } else if url.contains("://") {
        return Err(StoreError::BadUrl {
            url: url.to_string(),
            reason: "unknown scheme; use a path, file://PATH or s3://BUCKET/PREFIX".into(),
        });
    } else if url.is_empty() {
        return Err(StoreError::BadUrl {
            url: url.to_string(),
            reason: "empty; pass --repo or set LIFEBOAT_REPOSITORY".into(),
        });
    } else {
        Arc::new(local::LocalStore::new(url))
    };
    Ok(Arc::new(retry::Retry::new(
        inner,
        options.max_attempts,
        options.base_delay,
    )))
}

/// Runs `fut` unless `cancel` fires first or `after` elapses.
pub(crate) async fn bounded<T, F>(
    op: &'static str,
    key: &str,
    after: Duration,
    cancel: &CancellationToken,
    fut: F,
) -> Result<T, StoreError>
where
    F: std::future::Future<Output = Result<T, StoreError>>,
{
    tokio::select! {
        _ = cancel.cancelled() => Err(StoreError::Cancelled),
        r = tokio::time::timeout(after, fut) => match r {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout { op, key: key.to_string(), after }),
        },
    }
}

pub(crate) fn check_key(key: &str) -> Result<(), StoreError> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Permanent {
            op: "check",
            key: key.to_string(),
            message: "invalid object key".into(),
        })
    }
}
