//! One conformance suite for every `Store` implementation and decorator.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lifeboat::store::fault::{Fault, Faulty, Op};
use lifeboat::store::local::LocalStore;
use lifeboat::store::memory::MemoryStore;
use lifeboat::store::retry::Retry;
use lifeboat::store::{Store, StoreError, StoreOptions};
use tokio_util::sync::CancellationToken;

use crate::support::{files, garage, tmp};

async fn conformance(s: &dyn Store) {
    let c = CancellationToken::new();
    // Empty store.
    assert!(
        s.list("", &c).await.unwrap().is_empty(),
        "{}: starts empty",
        s.location()
    );
    assert_eq!(s.head("a/b", &c).await.unwrap(), None);
    assert!(matches!(
        s.get("a/b", &c).await,
        Err(StoreError::NotFound { .. })
    ));

    // Put, get, head, ranges.
    let data = Bytes::from(
        (0..100_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    s.put("data/ab/obj1", data.clone(), &c).await.unwrap();
    assert_eq!(s.get("data/ab/obj1", &c).await.unwrap(), data);
    assert_eq!(s.head("data/ab/obj1", &c).await.unwrap(), Some(100_000));
    assert_eq!(
        s.get_range("data/ab/obj1", 10, 20, &c).await.unwrap(),
        data.slice(10..30)
    );
    assert_eq!(
        s.get_range("data/ab/obj1", 99_990, 100, &c).await.unwrap(),
        data.slice(99_990..)
    );
    assert!(s
        .get_range("data/ab/obj1", 200_000, 10, &c)
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .get_range("data/ab/obj1", 5, 0, &c)
        .await
        .unwrap()
        .is_empty());

    // Create-only: a second put of the same key never replaces the first.
    let second = s
        .put("data/ab/obj1", Bytes::from_static(b"other"), &c)
        .await;
    assert!(
        matches!(second, Err(StoreError::AlreadyExists { .. })),
        "{second:?}"
    );
    assert_eq!(s.get("data/ab/obj1", &c).await.unwrap(), data);

    // Empty objects and listing with prefixes, sorted.
    s.put("index/2", Bytes::new(), &c).await.unwrap();
    s.put("index/1", Bytes::from_static(b"x"), &c)
        .await
        .unwrap();
    s.put("indexer", Bytes::from_static(b"y"), &c)
        .await
        .unwrap();
    assert_eq!(s.get("index/2", &c).await.unwrap(), Bytes::new());
    let l = s.list("index/", &c).await.unwrap();
    let keys: Vec<&str> = l.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["index/1", "index/2"]);
    assert_eq!(l[0].size, 1);
    assert_eq!(s.list("", &c).await.unwrap().len(), 4);
    assert_eq!(s.list("data/", &c).await.unwrap()[0].size, 100_000);

    // Delete is idempotent.
    s.delete("index/1", &c).await.unwrap();
    s.delete("index/1", &c).await.unwrap();
    assert_eq!(s.head("index/1", &c).await.unwrap(), None);

    // Invalid keys are refused before any IO.
    for bad in ["../x", "/abs", "a//b", "a/./b", "sp ace"] {
        assert!(
            s.put(bad, Bytes::new(), &c).await.is_err(),
            "key {bad:?} refused"
        );
    }

    // A cancelled token stops calls.
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    assert!(s.get("data/ab/obj1", &cancelled).await.is_err());
}

#[tokio::test]
async fn memory_store() {
    conformance(&MemoryStore::new()).await;
}

#[tokio::test]
async fn local_store() {
    let d = tmp();
    conformance(&LocalStore::new(d.path())).await;
    // No temporary files are left behind.
    let leftovers: Vec<_> = files(d.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn s3_store_on_garage() {
    let (s, _) = garage().store(StoreOptions::default()).await;
    conformance(&s).await;
}

#[tokio::test]
async fn s3_multipart_upload_on_garage() {
    let opts = StoreOptions {
        multipart_threshold: 6 << 20,
        multipart_part_size: 5 << 20,
        ..Default::default()
    };
    let (s, _) = garage().store(opts).await;
    let c = CancellationToken::new();
    let big = Bytes::from(
        (0..(12u32 << 20))
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect::<Vec<u8>>(),
    );
    s.put("data/big", big.clone(), &c).await.unwrap();
    assert_eq!(
        s.head("data/big", &c).await.unwrap(),
        Some(big.len() as u64)
    );
    assert_eq!(s.get("data/big", &c).await.unwrap(), big);
    assert_eq!(
        s.get_range("data/big", (5 << 20) - 3, 6, &c).await.unwrap(),
        big.slice((5 << 20) - 3..(5 << 20) + 3)
    );
}

#[tokio::test]
async fn s3_dead_endpoint_is_a_timeout_or_transient_error() {
    // Nothing listens on this port: connection refused is transient (worth a retry).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = lifeboat::store::s3::S3Settings {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("x".into()),
        access_key_id: Some("a".into()),
        secret_access_key: Some("b".into()),
        session_token: None,
    };
    let opts = StoreOptions {
        op_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let s = lifeboat::store::s3::S3Store::new("b", "", settings, opts)
        .await
        .unwrap();
    let e = s
        .get("config", &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
}

/// What one S3 request carried: the listener answers 404 to whatever comes and returns the
/// request's head, lower-cased.
async fn one_request_head(session_token: Option<&str>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        let mut conn = conn;
        let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
        head
    });
    let settings = lifeboat::store::s3::S3Settings {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("x".into()),
        access_key_id: Some("ASIAEXAMPLE".into()),
        secret_access_key: Some("b".into()),
        session_token: session_token.map(str::to_string),
    };
    let opts = StoreOptions {
        op_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let s = lifeboat::store::s3::S3Store::new("b", "", settings, opts)
        .await
        .unwrap();
    let _ = s.get("config", &CancellationToken::new()).await;
    server.join().unwrap()
}

#[tokio::test]
async fn s3_temporary_keys_send_their_session_token_and_sign_it() {
    let head = one_request_head(Some("tok-123")).await;
    assert!(head.contains("x-amz-security-token: tok-123\r\n"), "{head}");
    // The token is one of the signed headers, or the server refuses the signature.
    let auth = head
        .lines()
        .find(|l| l.starts_with("authorization:"))
        .unwrap_or_else(|| panic!("no authorization header: {head}"));
    assert!(auth.contains("x-amz-security-token"), "{auth}");

    let head = one_request_head(None).await;
    assert!(!head.contains("x-amz-security-token"), "{head}");
}

#[tokio::test]
async fn retry_over_faults_conforms_and_recovers() {
    let faulty = Arc::new(Faulty::new(Arc::new(MemoryStore::new())));
    let retry = Retry::new(faulty.clone(), 5, Duration::from_millis(1));
    conformance(&retry).await;

    let c = CancellationToken::new();
    // Two transient failures, then success.
    faulty.inject(Op::Put, "flaky", 0, 2, Fault::Transient);
    retry
        .put("flaky/1", Bytes::from_static(b"v"), &c)
        .await
        .unwrap();
    assert_eq!(
        retry.get("flaky/1", &c).await.unwrap(),
        Bytes::from_static(b"v")
    );
    // The answer to a put is lost: the retry finds the object and reports success.
    faulty.inject(Op::Put, "lost", 0, 1, Fault::LoseAnswer);
    retry
        .put("lost/1", Bytes::from_static(b"w"), &c)
        .await
        .unwrap();
    // Permanent errors are not retried.
    faulty.inject(Op::Get, "perm", 0, 1, Fault::Permanent);
    retry
        .put("perm/1", Bytes::from_static(b"p"), &c)
        .await
        .unwrap();
    assert!(matches!(
        retry.get("perm/1", &c).await,
        Err(StoreError::Permanent { .. })
    ));
    assert_eq!(
        retry.get("perm/1", &c).await.unwrap(),
        Bytes::from_static(b"p")
    );
    // Retries are bounded.
    faulty.inject(Op::Get, "always", 0, u64::MAX, Fault::Transient);
    retry
        .put("always/1", Bytes::from_static(b"a"), &c)
        .await
        .unwrap();
    assert!(retry.get("always/1", &c).await.unwrap_err().is_retryable());
}

#[test]
fn backoff_grows_and_is_capped() {
    use lifeboat::store::retry::backoff;
    let base = Duration::from_millis(100);
    for attempt in 1..30 {
        let d = backoff(base, attempt);
        let full = base
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(Duration::from_secs(30));
        assert!(d <= full && d >= full / 2, "attempt {attempt}: {d:?}");
    }
}
