//! Fault injection decorator for tests: makes chosen calls fail, lose their answer, or return
//! damaged bytes, so that retry, crash and corruption handling can be shown to work.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::{ObjectInfo, Store, StoreError};

/// Which operation a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    Head,
    List,
    Delete,
}

/// What happens to a matching call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail with a transient (retryable) error; nothing is done.
    Transient,
    /// Fail with a permanent error; nothing is done.
    Permanent,
    /// Do the call, then report a transient failure (the answer was lost on the way back).
    LoseAnswer,
    /// Return the bytes with one bit flipped (reads only).
    FlipBit,
}

#[derive(Debug, Clone)]
struct Rule {
    op: Op,
    key_contains: String,
    /// Skip this many matching calls before the fault applies.
    skip: u64,
    /// Apply to this many matching calls after the skipped ones (u64::MAX: forever).
    times: u64,
    fault: Fault,
    seen: u64,
}

pub struct Faulty {
    inner: Arc<dyn Store>,
    rules: Mutex<Vec<Rule>>,
    puts_done: AtomicU64,
}

impl fmt::Debug for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({:?})", self.inner)
    }
}

impl Faulty {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Faulty {
            inner,
            rules: Mutex::new(Vec::new()),
            puts_done: AtomicU64::new(0),
        }
    }

    /// After `skip` matching calls, the next `times` calls of `op` on keys containing
    /// `key_contains` meet `fault`.
    pub fn inject(&self, op: Op, key_contains: &str, skip: u64, times: u64, fault: Fault) {
        self.rules.lock().unwrap().push(Rule {
            op,
            key_contains: key_contains.to_string(),
            skip,
            times,
            fault,
            seen: 0,
        });
    }

    pub fn clear(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// Successful puts so far.
    pub fn puts_done(&self) -> u64 {
        self.puts_done.load(Ordering::SeqCst)
    }

    fn fault_for(&self, op: Op, key: &str) -> Option<Fault> {
        let mut rules = self.rules.lock().unwrap();
        for r in rules.iter_mut() {
            if r.op == op && key.contains(&r.key_contains) {
                r.seen += 1;
                if r.seen > r.skip && r.seen - r.skip <= r.times {
                    return Some(r.fault);
                }
            }
        }
        None
    }

    fn error(op: &'static str, key: &str, fault: Fault) -> StoreError {
        let message = "injected fault".to_string();
        let key = key.to_string();
        match fault {
            Fault::Permanent => StoreError::Permanent { op, key, message },
            _ => StoreError::Transient { op, key, message },
        }
    }
}

fn flip(b: Bytes) -> Bytes {
    if b.is_empty() {
        return b;
    }
    let mut v = b.to_vec();
    let i = v.len() / 2;
    v[i] ^= 0x10;
    Bytes::from(v)
}

#[async_trait]
impl Store for Faulty {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn put(
        &self,
        key: &str,
        data: Bytes,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        match self.fault_for(Op::Put, key) {
            Some(Fault::LoseAnswer) => {
                self.inner.put(key, data, cancel).await?;
                self.puts_done.fetch_add(1, Ordering::SeqCst);
                Err(Self::error("put", key, Fault::LoseAnswer))
            }
            Some(f) => Err(Self::error("put", key, f)),
            None => {
                self.inner.put(key, data, cancel).await?;
                self.puts_done.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    }

    async fn get(&self, key: &str, cancel: &CancellationToken) -> Result<Bytes, StoreError> {
        match self.fault_for(Op::Get, key) {
            Some(Fault::FlipBit) => Ok(flip(self.inner.get(key, cancel).await?)),
            Some(Fault::LoseAnswer) | None => self.inner.get(key, cancel).await,
            Some(f) => Err(Self::error("get", key, f)),
        }
    }

    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
        cancel: &CancellationToken,
    ) -> Result<Bytes, StoreError> {
        match self.fault_for(Op::Get, key) {
            Some(Fault::FlipBit) => Ok(flip(
                self.inner.get_range(key, offset, length, cancel).await?,
            )),
            Some(Fault::LoseAnswer) | None => {
                self.inner.get_range(key, offset, length, cancel).await
            }
            Some(f) => Err(Self::error("get_range", key, f)),
        }
    }

    async fn head(&self, key: &str, cancel: &CancellationToken) -> Result<Option<u64>, StoreError> {
        match self.fault_for(Op::Head, key) {
            Some(Fault::LoseAnswer) | Some(Fault::FlipBit) | None => {
                self.inner.head(key, cancel).await
            }
            Some(f) => Err(Self::error("head", key, f)),
        }
    }

    async fn list(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        match self.fault_for(Op::List, prefix) {
            Some(Fault::LoseAnswer) | Some(Fault::FlipBit) | None => {
                self.inner.list(prefix, cancel).await
            }
            Some(f) => Err(Self::error("list", prefix, f)),
        }
    }

    async fn delete(&self, key: &str, cancel: &CancellationToken) -> Result<(), StoreError> {
        match self.fault_for(Op::Delete, key) {
            Some(Fault::LoseAnswer) => {
                self.inner.delete(key, cancel).await?;
                Err(Self::error("delete", key, Fault::LoseAnswer))
            }
            Some(Fault::FlipBit) | None => self.inner.delete(key, cancel).await,
            Some(f) => Err(Self::error("delete", key, f)),
        }
    }
}
