//! Changed blocks from the CSI SnapshotMetadata service (Kubernetes changed block tracking,
//! KEP-3314). Takes the service's address and CA bundle (from its `SnapshotMetadataService`
//! object), an audience-scoped ServiceAccount token and two snapshots of one volume; gives
//! the byte ranges that differ between them, merged and checked, for the volume backup to
//! read instead of comparing every block.
//!
//! It makes the one streaming call it needs, `GetMetadataDelta`, with tonic's gRPC client
//! (messages in `prost`, declared here, so no protoc) over a TLS connection of its own. An interrupted stream is resumed from the end of
//! the last range received. Must not be trusted beyond that: the caller checks that the base
//! snapshot is the one the repository's parent snapshot was read from, and whatever goes
//! wrong here makes the caller compare hashes instead (slower, never wrong).

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::volume::diff::ByteRange;

/// gRPC method path of `GetMetadataDelta` (package `snapshotmetadata`).
pub const DELTA_PATH: &str = "/snapshotmetadata.SnapshotMetadata/GetMetadataDelta";

/// The largest message accepted (gRPC's default limit).
const MAX_MESSAGE: usize = 4 << 20;

/// Attempts of one call, resuming after the last range received.
const ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum CbtError {
    #[error("cannot reach the SnapshotMetadata service at {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("TLS with the SnapshotMetadata service at {address} failed: {reason}; is `spec.caCert` of its SnapshotMetadataService the CA that signed the service's certificate?")]
    Tls { address: String, reason: String },
    #[error("the SnapshotMetadata service answered {} ({code}): {message}{}", code_name(*code), hint(*code))]
    Status { code: u32, message: String },
    #[error("the SnapshotMetadata service at {address} broke the protocol: {reason}")]
    Protocol { address: String, reason: String },
    #[error("no complete answer from the SnapshotMetadata service within {0:?}")]
    Timeout(Duration),
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Input(String),
}

impl CbtError {
    /// Worth another attempt: the network or the service may recover.
    pub fn is_retryable(&self) -> bool {
        match self {
            CbtError::Connect { .. } | CbtError::Timeout(_) => true,
            // UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED
            CbtError::Status { code, .. } => matches!(code, 4 | 8 | 10 | 14),
            _ => false,
        }
    }
}

fn code_name(code: u32) -> &'static str {
    match code {
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        16 => "UNAUTHENTICATED",
        _ => "an error",
    }
}

fn hint(code: u32) -> &'static str {
    match code {
        5 => "; one of the two snapshots is gone",
        7 | 16 => "; the mover's ServiceAccount needs a token for the service's audience and `get` on VolumeSnapshots in its namespace (deploy/mover-secret.yaml)",
        9 => "; changed block tracking is not enabled on the storage",
        _ => "",
    }
}

/// `GetMetadataDeltaRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct DeltaRequest {
    #[prost(string, tag = "1")]
    pub security_token: String,
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// The base snapshot's CSI snapshot handle (`base_snapshot_id`; the sidecar's first
    /// release, v0.1.0, took the VolumeSnapshot name in the same field).
    #[prost(string, tag = "3")]
    pub base_snapshot: String,
    #[prost(string, tag = "4")]
    pub target_snapshot_name: String,
    #[prost(int64, tag = "5")]
    pub starting_offset: i64,
    #[prost(int32, tag = "6")]
    pub max_results: i32,
}

/// `BlockMetadata`.
#[derive(Clone, PartialEq, Message)]
pub struct BlockMetadata {
    #[prost(int64, tag = "1")]
    pub byte_offset: i64,
    #[prost(int64, tag = "2")]
    pub size_bytes: i64,
}

/// `GetMetadataDeltaResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct DeltaResponse {
    /// `BlockMetadataType`: 1 fixed-length blocks, 2 variable-length extents.
    #[prost(int32, tag = "1")]
    pub block_metadata_type: i32,
    #[prost(int64, tag = "2")]
    pub volume_capacity_bytes: i64,
    #[prost(message, repeated, tag = "3")]
    pub block_metadata: Vec<BlockMetadata>,
}

/// Where the service is and how to talk to it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port`, as in the SnapshotMetadataService's `spec.address`.
    pub address: String,
    /// PEM CA bundle (`spec.caCert`).
    pub ca_pem: Vec<u8>,
    /// ServiceAccount token for the service's audience.
    pub token: String,
}

/// Which delta to ask for.
#[derive(Debug, Clone)]
pub struct DeltaQuery {
    pub namespace: String,
    pub base: String,
    pub target: String,
}

/// The answer: the volume's size, and the changed byte ranges, sorted and merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// None when the stream held no message at all: nothing changed (the CSI spec lets a
    /// plugin send no response for an empty delta, as the test cluster's plugin does), and
    /// the service said no size.
    pub capacity: Option<u64>,
    pub ranges: Vec<ByteRange>,
}

impl Delta {
    pub fn changed_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.length).sum()
    }
}

/// Accumulates ranges across responses, checking the order the API promises (pure).
#[derive(Debug, Default)]
pub struct DeltaBuilder {
    capacity: Option<u64>,
    ranges: Vec<ByteRange>,
    /// End of the last range: where a resumed call starts.
    pub next_offset: u64,
}

impl DeltaBuilder {
    pub fn add(&mut self, r: &DeltaResponse) -> Result<(), String> {
        let cap = u64::try_from(r.volume_capacity_bytes)
            .map_err(|_| format!("a negative capacity {}", r.volume_capacity_bytes))?;
        match self.capacity {
            None => self.capacity = Some(cap),
            Some(c) if c != cap => {
                return Err(format!("the capacity changed from {c} to {cap} bytes"));
            }
            Some(_) => {}
        }
        for b in &r.block_metadata {
            let (Ok(offset), Ok(length)) =
                (u64::try_from(b.byte_offset), u64::try_from(b.size_bytes))
            else {
                return Err(format!(
                    "a negative range {}+{}",
                    b.byte_offset, b.size_bytes
                ));
            };
            let end = offset.checked_add(length).filter(|e| *e <= cap);
            let Some(end) = end.filter(|_| length > 0) else {
                return Err(format!(
                    "range {offset}+{length} is empty or outside the volume ({cap} bytes)"
                ));
            };
            if offset < self.next_offset && !self.ranges.is_empty() {
                return Err(format!(
                    "range {offset}+{length} starts before the end of the previous one ({})",
                    self.next_offset
                ));
            }
            match self.ranges.last_mut() {
                Some(last) if last.offset + last.length == offset => last.length += length,
                _ => self.ranges.push(ByteRange { offset, length }),
            }
            self.next_offset = end;
        }
        Ok(())
    }

    pub fn finish(self) -> Result<Delta, String> {
        Ok(Delta {
            capacity: self.capacity,
            ranges: self.ranges,
        })
    }
}

/// Asks for the ranges changed between `q.base` and `q.target`, within `timeout` overall.
pub async fn delta(
    ep: &Endpoint,
    q: &DeltaQuery,
    cancel: &CancellationToken,
    timeout: Duration,
) -> Result<Delta, CbtError> {
    let work = async {
        let mut acc = DeltaBuilder::default();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match call(ep, q, &mut acc).await {
                Ok(()) => break,
                Err(e) if e.is_retryable() && attempt < ATTEMPTS => {
                    tracing::warn!(
                        attempt,
                        resume_at = acc.next_offset,
                        "SnapshotMetadata call interrupted, resuming: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(500 * attempt as u64)).await;
                }
                Err(e) => return Err(e),
            }
        }
        acc.finish().map_err(|reason| CbtError::Protocol {
            address: ep.address.clone(),
            reason,
        })
    };
    tokio::select! {
        _ = cancel.cancelled() => Err(CbtError::Cancelled),
        r = tokio::time::timeout(timeout, work) => r.unwrap_or(Err(CbtError::Timeout(timeout))),
    }
}

fn tls_config(ep: &Endpoint) -> Result<rustls::ClientConfig, CbtError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let tls_err = |reason: String| CbtError::Tls {
        address: ep.address.clone(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ep.ca_pem) {
        let cert = cert.map_err(|e| tls_err(format!("the CA bundle does not parse: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| tls_err(format!("a CA certificate is unusable: {e}")))?;
    }
    if roots.is_empty() {
        return Err(tls_err("the CA bundle holds no certificate".into()));
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls_err(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// The TLS connection to the service (TCP, then TLS with the service's CA only), its
/// failures told apart: unreachable, or a certificate the CA did not sign.
async fn connect_tls(
    ep: &Endpoint,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, CbtError> {
    let address = &ep.address;
    let host = address
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']))
        .ok_or_else(|| CbtError::Input(format!("address `{address}` is not host:port")))?;
    let server_name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| CbtError::Input(format!("address `{address}`: {e}")))?;
    let cfg = tls_config(ep)?;
    let connect = |reason: String| CbtError::Connect {
        address: address.clone(),
        reason,
    };
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| connect(e.to_string()))?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(server_name, tcp)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => CbtError::Tls {
                address: address.clone(),
                reason: e.to_string(),
            },
            _ => connect(e.to_string()),
        })
}

/// A gRPC status as the call's error: one the service sent, or (a status with a source)
/// one tonic made of a broken connection or stream, which is worth resuming.
fn status_error(address: &str, s: tonic::Status) -> CbtError {
    if let Some(source) = std::error::Error::source(&s) {
        return CbtError::Connect {
            address: address.to_string(),
            reason: format!("stream broke: {source}"),
        };
    }
    CbtError::Status {
        code: s.code() as u32,
        message: s.message().to_string(),
    }
}

/// One streaming call from `acc.next_offset` on, adding what arrives to `acc`: tonic's
/// client (HTTP/2 and gRPC framing) over the TLS connection of [`connect_tls`].
async fn call(ep: &Endpoint, q: &DeltaQuery, acc: &mut DeltaBuilder) -> Result<(), CbtError> {
    let address = ep.address.clone();
    let connect = |reason: String| CbtError::Connect {
        address: address.clone(),
        reason,
    };
    let tls = connect_tls(ep).await?;
    // The channel's one connection is the one made above (tonic's own TLS would not say a
    // CA problem from a network one); a reconnect finds none and fails the call, which
    // `delta` resumes on a new one.
    let once = Arc::new(std::sync::Mutex::new(Some(hyper_util::rt::TokioIo::new(
        tls,
    ))));
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{address}"))
        .map_err(|e| CbtError::Input(format!("address `{address}`: {e}")))?
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let io = once.lock().expect("connection slot").take();
            async move { io.ok_or_else(|| std::io::Error::other("the call's connection is gone")) }
        }))
        .await
        .map_err(|e| connect(format!("HTTP/2: {e}")))?;
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_MESSAGE);
    grpc.ready()
        .await
        .map_err(|e| connect(format!("HTTP/2: {e}")))?;
    let request = tonic::Request::new(DeltaRequest {
        security_token: ep.token.clone(),
        namespace: q.namespace.clone(),
        base_snapshot: q.base.clone(),
        target_snapshot_name: q.target.clone(),
        starting_offset: acc.next_offset as i64,
        max_results: 0,
    });
    let codec = tonic_prost::ProstCodec::<DeltaRequest, DeltaResponse>::default();
    let mut stream = grpc
        .server_streaming(
            request,
            http::uri::PathAndQuery::from_static(DELTA_PATH),
            codec,
        )
        .await
        .map_err(|s| status_error(&address, s))?
        .into_inner();
    while let Some(r) = stream
        .message()
        .await
        .map_err(|s| status_error(&address, s))?
    {
        acc.add(&r).map_err(|reason| CbtError::Protocol {
            address: address.clone(),
            reason,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(cap: i64, ranges: &[(i64, i64)]) -> DeltaResponse {
        DeltaResponse {
            block_metadata_type: 1,
            volume_capacity_bytes: cap,
            block_metadata: ranges
                .iter()
                .map(|&(o, s)| BlockMetadata {
                    byte_offset: o,
                    size_bytes: s,
                })
                .collect(),
        }
    }

    #[test]
    fn messages_round_trip_on_the_wire() {
        let r = resp(1 << 30, &[(0, 4096), (1 << 20, 65536)]);
        assert_eq!(DeltaResponse::decode(&r.encode_to_vec()[..]).unwrap(), r);
        let q = DeltaRequest {
            security_token: "t".into(),
            namespace: "db".into(),
            base_snapshot: "snap-handle".into(),
            target_snapshot_name: "s2".into(),
            starting_offset: 4096,
            max_results: 0,
        };
        // Field 3 is a string with tag 3: 0x1a, then its length.
        let wire = q.encode_to_vec();
        let at = wire.iter().position(|&b| b == 0x1a).unwrap();
        assert_eq!(&wire[at + 2..at + 2 + 11], b"snap-handle");
    }

    #[test]
    fn ranges_merge_and_bad_answers_are_refused() {
        let mut b = DeltaBuilder::default();
        b.add(&resp(1 << 20, &[(0, 4096), (4096, 4096)])).unwrap();
        b.add(&resp(1 << 20, &[(65536, 4096)])).unwrap();
        assert_eq!(b.next_offset, 65536 + 4096);
        let d = b.finish().unwrap();
        assert_eq!(
            d.ranges,
            vec![
                ByteRange {
                    offset: 0,
                    length: 8192
                },
                ByteRange {
                    offset: 65536,
                    length: 4096
                }
            ]
        );
        assert_eq!(d.changed_bytes(), 12288);
        for bad in [
            vec![resp(1 << 20, &[(8192, 4096), (0, 4096)])], // out of order
            vec![resp(1 << 20, &[((1 << 20) - 10, 4096)])],  // past the end
            vec![resp(1 << 20, &[(0, 0)])],                  // empty
            vec![resp(1 << 20, &[(-1, 4096)])],              // negative
            vec![resp(1 << 20, &[]), resp(2 << 20, &[])],    // capacity changes
        ] {
            let mut b = DeltaBuilder::default();
            let r: Result<(), String> = bad.iter().try_for_each(|r| b.add(r));
            assert!(r.is_err(), "{bad:?}");
        }
        // A stream ended by status OK with no message: nothing changed (the CSI spec does not
        // require a message for an empty delta; the test cluster's plugin sends none).
        let none = DeltaBuilder::default().finish().unwrap();
        assert_eq!((none.capacity, none.ranges.len()), (None, 0));
    }
}
