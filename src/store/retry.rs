//! Retry decorator: repeats retryable failures with jittered exponential backoff.
//!
//! Takes any [`Store`]; gives the same interface. Only errors that
//! [`StoreError::is_retryable`] says are transient are retried; a `put` that fails after the
//! object landed shows up as `AlreadyExists` on the next attempt, which is reported as success
//! because every object name this crate writes more than once is content-addressed.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::{ObjectInfo, Store, StoreError};

pub struct Retry {
    inner: Arc<dyn Store>,
    max_attempts: u32,
    base_delay: Duration,
}

impl fmt::Debug for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Retry({:?})", self.inner)
    }
}

impl Retry {
    pub fn new(inner: Arc<dyn Store>, max_attempts: u32, base_delay: Duration) -> Self {
        Retry {
            inner,
            max_attempts: max_attempts.max(1),
            base_delay,
        }
    }

    async fn run<T, F, Fut>(
        &self,
        op: &str,
        key: &str,
        cancel: &CancellationToken,
        mut f: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 1;
        loop {
            match f().await {
                Err(e) if e.is_retryable() && attempt < self.max_attempts => {
                    let delay = backoff(self.base_delay, attempt);
                    tracing::warn!(op, key, attempt, ?delay, error = %e, "retrying store call");
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(StoreError::Cancelled),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    attempt += 1;
                }
                r => return r,
            }
        }
    }
}

/// Delay before retry number `attempt` (1-based): base·2^(attempt-1), capped at 30 s, with
/// up to 50 % random jitter so that many clients do not retry in lockstep.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << (attempt - 1).min(16));
    let capped = exp.min(Duration::from_secs(30));
    let jitter = rand::random::<f64>() * 0.5;
    capped.mul_f64(1.0 - jitter)
}

#[async_trait]
impl Store for Retry {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn put(
        &self,
        key: &str,
        data: Bytes,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        let mut attempt = 0;
        self.run("put", key, cancel, || {
            attempt += 1;
            let data = data.clone();
            let first = attempt == 1;
            async move {
                match self.inner.put(key, data, cancel).await {
                    // An earlier attempt reached the store but its answer was lost.
                    Err(StoreError::AlreadyExists { .. }) if !first => Ok(()),
                    r => r,
                }
            }
        })
        .await
    }

    async fn get(&self, key: &str, cancel: &CancellationToken) -> Result<Bytes, StoreError> {
        self.run("get", key, cancel, || self.inner.get(key, cancel))
            .await
    }

    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
        cancel: &CancellationToken,
    ) -> Result<Bytes, StoreError> {
        self.run("get_range", key, cancel, || {
            self.inner.get_range(key, offset, length, cancel)
        })
        .await
    }

    async fn head(&self, key: &str, cancel: &CancellationToken) -> Result<Option<u64>, StoreError> {
        self.run("head", key, cancel, || self.inner.head(key, cancel))
            .await
    }

    async fn list(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        self.run("list", prefix, cancel, || self.inner.list(prefix, cancel))
            .await
    }

    async fn delete(&self, key: &str, cancel: &CancellationToken) -> Result<(), StoreError> {
        self.run("delete", key, cancel, || self.inner.delete(key, cancel))
            .await
    }
}
