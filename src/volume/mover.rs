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
    /// The base snapshot's CSI snapshot handle.
    pub base: String,
    /// The VolumeSnapshot being read.
    pub target: String,
    /// The source label of the repository snapshot read from the base: the ranges are used
    /// only when the volume's newest snapshot carries it.
    pub parent: String,
}

impl CsiDelta {
    /// The service's endpoint: the CA decoded, the token read; why not when the token cannot
    /// be read.
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        let token = match std::fs::read_to_string(&self.token_file) {
            Ok(t) => t.trim().to_string(),
            Err(e) => {
                return Err(format!(
                    "cannot read the ServiceAccount token {}: {e}",
                    self.token_file.display()
                ))
            }
        };
        Ok(Endpoint {
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
/// Err: why not.
pub async fn parent_is_base(repo: &Repository, name: &str, parent: &str) -> Result<(), String> {
    match repo.latest_of(name).await {
        Ok(Some((_, p))) if p.source == parent => Ok(()),
        Ok(found) => Err(format!(
            "the newest snapshot of {name} ({}) was not read from the base VolumeSnapshot ({parent})",
            found.map(|(_, p)| p.source).unwrap_or_else(|| "none".into())
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Asks the service for the ranges changed since the parent when the parent is the base's
/// snapshot; whenever that cannot be done, why (also logged), so that the backup compares
/// hashes and the mover can say so.
pub async fn changed_ranges(
    repo: &Repository,
    name: &str,
    delta: &CsiDelta,
    cancel: &CancellationToken,
) -> Result<GivenRanges, String> {
    let asked = async {
        parent_is_base(repo, name, &delta.parent).await?;
        let ep = delta.endpoint()?;
        cbt::delta(&ep, &delta.query(), cancel, DELTA_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
    };
    match asked.await {
        Ok(d) => {
            tracing::info!(
                volume = name,
                ranges = d.ranges.len(),
                changed_bytes = d.changed_bytes(),
                "changed blocks from the CSI SnapshotMetadata service"
            );
            Ok(GivenRanges {
                source: format!(
                    "the SnapshotMetadata delta {} → {}/{}",
                    delta.base, delta.namespace, delta.target
                ),
                capacity: d.capacity,
                ranges: d.ranges,
            })
        }
        Err(why) => {
            tracing::warn!(volume = name, "{why}: comparing hashes instead");
            Err(why)
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
        assert!(delta(d.path().join("missing"), "ca").endpoint().is_err());
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
