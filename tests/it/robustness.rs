//! Concurrency, damage and hostile input: the repository keeps its data and stays usable.
//! Each test here fails on the code before its fix (the adversarial review's findings).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use lifeboat::format::KdfParams;
use lifeboat::repository::{RepoError, Repository};
use lifeboat::store::memory::MemoryStore;
use lifeboat::store::{ObjectInfo, Store, StoreError};
use tokio_util::sync::CancellationToken;

use crate::support::{new_repo, test_init_options, PASSWORD};

fn c() -> CancellationToken {
    CancellationToken::new()
}

/// A store whose deletes under one prefix wait (up to a second) until a second delete under
/// it arrives: two racing commands are both made to pass their checks before either acts.
#[derive(Debug)]
struct MeetAtDelete {
    inner: MemoryStore,
    prefix: &'static str,
    barrier: tokio::sync::Barrier,
}

#[async_trait]
impl Store for MeetAtDelete {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn put(
        &self,
        key: &str,
        data: Bytes,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        self.inner.put(key, data, cancel).await
    }
    async fn get(&self, key: &str, cancel: &CancellationToken) -> Result<Bytes, StoreError> {
        self.inner.get(key, cancel).await
    }
    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
        cancel: &CancellationToken,
    ) -> Result<Bytes, StoreError> {
        self.inner.get_range(key, offset, length, cancel).await
    }
    async fn head(&self, key: &str, cancel: &CancellationToken) -> Result<Option<u64>, StoreError> {
        self.inner.head(key, cancel).await
    }
    async fn list(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(prefix, cancel).await
    }
    async fn delete(&self, key: &str, cancel: &CancellationToken) -> Result<(), StoreError> {
        if key.starts_with(self.prefix) {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.barrier.wait()).await;
        }
        self.inner.delete(key, cancel).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_key_removals_at_once_never_leave_the_repository_without_a_key() {
    let mem = MemoryStore::new();
    let first = new_repo(Arc::new(mem.clone())).await;
    let second_id = first
        .add_key(b"second", KdfParams::INSECURE_FAST)
        .await
        .unwrap();
    let first_id = first
        .list_keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.id != second_id)
        .unwrap()
        .id;

    let racing: Arc<dyn Store> = Arc::new(MeetAtDelete {
        inner: mem.clone(),
        prefix: "keys/",
        barrier: tokio::sync::Barrier::new(2),
    });
    let a = Repository::open(racing.clone(), PASSWORD, None, c())
        .await
        .unwrap();
    let b = Repository::open(racing.clone(), b"second", None, c())
        .await
        .unwrap();
    // Each removes the other's key: both see two keys, so each alone would be allowed.
    let (spec_a, spec_b) = (second_id.to_hex(), first_id.to_hex());
    let (ra, rb) = tokio::join!(a.remove_key(&spec_a), b.remove_key(&spec_b));
    let removed = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
    assert!(removed <= 1, "both removals went through: {ra:?} {rb:?}");
    for r in [&ra, &rb] {
        if let Err(e) = r {
            assert!(
                matches!(e, RepoError::Locked { .. } | RepoError::LastKey),
                "{e}"
            );
        }
    }
    let left = mem.list("keys/", &c()).await.unwrap();
    assert!(
        !left.is_empty(),
        "no key left: the repository can never be opened again"
    );
    let opens = [PASSWORD, b"second".as_slice()]
        .iter()
        .filter(|pw| {
            futures::executor::block_on(Repository::open(Arc::new(mem.clone()), pw, None, c()))
                .is_ok()
        })
        .count();
    assert!(opens >= 1, "no password opens the repository");
}

#[tokio::test]
async fn a_damaged_key_of_another_password_does_not_lock_out_this_one() {
    let mem = MemoryStore::new();
    let repo = new_repo(Arc::new(mem.clone())).await;
    let other = repo
        .add_key(b"other", KdfParams::INSECURE_FAST)
        .await
        .unwrap();
    let mine = repo
        .list_keys()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.id != other)
        .unwrap()
        .id;
    // Damage every key but this password's: the first one listed is damaged too.
    let damaged_key = other.key();
    mem.delete(&damaged_key, &c()).await.unwrap();
    mem.put(&damaged_key, Bytes::from_static(b"{not a key"), &c())
        .await
        .unwrap();

    let reopened = Repository::open(Arc::new(mem.clone()), PASSWORD, None, c())
        .await
        .unwrap();
    let keys = reopened.list_keys().await.unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter().any(|k| k.id == other && k.damaged.is_some()),
        "{keys:?}"
    );
    // The damaged key is no fallback: the readable one is the last.
    assert!(matches!(
        reopened.remove_key(&mine.to_hex()).await,
        Err(RepoError::LastKey)
    ));
    // Its own password now names the damage.
    let e = Repository::open(Arc::new(mem.clone()), b"other", None, c())
        .await
        .unwrap_err();
    assert!(
        matches!(e, RepoError::WrongPassword { ref damaged, .. } if damaged.len() == 1),
        "{e}"
    );
    assert!(e.to_string().contains("damaged"), "{e}");
}

#[tokio::test]
async fn an_empty_password_is_refused_and_nothing_is_written() {
    let mem = MemoryStore::new();
    let e = Repository::init(Arc::new(mem.clone()), b"", &test_init_options(), c())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("password is empty"), "{e}");
    assert!(
        mem.list("", &c()).await.unwrap().is_empty(),
        "nothing stored"
    );
    let repo = new_repo(Arc::new(mem.clone())).await;
    let e = repo
        .add_key(b"", KdfParams::INSECURE_FAST)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("password is empty"), "{e}");
    assert_eq!(mem.list("keys/", &c()).await.unwrap().len(), 1);
}
