//! The DR site's own files (not in the repository: on the site, beside its volumes or on a
//! live namespace's journal claim), documented in `schema/FORMAT.md` ("The DR site's files")
//! and `schema/standby-*.schema.json`: the journal of one volume's changed blocks
//! (`<volume>.lifeboat-journal`, magic [`JOURNAL_MAGIC`]), the commit marker of a namespace
//! (`.lifeboat-commit.json`), and the record of what a volume holds (`<volume>.lifeboat-applied`).
//! Also the per-claim report a standby Job hands back, and the modes it names.
//!
//! Takes nothing and does no IO: names, plain data types and the journal entry codec. A site
//! written by one lifeboat is finished by the next, so a change here is a format change.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SnapshotId;

/// Beside a volume (or in the journal directory, per claim): what it holds.
pub const APPLIED_SUFFIX: &str = ".lifeboat-applied";
/// Beside a volume (or in the journal directory, per claim): its changed blocks, staged.
pub const JOURNAL_SUFFIX: &str = ".lifeboat-journal";
/// Beside a volume new to the site: the volume, restored whole, staged.
pub const NEW_SUFFIX: &str = ".lifeboat-new";
/// What a volume restore writes before the file is complete (`crate::volume::restore`).
pub const PARTIAL_SUFFIX: &str = ".lifeboat-partial";
/// In a namespace's volume directory (or the journal directory): the commit marker.
pub const COMMIT_FILE: &str = ".lifeboat-commit.json";

/// The first 8 bytes of a journal.
pub const JOURNAL_MAGIC: &[u8; 8] = b"LBJRNL01";
/// Bytes of a journal entry's header: u64 offset, u32 length, u8 kind (little-endian).
pub const JOURNAL_ENTRY_HEAD: usize = 13;

/// `path` with `suffix` appended to its file name (`v.img` → `v.img.lifeboat-journal`).
pub fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The header of one journal entry: `len` bytes at `offset` of the target, followed by them
/// (`data`), or zeros (no bytes follow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalEntry {
    pub offset: u64,
    pub len: u32,
    pub data: bool,
}

impl JournalEntry {
    pub fn encode(&self) -> [u8; JOURNAL_ENTRY_HEAD] {
        let mut h = [0u8; JOURNAL_ENTRY_HEAD];
        h[..8].copy_from_slice(&self.offset.to_le_bytes());
        h[8..12].copy_from_slice(&self.len.to_le_bytes());
        h[12] = self.data as u8;
        h
    }

    /// Kind 1 is data; any other kind is zeros.
    pub fn decode(h: &[u8; JOURNAL_ENTRY_HEAD]) -> JournalEntry {
        JournalEntry {
            offset: u64::from_le_bytes(h[..8].try_into().expect("8 bytes")),
            len: u32::from_le_bytes(h[8..12].try_into().expect("4 bytes")),
            data: h[12] == 1,
        }
    }
}

/// `<volume>.lifeboat-applied`: what a volume of the site holds
/// (`standby-applied.schema.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub snapshot: SnapshotId,
    pub size: u64,
}

/// How a commit item reaches its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommitKind {
    /// The staged journal is replayed into the target.
    Journal,
    /// The staged file (a volume new to the site) is renamed over the target.
    New,
    /// The content is the same: only the applied record moves.
    Record,
}

impl fmt::Display for CommitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommitKind::Journal => "journal",
            CommitKind::New => "new",
            CommitKind::Record => "record",
        })
    }
}

/// One volume's part of a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitItem {
    pub pvc: String,
    pub target: PathBuf,
    pub kind: CommitKind,
    pub staged: PathBuf,
    pub snapshot: SnapshotId,
    pub size: u64,
    /// BLAKE3 of the journal (journals only).
    pub hash: Option<String>,
    /// Where what the target holds is recorded, when not beside it (a block device's record
    /// lives in the journal directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<PathBuf>,
}

impl CommitItem {
    /// Where the target's [`Applied`] record lives.
    pub fn record_path(&self) -> PathBuf {
        self.record
            .clone()
            .unwrap_or_else(|| with_suffix(&self.target, APPLIED_SUFFIX))
    }
}

/// `.lifeboat-commit.json`: every staged volume of one backup in one namespace
/// (`standby-commit.schema.json`). Written atomically after every item is staged; while it
/// exists, each item is replayed (again) until the marker is removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitMarker {
    pub backup: String,
    pub items: Vec<CommitItem>,
}

/// What applying one volume was: its report's `mode`, also in a standby Job's per-claim
/// report (`lifeboat standby apply-devices --report-file`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeMode {
    /// Written whole (new to the site, or of unknown content).
    Full,
    /// Only the blocks whose map entries differ.
    Delta,
    /// Already held (at most its record moved).
    #[default]
    Unchanged,
    /// A live claim as a restore Job reported it, other than created (`Full`).
    Updated,
    Skipped,
    Failed,
}

impl fmt::Display for VolumeMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VolumeMode::Full => "full",
            VolumeMode::Delta => "delta",
            VolumeMode::Unchanged => "unchanged",
            VolumeMode::Updated => "updated",
            VolumeMode::Skipped => "skipped",
            VolumeMode::Failed => "failed",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// A marker as the lifeboat before the typed kinds wrote it.
    const OLD_MARKER: &str = r#"{
  "backup": "db-hourly-20260101-000000",
  "items": [
    {
      "pvc": "data-db-0",
      "target": "/dr/volumes/db/data-db-0.img",
      "kind": "journal",
      "staged": "/dr/volumes/db/data-db-0.img.lifeboat-journal",
      "snapshot": "0707070707070707070707070707070707070707070707070707070707070707",
      "size": 8192,
      "hash": "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    },
    {
      "pvc": "data-db-1",
      "target": "/dev/lifeboat-1",
      "kind": "new",
      "staged": "/dev/lifeboat-1.lifeboat-new",
      "snapshot": "0707070707070707070707070707070707070707070707070707070707070707",
      "size": 4096,
      "hash": null,
      "record": "/var/lib/lifeboat-standby/data-db-1.lifeboat-applied"
    },
    {
      "pvc": "data-db-2",
      "target": "/dr/volumes/db/data-db-2.img",
      "kind": "record",
      "staged": "/dr/volumes/db/data-db-2.img",
      "snapshot": "0707070707070707070707070707070707070707070707070707070707070707",
      "size": 4096,
      "hash": null
    }
  ]
}"#;

    #[test]
    fn a_commit_marker_written_before_the_typed_kinds_still_reads_and_writes_back_the_same() {
        let m: CommitMarker = serde_json::from_str(OLD_MARKER).unwrap();
        let kinds: Vec<CommitKind> = m.items.iter().map(|i| i.kind).collect();
        assert_eq!(
            kinds,
            [CommitKind::Journal, CommitKind::New, CommitKind::Record]
        );
        assert_eq!(
            m.items[0].record_path(),
            PathBuf::from("/dr/volumes/db/data-db-0.img.lifeboat-applied")
        );
        assert_eq!(
            m.items[1].record_path(),
            PathBuf::from("/var/lib/lifeboat-standby/data-db-1.lifeboat-applied")
        );
        let again = serde_json::to_string_pretty(&m).unwrap();
        assert_eq!(again, OLD_MARKER, "the stored form does not change");
    }

    #[test]
    fn journal_entry_heads_round_trip_and_any_other_kind_is_zeros() {
        let e = JournalEntry {
            offset: 1 << 40,
            len: 65536,
            data: true,
        };
        let h = e.encode();
        assert_eq!(h.len(), JOURNAL_ENTRY_HEAD);
        assert_eq!(&h[..8], &(1u64 << 40).to_le_bytes());
        assert_eq!(JournalEntry::decode(&h), e);
        let mut z = h;
        z[12] = 0;
        assert!(!JournalEntry::decode(&z).data);
        z[12] = 7;
        assert!(!JournalEntry::decode(&z).data);
    }

    #[test]
    fn modes_and_kinds_keep_their_names() {
        for (m, s) in [
            (VolumeMode::Full, "full"),
            (VolumeMode::Delta, "delta"),
            (VolumeMode::Unchanged, "unchanged"),
            (VolumeMode::Updated, "updated"),
            (VolumeMode::Skipped, "skipped"),
            (VolumeMode::Failed, "failed"),
        ] {
            assert_eq!(serde_json::to_value(m).unwrap(), s);
            assert_eq!(m.to_string(), s);
        }
        for k in [CommitKind::Journal, CommitKind::New, CommitKind::Record] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.to_string());
        }
    }

    fn schema(name: &str) -> Value {
        let path = format!("{}/schema/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// Every key of `v` is a property of `s`, and every required property is a key.
    fn fits(v: &Value, s: &Value, what: &str) {
        let props = s["properties"].as_object().unwrap();
        let obj = v.as_object().unwrap();
        for k in obj.keys() {
            assert!(props.contains_key(k), "{what}: `{k}` is not in the schema");
        }
        for r in s["required"].as_array().unwrap() {
            assert!(obj.contains_key(r.as_str().unwrap()), "{what}: missing {r}");
        }
    }

    #[test]
    fn the_site_files_match_their_schemas() {
        let m: Value = serde_json::from_str(OLD_MARKER).unwrap();
        let s = schema("standby-commit.schema.json");
        fits(&m, &s, "commit marker");
        let item = &s["$defs"]["item"];
        let kinds = item["properties"]["kind"]["enum"].as_array().unwrap();
        assert_eq!(kinds.len(), 3);
        for i in m["items"].as_array().unwrap() {
            fits(i, item, "commit item");
            assert!(kinds.contains(&i["kind"]));
        }
        let a = serde_json::to_value(Applied {
            snapshot: SnapshotId([7; 32]),
            size: 4096,
        })
        .unwrap();
        fits(&a, &schema("standby-applied.schema.json"), "applied record");
    }
}
