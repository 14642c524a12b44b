//! A store in a local directory (a path or `file://` URL): one file per object.
//!
//! Writes go to a hidden temporary file in the target directory, are fsynced, and are then
//! hard-linked into place, which fails atomically when the object exists; so a crash leaves
//! either no object or a complete one, and no object is ever replaced. File IO runs on the
//! blocking pool, never on the async runtime.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::{check_key, ObjectInfo, Store, StoreError};

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        cancel: &CancellationToken,
        f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Permanent {
                op: "local",
                key: String::new(),
                message: format!("worker failed: {e}"),
            })?
    }
}

fn write_new(path: &Path, key: &str, data: &[u8]) -> Result<(), StoreError> {
    let io = |e| StoreError::from_io("put", key, e);
    let dir = path.parent().expect("object path has a parent");
    fs::create_dir_all(dir).map_err(io)?;
    if path.exists() {
        return Err(StoreError::AlreadyExists {
            key: key.to_string(),
        });
    }
    let tmp = dir.join(format!(
        ".tmp-{}-{:016x}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("object"),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    result.map_err(io)?;
    // Make the new directory entry durable.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn walk(root: &Path, dir: &Path, prefix: &str, out: &mut Vec<ObjectInfo>) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue; // temporary files of writes in progress
        }
        let path = entry.path();
        // An object removed while the directory is read (a lock released, a claim
        // withdrawn) is not listed, rather than failing the listing.
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let ft = match entry.file_type() {
            Ok(ft) => ft,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        let rel = path
            .strip_prefix(root)
            .expect("walk stays under root")
            .to_string_lossy()
            .replace('\\', "/");
        if ft.is_dir() {
            if rel.starts_with(prefix) || prefix.starts_with(&format!("{rel}/")) {
                walk(root, &path, prefix, out)?;
            }
        } else if ft.is_file() && rel.starts_with(prefix) {
            let size = match entry.metadata() {
                Ok(m) => m.len(),
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            out.push(ObjectInfo { key: rel, size });
        }
    }
    Ok(())
}

#[async_trait]
impl Store for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn put(
        &self,
        key: &str,
        data: Bytes,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let key = key.to_string();
        self.blocking(cancel, move || write_new(&path, &key, &data))
            .await
    }

    async fn get(&self, key: &str, cancel: &CancellationToken) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        let key = key.to_string();
        self.blocking(cancel, move || {
            fs::read(&path)
                .map(Bytes::from)
                .map_err(|e| StoreError::from_io("get", &key, e))
        })
        .await
    }

    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
        cancel: &CancellationToken,
    ) -> Result<Bytes, StoreError> {
        let path = self.path(key)?;
        let key = key.to_string();
        self.blocking(cancel, move || {
            let io = |e| StoreError::from_io("get_range", &key, e);
            let mut f = File::open(&path).map_err(io)?;
            f.seek(SeekFrom::Start(offset)).map_err(io)?;
            let mut buf = Vec::with_capacity(length.min(1 << 30) as usize);
            f.take(length).read_to_end(&mut buf).map_err(io)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn head(&self, key: &str, cancel: &CancellationToken) -> Result<Option<u64>, StoreError> {
        let path = self.path(key)?;
        let key = key.to_string();
        self.blocking(cancel, move || match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::from_io("head", &key, e)),
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        self.blocking(cancel, move || {
            let mut out = Vec::new();
            walk(&root, &root, &prefix, &mut out)
                .map_err(|e| StoreError::from_io("list", &prefix, e))?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str, cancel: &CancellationToken) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let key = key.to_string();
        self.blocking(cancel, move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::from_io("delete", &key, e)),
        })
        .await
    }
}
