//! An in-memory store for tests and demos: a sorted map behind a mutex. Nothing persists.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::{check_key, ObjectInfo, Store, StoreError};

#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    objects: Arc<Mutex<BTreeMap<String, Bytes>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces an object behind the repository's back: for corruption tests only.
    pub fn tamper(&self, key: &str, data: Bytes) {
        self.objects.lock().unwrap().insert(key.to_string(), data);
    }

    fn enter(cancel: &CancellationToken, key: &str) -> Result<(), StoreError> {
        if cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        check_key(key)
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn location(&self) -> String {
        "memory://".into()
    }

    async fn put(
        &self,
        key: &str,
        data: Bytes,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        Self::enter(cancel, key)?;
        let mut map = self.objects.lock().unwrap();
        if map.contains_key(key) {
            return Err(StoreError::AlreadyExists {
                key: key.to_string(),
            });
        }
        map.insert(key.to_string(), data);
        Ok(())
    }

    async fn get(&self, key: &str, cancel: &CancellationToken) -> Result<Bytes, StoreError> {
        Self::enter(cancel, key)?;
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                key: key.to_string(),
            })
    }

    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
        cancel: &CancellationToken,
    ) -> Result<Bytes, StoreError> {
        let all = self.get(key, cancel).await?;
        let start = (offset as usize).min(all.len());
        let end = (offset.saturating_add(length) as usize).min(all.len());
        Ok(all.slice(start..end))
    }

    async fn head(&self, key: &str, cancel: &CancellationToken) -> Result<Option<u64>, StoreError> {
        Self::enter(cancel, key)?;
        Ok(self
            .objects
            .lock()
            .unwrap()
            .get(key)
            .map(|b| b.len() as u64))
    }

    async fn list(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        if cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        Ok(self
            .objects
            .lock()
            .unwrap()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| ObjectInfo {
                key: k.clone(),
                size: v.len() as u64,
            })
            .collect())
    }

    async fn delete(&self, key: &str, cancel: &CancellationToken) -> Result<(), StoreError> {
        Self::enter(cancel, key)?;
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }
}
