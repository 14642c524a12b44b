//! Repository locks: takes a lock kind; gives a guard that holds a `locks/<hash>` object in the
//! store while it lives. Backups and restores hold shared locks, `forget` and `prune`
//! exclusive ones; an exclusive lock excludes every other lock. A lock expires
//! [`LOCK_TTL`] after it was last refreshed (the guard refreshes it every [`LOCK_REFRESH`]),
//! so a process that died does not block the repository forever: an expired lock is ignored
//! and removed by the next locker. Must not be taken for granted across a store that lists
//! stale results: both sides write first and check after, so two racing lockers back off
//! rather than both proceed; a locker given a wait ([`Repository::lock_waiting`]) then tries
//! again after a random, growing delay, so that one of them wins. A reader whose credentials
//! cannot write reads without a lock ([`Repository::lock_to_read`]); prune's grace period
//! keeps what it reads.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{hostname, RepoError, Repository};
use crate::format::{object_hash, FORMAT_VERSION};
pub use crate::format::{LockFile, LockKind};
use crate::store::Store;

/// A lock not refreshed for this long is stale.
pub const LOCK_TTL: Duration = Duration::from_secs(30 * 60);
/// How often a held lock is renewed.
pub const LOCK_REFRESH: Duration = Duration::from_secs(5 * 60);
/// The first backoff of a waiting locker; it doubles after each refusal...
pub const LOCK_BACKOFF_FIRST: Duration = Duration::from_millis(50);
/// ...up to this.
pub const LOCK_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long a waiting locker sleeps after its `attempt`-th refusal (0-based), given `unit`, a
/// random number in [0, 1): between a quarter of and the whole of a delay that doubles from
/// [`LOCK_BACKOFF_FIRST`] to [`LOCK_BACKOFF_MAX`]. The randomness parts lockers that would
/// otherwise retry in step and refuse each other forever.
pub fn backoff_delay(attempt: u32, unit: f64) -> Duration {
    let full = LOCK_BACKOFF_FIRST
        .saturating_mul(1u32 << attempt.min(16))
        .min(LOCK_BACKOFF_MAX);
    full.mul_f64(0.25 + 0.75 * unit.clamp(0.0, 1.0))
}

impl LockFile {
    fn describe(&self) -> String {
        format!(
            "{} lock for `{}` by {} pid {} (taken {}, expires {})",
            match self.kind {
                LockKind::Shared => "a shared",
                LockKind::Exclusive => "an exclusive",
            },
            self.purpose,
            self.hostname,
            self.pid,
            crate::repository::rfc3339(self.time),
            crate::repository::rfc3339(self.expires)
        )
    }
}

/// A held lock; released by [`LockGuard::release`] (or, less tidily, on drop).
pub struct LockGuard {
    store: Arc<dyn Store>,
    key: Arc<Mutex<String>>,
    stop: CancellationToken,
    released: bool,
}

async fn write_lock(
    store: &Arc<dyn Store>,
    lock: &LockFile,
    cancel: &CancellationToken,
) -> Result<String, RepoError> {
    let bytes = serde_json::to_vec(lock).expect("a lock serialises");
    let key = format!("locks/{}", hex::encode(object_hash(&bytes)));
    store.put(&key, Bytes::from(bytes), cancel).await?;
    Ok(key)
}

fn new_lock(kind: LockKind, purpose: &str, ttl: Duration) -> LockFile {
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 ns");
    LockFile {
        version: FORMAT_VERSION,
        kind,
        purpose: purpose.to_string(),
        hostname: hostname(),
        pid: std::process::id(),
        time: now,
        expires: now + time::Duration::try_from(ttl).expect("ttl in range"),
        nonce: hex::encode(rand::random::<[u8; 8]>()),
        process: process_identity(std::process::id()),
    }
}

/// `<boot id>/<pid namespace>/<start time>` of process `pid`, from /proc; None when /proc
/// does not tell (another OS, a restricted sandbox, or no such process).
fn process_identity(pid: u32) -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (start time), counted after the command name's closing parenthesis.
    let start = stat.rsplit_once(')')?.1.split_whitespace().nth(19)?;
    Some(format!("{}/{}/{start}", boot.trim(), ns.display()))
}

/// What an object under `locks/` is.
#[derive(Debug, Clone)]
pub enum LockState {
    /// Held: not expired, and not of a process known to be dead.
    Live(LockFile),
    /// Expired, or of a process of this host that no longer runs.
    Stale(LockFile),
    /// Not a lock at all (damaged, or foreign): ignored by lockers, reported by `check`.
    Garbage(String),
}

/// Whether the process holding `lock` still runs, where this host can tell: Some(true) when
/// it is of this host, boot and pid namespace and its pid runs the very process that took it
/// (same start time); Some(false) when such a pid no longer runs, or runs a process started at
/// another time (the pid was reused); None for anything less certain (another host, another
/// container, an older lock without its process identity), which keeps the lock until it
/// expires.
fn holder_runs(lock: &LockFile) -> Option<bool> {
    let theirs = lock.process.as_ref()?;
    if lock.hostname != hostname() {
        return None;
    }
    let mine = process_identity(std::process::id())?;
    let (their_place, _) = theirs.rsplit_once('/').unwrap_or((theirs, ""));
    let (my_place, _) = mine.rsplit_once('/').unwrap_or((&mine, ""));
    if their_place != my_place {
        return None; // another boot or another pid namespace: its pids are not ours
    }
    Some(process_identity(lock.pid).as_deref() == Some(theirs.as_str()))
}

/// Classifies one object under `locks/`.
pub fn lock_state(bytes: &[u8], now: OffsetDateTime) -> LockState {
    match serde_json::from_slice::<LockFile>(bytes) {
        Err(e) => LockState::Garbage(format!("not a lock: {e}")),
        Ok(l) if l.expires < now || holder_runs(&l) == Some(false) => LockState::Stale(l),
        Ok(l) => LockState::Live(l),
    }
}

/// What `repo unlock` removed, and what it left because it is still live (each with why).
#[derive(Debug, Clone, Default, serde::Serialize, schemars::JsonSchema)]
pub struct UnlockReport {
    /// Locks removed (`key: what it was`).
    pub removed: Vec<String>,
    /// Locks left because they are live (`key: why`).
    pub kept: Vec<String>,
}

impl Repository {
    /// Every object under `locks/` with what it is.
    pub async fn all_locks(&self) -> Result<Vec<(String, LockState)>, RepoError> {
        let now = OffsetDateTime::now_utc();
        let mut out = Vec::new();
        for o in self.store().list("locks/", self.cancel()).await? {
            let bytes = match self.store().get(&o.key, self.cancel()).await {
                Ok(b) => b,
                // Released between the list and the get.
                Err(crate::store::StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            out.push((o.key, lock_state(&bytes, now)));
        }
        Ok(out)
    }

    /// Every lock in the store that is held, by key. Stale ones (expired, or of a dead process
    /// of this host) are removed; garbage is ignored with a warning (`repo check` reports it,
    /// `repo unlock` removes it).
    pub async fn live_locks(&self) -> Result<Vec<(String, LockFile)>, RepoError> {
        let mut out = Vec::new();
        for (key, state) in self.all_locks().await? {
            match state {
                LockState::Live(l) => out.push((key, l)),
                LockState::Stale(l) => {
                    tracing::warn!(lock = %key, "removing a stale lock: {}", l.describe());
                    let _ = self.store().delete(&key, self.cancel()).await;
                }
                LockState::Garbage(why) => {
                    tracing::warn!(lock = %key, "ignoring an object under locks/ that is {why}; `lifeboat repo unlock` removes it");
                }
            }
        }
        Ok(out)
    }

    /// Removes stale and garbage lock objects (expired, of a process of this host that is
    /// gone, or not a lock at all). A lock younger than its expiry is kept, unless `force`:
    /// then it is removed too when its holder cannot be checked from here (another host,
    /// container or boot; the operator says it is gone), but never when its holder is a
    /// process of this host that still runs (it may be writing: stop it, and its lock goes
    /// without `force`).
    pub async fn unlock(&self, force: bool) -> Result<UnlockReport, RepoError> {
        let mut report = UnlockReport::default();
        for (key, state) in self.all_locks().await? {
            let shown = match &state {
                LockState::Live(l) | LockState::Stale(l) => format!("{key}: {}", l.describe()),
                LockState::Garbage(why) => format!("{key}: {why}"),
            };
            if let LockState::Live(l) = &state {
                if holder_runs(l) == Some(true) {
                    report.kept.push(format!(
                        "{shown}; its holder runs on this host: stop pid {} (or let it finish), then unlock again",
                        l.pid
                    ));
                    continue;
                }
                if !force {
                    report.kept.push(format!(
                        "{shown}; not expired: wait for it, or pass --force once you know its holder is gone"
                    ));
                    continue;
                }
            }
            match self.store().delete(&key, self.cancel()).await {
                Ok(()) | Err(crate::store::StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            report.removed.push(shown);
        }
        Ok(report)
    }

    /// Takes a lock. A conflicting lock is waited out for up to [`Repository::lock_wait`]
    /// (zero: fail at once) before failing naming who holds it (retryable: try again when it
    /// is released or expired).
    pub async fn lock(&self, kind: LockKind, purpose: &str) -> Result<LockGuard, RepoError> {
        self.lock_waiting(kind, purpose, self.lock_wait()).await
    }

    /// The shared lock of a command that only reads (restore, standby apply, drill, verify),
    /// taken like [`Repository::lock`]; but when the store refuses to write it (credentials
    /// that can only read, as a DR site's should), the read goes on without a lock, and None
    /// says so. That is safe because a prune leaves what it takes out of the index in the
    /// store for its grace period ([`super::prune::DEFAULT_GRACE`] unless told otherwise), and
    /// an exclusive lock already held is still waited for. Writers never fall back this way.
    pub async fn lock_to_read(&self, purpose: &str) -> Result<Option<LockGuard>, RepoError> {
        match self.lock(LockKind::Shared, purpose).await {
            Ok(guard) => Ok(Some(guard)),
            Err(RepoError::Store(crate::store::StoreError::WriteDenied { message, .. })) => {
                tracing::warn!(
                    "reading {} without a lock: these credentials cannot write it ({message}); what this reads stays in the store for the grace period of any prune (24 h unless `prune --grace` says otherwise)",
                    self.store().location()
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Takes a lock, waiting up to `wait` for conflicting ones to go: tries, and after each
    /// refusal sleeps a random time up to a delay that doubles from [`LOCK_BACKOFF_FIRST`] to
    /// [`LOCK_BACKOFF_MAX`] ([`backoff_delay`]), so that of lockers that keep refusing each
    /// other one soon tries alone and wins. Never gives two exclusive holders: every attempt
    /// writes first and checks after. Zero: one attempt. Cancelled by the repository's token.
    pub async fn lock_waiting(
        &self,
        kind: LockKind,
        purpose: &str,
        wait: Duration,
    ) -> Result<LockGuard, RepoError> {
        self.lock_waiting_with_ttl(kind, purpose, wait, LOCK_TTL)
            .await
    }

    /// [`Repository::lock_waiting`] with a chosen expiry (tests use short ones).
    pub async fn lock_waiting_with_ttl(
        &self,
        kind: LockKind,
        purpose: &str,
        wait: Duration,
        ttl: Duration,
    ) -> Result<LockGuard, RepoError> {
        let deadline = tokio::time::Instant::now() + wait;
        for attempt in 0u32.. {
            match self.lock_with_ttl(kind, purpose, ttl).await {
                Err(RepoError::Locked { holder }) => {
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        return Err(RepoError::Locked {
                            holder: if wait.is_zero() {
                                holder
                            } else {
                                format!("{holder}, still after waiting {wait:?} (--lock-wait)")
                            },
                        });
                    }
                    let sleep = backoff_delay(attempt, rand::random::<f64>()).min(deadline - now);
                    tracing::debug!(attempt, ?sleep, "waiting for the repository: {holder}");
                    tokio::select! {
                        _ = tokio::time::sleep(sleep) => {}
                        _ = self.cancel().cancelled() => {
                            return Err(crate::store::StoreError::Cancelled.into())
                        }
                    }
                }
                r => return r,
            }
        }
        unreachable!("the attempts are not bounded by their count")
    }

    /// Tries once to take a lock with a chosen expiry; fails at once naming who holds the
    /// conflicting one.
    pub async fn lock_with_ttl(
        &self,
        kind: LockKind,
        purpose: &str,
        ttl: Duration,
    ) -> Result<LockGuard, RepoError> {
        let conflicts = |mine: Option<&str>, locks: &[(String, LockFile)]| -> Option<String> {
            locks
                .iter()
                .filter(|(k, _)| Some(k.as_str()) != mine)
                .find(|(_, l)| kind == LockKind::Exclusive || l.kind == LockKind::Exclusive)
                .map(|(_, l)| l.describe())
        };
        if let Some(holder) = conflicts(None, &self.live_locks().await?) {
            return Err(RepoError::Locked { holder });
        }
        let store = self.store().clone();
        let key = write_lock(&store, &new_lock(kind, purpose, ttl), self.cancel()).await?;
        // Check again after writing: of two lockers racing, at least one sees the other.
        if let Some(holder) = conflicts(Some(&key), &self.live_locks().await?) {
            let _ = store.delete(&key, self.cancel()).await;
            return Err(RepoError::Locked { holder });
        }
        let key = Arc::new(Mutex::new(key));
        let stop = CancellationToken::new();
        let (k, s, st) = (key.clone(), stop.clone(), store.clone());
        let refresh = ttl.min(LOCK_REFRESH * 6) / 6;
        let purpose = purpose.to_string();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = s.cancelled() => return,
                    _ = tokio::time::sleep(refresh) => {}
                }
                let never = CancellationToken::new();
                match write_lock(&st, &new_lock(kind, &purpose, ttl), &never).await {
                    Ok(new_key) => {
                        let old = std::mem::replace(&mut *k.lock().unwrap(), new_key);
                        let _ = st.delete(&old, &never).await;
                    }
                    Err(e) => tracing::warn!("could not refresh the repository lock: {e}"),
                }
            }
        });
        Ok(LockGuard {
            store,
            key,
            stop,
            released: false,
        })
    }
}

impl LockGuard {
    /// Removes the lock object.
    pub async fn release(mut self) -> Result<(), RepoError> {
        self.stop.cancel();
        self.released = true;
        let key = self.key.lock().unwrap().clone();
        self.store.delete(&key, &CancellationToken::new()).await?;
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop.cancel();
        if !self.released {
            let store = self.store.clone();
            let key = self.key.lock().unwrap().clone();
            // Best effort; a lock left behind expires.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = store.delete(&key, &CancellationToken::new()).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_its_cap_and_is_random_within_a_quarter_to_all_of_it() {
        assert_eq!(backoff_delay(0, 0.0), LOCK_BACKOFF_FIRST / 4);
        assert_eq!(backoff_delay(0, 1.0), LOCK_BACKOFF_FIRST);
        assert_eq!(backoff_delay(3, 1.0), LOCK_BACKOFF_FIRST * 8);
        assert_eq!(backoff_delay(40, 1.0), LOCK_BACKOFF_MAX);
        assert_eq!(backoff_delay(u32::MAX, 0.0), LOCK_BACKOFF_MAX / 4);
        // Two lockers drawing different numbers sleep differently: they come apart.
        assert_ne!(backoff_delay(2, 0.1), backoff_delay(2, 0.9));
    }
}
