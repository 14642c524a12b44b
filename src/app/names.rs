//! Backup names kept unique without compare-and-swap (neither S3 nor a local directory gives
//! one we can rely on): takes the repository and a name; gives a short-lived claim on the name,
//! held while the backup's record is written.
//!
//! A claim is an empty object `names/<keyed hash of the name>/<millis>-<random>`. A writer puts
//! its claim, then lists the claims of the name: of two writers racing, the later one to list
//! sees the other's claim, so at most one sees only its own. That one checks the records once
//! more (a record written before its claim) and writes; any writer that sees another fresh
//! claim withdraws its own and tries again after a random pause (the other has then either
//! written its record, which ends the race, or withdrawn too). A claim older than
//! [`FRESH`] is a crashed writer's and is removed.
//!
//! Must not let two records of one name be written by writers that both saw the other, nor
//! block a name for good after a crash.

use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use time::OffsetDateTime;

use crate::repository::{RepoError, Repository};

/// Where claims live.
pub const CLAIMS: &str = "names/";
/// A claim is held only while one record is written: older than this, its writer is gone.
pub const FRESH: Duration = Duration::from_secs(120);
/// Rounds of withdraw-and-retry before giving up (retryable).
const ATTEMPTS: u32 = 8;

/// A held claim on a backup name; [`NameClaim::release`] once the record is written.
pub struct NameClaim {
    key: String,
}

/// The outcome of claiming a name.
pub enum Claimed {
    Held(NameClaim),
    /// A record of the name exists (written before or during the claim).
    Taken,
    /// Other writers of the name kept colliding: try again.
    Busy,
}

fn now_ms() -> i128 {
    OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000
}

/// The claims folder of `name` (its name keyed, so the bucket does not show backup names).
fn folder(repo: &Repository, name: &str) -> String {
    let id = repo
        .keys()
        .blob_id(format!("backup-name\0{name}").as_bytes());
    format!("{CLAIMS}{id}/")
}

/// The time a claim was made, from its key; None: not a claim (garbage).
fn claim_time(key: &str) -> Option<i128> {
    let last = key.rsplit('/').next()?;
    last.split_once('-')?.0.parse().ok()
}

/// Claims `name`; `taken` says whether a record of it exists now.
pub async fn claim<F, Fut>(repo: &Repository, name: &str, taken: F) -> Result<Claimed, RepoError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<bool, RepoError>>,
{
    let (store, cancel) = (repo.store(), repo.cancel());
    let dir = folder(repo, name);
    for attempt in 0..ATTEMPTS {
        let key = format!(
            "{dir}{:013}-{:016x}",
            now_ms(),
            rand::thread_rng().gen::<u64>()
        );
        store.put(&key, Bytes::new(), cancel).await?;
        let mut others = false;
        for o in store.list(&dir, cancel).await? {
            if o.key == key {
                continue;
            }
            match claim_time(&o.key) {
                Some(t) if now_ms() - t < FRESH.as_millis() as i128 => others = true,
                // A crashed writer's, or not a claim at all.
                _ => store.delete(&o.key, cancel).await?,
            }
        }
        if !others {
            if taken().await? {
                store.delete(&key, cancel).await?;
                return Ok(Claimed::Taken);
            }
            return Ok(Claimed::Held(NameClaim { key }));
        }
        store.delete(&key, cancel).await?;
        let pause = rand::thread_rng().gen_range(20..200u64) * (attempt as u64 + 1);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if taken().await? {
            return Ok(Claimed::Taken);
        }
    }
    Ok(Claimed::Busy)
}

impl NameClaim {
    /// Withdraws the claim (the record, written or not, speaks for the name from now on).
    pub async fn release(self, repo: &Repository) {
        if let Err(e) = repo.store().delete(&self.key, repo.cancel()).await {
            tracing::warn!(
                "could not remove the name claim {}: {e} (it expires by itself)",
                self.key
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_key_gives_its_time_and_garbage_none() {
        assert_eq!(
            claim_time("names/ab/0001700000000000-00000000000000ff"),
            Some(1_700_000_000_000)
        );
        assert_eq!(claim_time("names/ab/garbage"), None);
        assert_eq!(claim_time("names/ab/x-1"), None);
    }
}
