//! The data mover's side of a volume backup: takes what a mover Job is given to ask the CSI
//! SnapshotMetadata service for changed blocks (address, CA bundle, token file, the two
//! VolumeSnapshots, the parent's source label) and the repository; gives the changed ranges
//! for [`crate::volume::backup`], or None whenever they cannot be trusted or had, so that the
//! backup compares hashes instead (slower, never wrong). Must not fail a backup: every problem
//! here is a warning and a fallback.
//!
//! ```text
//!  parent check ─► CA (PEM or base64 PEM) ─► token file ─► cbt::delta ─► GivenRanges
//!      └──────────────── any failure: None (compare hashes) ◄──────────────┘
//! ```

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::repository::Repository;
use crate::volume::backup::GivenRanges;
use crate::volume::cbt::{self, DeltaQuery, Endpoint};

/// The longest the SnapshotMetadata call may take before the backup compares hashes.
const DELTA_TIMEOUT: Duration = Duration::from_secs(600);

/// How to ask the SnapshotMetadata service for the blocks changed since the parent snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsiDelta {
    /// `host:port` of the service.
    pub address: String,
    /// Its CA bundle: PEM, or PEM in base64 (a SnapshotMetadataService's `spec.caCert`).
    pub ca: String,
    /// A file holding a ServiceAccount token for the service's audience.
    pub token_file: PathBuf,
    /// Namespace of the two VolumeSnapshots.
    pub namespace: String,
    /// The base snapshot (its CSI snapshot handle, or name for a v1alpha1 service).
    pub base: String,
    /// The VolumeSnapshot being read.
    pub target: String,
    /// The source label of the repository snapshot read from the base: the ranges are used
    /// only when the volume's newest snapshot carries it.
    pub parent: String,
}

impl CsiDelta {
    /// The service's endpoint: the CA decoded, the token read. None (and a warning) when the
    /// token cannot be read.
    pub fn endpoint(&self) -> Option<Endpoint> {
        let token = match std::fs::read_to_string(&self.token_file) {
            Ok(t) => t.trim().to_string(),
            Err(e) => {
                tracing::warn!(
                    "cannot read the ServiceAccount token {}: {e}; comparing hashes instead",
                    self.token_file.display()
                );
                return None;
            }
        };
        Some(Endpoint {
            address: self.address.clone(),
            ca_pem: ca_pem(&self.ca),
            token,
        })
    }

    fn query(&self) -> DeltaQuery {
        DeltaQuery {
            namespace: self.namespace.clone(),
            base: self.base.clone(),
            target: self.target.clone(),
        }
    }
}

/// A CA bundle as given: base64 of PEM (as `spec.caCert` holds it), else the PEM itself.
pub fn ca_pem(ca: &str) -> Vec<u8> {
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(ca.trim()) {
        Ok(pem) => pem,
        Err(_) => ca.as_bytes().to_vec(),
    }
}

/// Whether the newest snapshot of volume `name` was read from the base VolumeSnapshot (its
/// source is `parent`); only then do the service's ranges describe what changed since it.
pub async fn parent_is_base(repo: &Repository, name: &str, parent: &str) -> bool {
    match repo.latest_of(name).await {
        Ok(Some((_, p))) if p.source == parent => true,
        Ok(found) => {
            tracing::warn!(
                volume = name,
                newest = found.map(|(_, p)| p.source).unwrap_or_default(),
                expected = parent,
                "the newest snapshot was not read from the base VolumeSnapshot: comparing hashes instead of asking for changed blocks"
            );
            false
        }
        Err(e) => {
            tracing::warn!(volume = name, "{e}: comparing hashes instead");
            false
        }
    }
}

/// Asks the service for the ranges changed since the parent when the parent is the base's
/// snapshot; None (and a warning) whenever that cannot be done, so that the backup compares
/// hashes.
pub async fn changed_ranges(
    repo: &Repository,
    name: &str,
    delta: &CsiDelta,
    cancel: &CancellationToken,
) -> Option<GivenRanges> {
    if !parent_is_base(repo, name, &delta.parent).await {
        return None;
    }
    let ep = delta.endpoint()?;
    match cbt::delta(&ep, &delta.query(), cancel, DELTA_TIMEOUT).await {
        Ok(d) => {
            tracing::info!(
                volume = name,
                ranges = d.ranges.len(),
                changed_bytes = d.changed_bytes(),
                "changed blocks from the CSI SnapshotMetadata service"
            );
            Some(GivenRanges {
                source: format!(
                    "the SnapshotMetadata delta {} → {}/{}",
                    delta.base, delta.namespace, delta.target
                ),
                capacity: d.capacity,
                ranges: d.ranges,
            })
        }
        Err(e) => {
            tracing::warn!(volume = name, "{e}: comparing hashes instead");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(token_file: PathBuf, ca: &str) -> CsiDelta {
        CsiDelta {
            address: "127.0.0.1:1".into(),
            ca: ca.into(),
            token_file,
            namespace: "ns".into(),
            base: "base".into(),
            target: "target".into(),
            parent: "parent".into(),
        }
    }

    #[test]
    fn the_ca_is_base64_pem_or_pem() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
        assert_eq!(ca_pem(&format!("{b64}\n")), pem.as_bytes());
        assert_eq!(
            ca_pem(pem),
            pem.as_bytes(),
            "PEM is not base64: taken as it is"
        );
    }

    #[test]
    fn an_unreadable_token_gives_no_endpoint() {
        let d = tempfile::tempdir().unwrap();
        assert!(delta(d.path().join("missing"), "ca").endpoint().is_none());
    }

    #[test]
    fn the_token_is_read_trimmed() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("token");
        std::fs::write(&f, "secret-token\n").unwrap();
        let ep = delta(f, "pem").endpoint().unwrap();
        assert_eq!(ep.token, "secret-token");
        assert_eq!(ep.address, "127.0.0.1:1");
        assert_eq!(ep.ca_pem, b"pem");
    }
}
