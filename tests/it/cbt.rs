//! Changed block tracking: the CSI SnapshotMetadata client against a fake service on loopback
//! (TLS with the test CA under fixtures/cbt, HTTP/2, gRPC frames, a streamed answer), and
//! `volume backup` reading only the blocks the service reports, or comparing hashes whenever
//! the service cannot be trusted or reached.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::{Buf, Bytes, BytesMut};
use lifeboat::volume::cbt::{
    delta, BlockMetadata, CbtError, DeltaQuery, DeltaRequest, DeltaResponse, Endpoint, DELTA_PATH,
};
use lifeboat::volume::diff::ByteRange;
use prost::Message;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::{init_repo, lb, ok, run, tmp};

/// The service's answer to one request: messages, or a gRPC status code and message.
pub type Answer = Result<Vec<DeltaResponse>, (u32, String)>;
pub type Answerer = Arc<dyn Fn(&DeltaRequest) -> Answer + Send + Sync>;

pub struct FakeService {
    pub address: String,
    pub requests: Arc<Mutex<Vec<DeltaRequest>>>,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/cbt")
        .join(name)
}

pub fn ca_pem() -> Vec<u8> {
    std::fs::read(fixture("ca.pem")).unwrap()
}

/// `spec.caCert` of a SnapshotMetadataService: the PEM bundle in base64.
pub fn ca_cert_base64() -> String {
    base64::engine::general_purpose::STANDARD.encode(ca_pem())
}

/// Starts the fake service on its own thread and runtime (so that a test blocked on a
/// mover process does not stall it). With `break_after = Some(n)`, the first call's stream is
/// reset after n messages, as a network fault would cut it.
pub fn serve_metadata(answer: Answerer, break_after: Option<usize>) -> FakeService {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(fixture("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let recorded = requests.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let broken = Arc::new(Mutex::new(break_after));
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, answer, recorded, broken) = (
                    acceptor.clone(),
                    answer.clone(),
                    recorded.clone(),
                    broken.clone(),
                );
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return; // a client that does not trust the CA
                    };
                    let mut conn = h2::server::handshake(tls).await.unwrap();
                    while let Some(Ok((req, respond))) = conn.accept().await {
                        let (answer, recorded, broken) =
                            (answer.clone(), recorded.clone(), broken.clone());
                        tokio::spawn(async move {
                            one_call(req, respond, answer, recorded, broken).await;
                        });
                    }
                });
            }
        });
    });
    FakeService { address, requests }
}

async fn one_call(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    answer: Answerer,
    recorded: Arc<Mutex<Vec<DeltaRequest>>>,
    broken: Arc<Mutex<Option<usize>>>,
) {
    assert_eq!(req.uri().path(), DELTA_PATH);
    assert_eq!(req.headers()["content-type"], "application/grpc");
    let mut body = req.into_body();
    let mut frames = Frames::default();
    let mut msg = None;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        frames.push(&chunk);
        if let Some(m) = frames.next_message().unwrap() {
            msg = Some(DeltaRequest::decode(m).unwrap());
        }
    }
    let msg = msg.expect("one request message");
    recorded.lock().unwrap().push(msg.clone());
    let headers = |status: Option<(u32, &str)>| {
        let mut r = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc");
        if let Some((code, message)) = status {
            r = r
                .header("grpc-status", code.to_string())
                .header("grpc-message", message.replace(' ', "%20"));
        }
        r.body(()).unwrap()
    };
    match answer(&msg) {
        Err((code, message)) => {
            // Trailers-only.
            respond
                .send_response(headers(Some((code, &message))), true)
                .unwrap();
        }
        Ok(messages) => {
            let mut send = respond.send_response(headers(None), false).unwrap();
            let cut = broken.lock().unwrap().take();
            for (i, m) in messages.iter().enumerate() {
                if cut == Some(i) {
                    // Let what was sent reach the client first, as on a real cut.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    send.send_reset(h2::Reason::INTERNAL_ERROR);
                    return;
                }
                send.send_data(frame(&m.encode_to_vec()), false).unwrap();
            }
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            send.send_trailers(trailers).unwrap();
        }
    }
}

/// One length-prefixed gRPC message (uncompressed), as the fake service sends it.
fn frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(message.len() as u32).to_be_bytes());
    b.extend_from_slice(message);
    b.freeze()
}

/// Splits the request stream into gRPC messages, as the fake service reads it.
#[derive(Default)]
struct Frames {
    buf: BytesMut,
}

impl Frames {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole message, if one has arrived.
    fn next_message(&mut self) -> Result<Option<Bytes>, String> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err("a compressed message, though none was asked for".into());
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

/// The blocks of `block` bytes that differ between two images, as the service reports them:
/// fixed-length blocks from the request's starting offset on, `per_message` to a message.
pub fn diff_answer(a: &[u8], b: &[u8], block: usize, from: u64, per_message: usize) -> Answer {
    assert_eq!(a.len(), b.len());
    let changed: Vec<BlockMetadata> = (0..a.len())
        .step_by(block)
        .filter(|&o| a[o..o + block] != b[o..o + block])
        .filter(|&o| (o + block) as u64 > from)
        .map(|o| BlockMetadata {
            byte_offset: o as i64,
            size_bytes: block as i64,
        })
        .collect();
    let msg = |c: &[BlockMetadata]| DeltaResponse {
        block_metadata_type: 1,
        volume_capacity_bytes: a.len() as i64,
        block_metadata: c.to_vec(),
    };
    if changed.is_empty() {
        return Ok(vec![msg(&[])]);
    }
    Ok(changed.chunks(per_message).map(msg).collect())
}

fn endpoint(address: &str, ca: Vec<u8>, token: &str) -> Endpoint {
    Endpoint {
        address: address.to_string(),
        ca_pem: ca,
        token: token.into(),
    }
}

fn query() -> DeltaQuery {
    DeltaQuery {
        namespace: "db".into(),
        base: "snap-handle-1".into(),
        target: "snap-2".into(),
    }
}

fn image(seed: u8, len: usize) -> Vec<u8> {
    let mut x = seed as u64 | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Two images 4 MiB long that differ in three 4 KiB blocks.
fn two_images() -> (Vec<u8>, Vec<u8>) {
    let a = image(7, 4 << 20);
    let mut b = a.clone();
    for o in [4096usize, 8192, 3 << 20] {
        b[o..o + 4096].fill(0xAB);
    }
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_streams_in_pieces_and_resumes_after_a_cut_stream() {
    let (a, b) = two_images();
    let answer: Answerer = Arc::new(move |r: &DeltaRequest| {
        if r.security_token != "good" {
            return Err((16, "token rejected".into()));
        }
        assert_eq!(
            (
                r.namespace.as_str(),
                r.base_snapshot.as_str(),
                r.target_snapshot_name.as_str()
            ),
            ("db", "snap-handle-1", "snap-2")
        );
        diff_answer(&a, &b, 4096, r.starting_offset as u64, 1)
    });
    let svc = serve_metadata(answer, Some(2));
    let cancel = CancellationToken::new();
    let d = delta(
        &endpoint(&svc.address, ca_pem(), "good"),
        &query(),
        &cancel,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(d.capacity, Some(4 << 20));
    assert_eq!(
        d.ranges,
        vec![
            ByteRange {
                offset: 4096,
                length: 8192
            },
            ByteRange {
                offset: 3 << 20,
                length: 4096
            }
        ]
    );
    let reqs = svc.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 2, "cut once, resumed once");
    assert_eq!(reqs[0].starting_offset, 0);
    assert_eq!(
        reqs[1].starting_offset, 12288,
        "resumed after the last range received"
    );

    // A rejected token: the status, its name, and what to fix.
    let e = delta(
        &endpoint(&svc.address, ca_pem(), "stolen"),
        &query(),
        &cancel,
        Duration::from_secs(30),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, CbtError::Status { code: 16, .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("UNAUTHENTICATED")
            && text.contains("token rejected")
            && text.contains("ServiceAccount"),
        "{text}"
    );

    // A CA that did not sign the service's certificate.
    let other = std::fs::read(fixture("other-ca.pem")).unwrap();
    let e = delta(
        &endpoint(&svc.address, other, "good"),
        &query(),
        &cancel,
        Duration::from_secs(30),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, CbtError::Tls { .. }), "{e}");
    assert!(e.to_string().contains("caCert"), "{e}");

    // Nobody listening.
    let port = crate::support::free_port();
    let e = delta(
        &endpoint(&format!("127.0.0.1:{port}"), ca_pem(), "good"),
        &query(),
        &cancel,
        Duration::from_secs(30),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, CbtError::Connect { .. }), "{e}");
}

/// Runs `volume backup` of `img` as `vol` with the delta arguments; returns its JSON.
fn backup_with_delta(
    repo: &Path,
    img: &Path,
    label: &str,
    svc: &str,
    parent: &str,
    dir: &Path,
) -> (Value, String) {
    let token = dir.join("token");
    std::fs::write(&token, "good\n").unwrap();
    let r = ok(run(lb(repo)
        .env("LIFEBOAT_CSI_DELTA_CA", ca_cert_base64())
        .args([
            "--json", "volume", "backup", "--name", "vol", "--label", label,
        ])
        .args(["--csi-delta-address", svc, "--csi-delta-namespace", "db"])
        .args([
            "--csi-delta-base",
            "snap-handle-1",
            "--csi-delta-target",
            "snap-2",
        ])
        .args(["--csi-delta-parent", parent])
        .arg("--csi-delta-token-file")
        .arg(&token)
        .arg(img)));
    (serde_json::from_str(&r.stdout).unwrap(), r.stderr)
}

#[test]
fn volume_backup_reads_only_the_blocks_the_service_reports_changed() {
    let d = tmp();
    let repo = init_repo(d.path());
    let (a, b) = two_images();
    let img = d.path().join("vol.img");
    std::fs::write(&img, &a).unwrap();
    ok(run(lb(&repo)
        .args(["volume", "backup", "--name", "vol", "--label", "base-1"])
        .arg(&img)));
    std::fs::write(&img, &b).unwrap();

    let (a2, b2) = (a.clone(), b.clone());
    let failing = Arc::new(Mutex::new(false));
    let fail = failing.clone();
    let answer: Answerer = Arc::new(move |r: &DeltaRequest| {
        if *fail.lock().unwrap() {
            return Err((9, "changed block tracking is off".into()));
        }
        diff_answer(&a2, &b2, 4096, r.starting_offset as u64, 2)
    });
    let svc = serve_metadata(answer, None);

    // The parent was read from the base: only the two 64 KiB blocks holding the changes.
    let (out, _) = backup_with_delta(&repo, &img, "second", &svc.address, "base-1", d.path());
    assert_eq!(out["change_source"], "changed-ranges", "{out}");
    assert_eq!(out["read_bytes"], 2 * 65536, "{out}");
    let restored = d.path().join("restored.img");
    ok(run(lb(&repo)
        .args(["volume", "restore", "vol:latest"])
        .arg(&restored)));
    assert!(
        std::fs::read(&restored).unwrap() == b,
        "restores bit-identical"
    );

    // The newest snapshot is not the base's: the ranges would be wrong, so hashes are compared.
    let mut c = b.clone();
    c[100_000] ^= 1;
    std::fs::write(&img, &c).unwrap();
    let (out, stderr) = backup_with_delta(&repo, &img, "third", &svc.address, "base-1", d.path());
    assert_eq!(out["change_source"], "hash-compare", "{out}");
    assert!(
        stderr.contains("not read from the base VolumeSnapshot"),
        "{stderr}"
    );
    assert_eq!(
        svc.requests.lock().unwrap().len(),
        1,
        "the service was not even asked"
    );

    // The service fails: hashes are compared, and the backup is still right.
    *failing.lock().unwrap() = true;
    c[200_000] ^= 1;
    std::fs::write(&img, &c).unwrap();
    let (out, stderr) = backup_with_delta(&repo, &img, "fourth", &svc.address, "third", d.path());
    assert_eq!(out["change_source"], "hash-compare", "{out}");
    assert!(
        stderr.contains("FAILED_PRECONDITION") && stderr.contains("comparing hashes"),
        "{stderr}"
    );
    ok(run(lb(&repo)
        .args(["volume", "restore", "vol:latest", "--overwrite"])
        .arg(&restored)));
    assert!(std::fs::read(&restored).unwrap() == c);
    ok(run(lb(&repo).args(["repo", "check", "--read-data"])));
}
