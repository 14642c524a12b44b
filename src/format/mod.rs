//! The on-store format, version 1: every struct that is written to a repository lives here,
//! and `schema/FORMAT.md` plus `schema/*.schema.json` document it for other implementations.
//!
//! Takes nothing and does no IO: these are plain data types with (de)serialisation and the
//! binary block-map codec. Changing a field here changes the format: bump
//! [`FORMAT_VERSION`] and document it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub mod standby; // the DR site's files: journal, commit marker, applied record

/// The repository format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Entries in one block-map segment: 4096 blocks = 2 GiB of volume at 512 KiB blocks.
pub const MAP_SEGMENT_ENTRIES: usize = 4096;

/// Magic at the end of every pack, after the trailer length.
pub const PACK_MAGIC: &[u8; 8] = b"LBPACK01";
/// Magic at the start of every block-map segment.
pub const MAP_MAGIC: &[u8; 8] = b"LBMAP001";

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// The first 8 hex digits, as shown in listings.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                let mut b = [0u8; 32];
                hex::decode_to_slice(s, &mut b)
                    .map_err(|_| format!("`{s}` is not a 64-digit hex id"))?;
                Ok($name(b))
            }
        }
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }
        impl schemars::JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({"type": "string", "pattern": "^[0-9a-f]{64}$"})
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// Keyed BLAKE3 of a blob's plaintext: names content without revealing it.
    BlobId
);
id_type!(
    /// BLAKE3 of a pack object's bytes; the object is `data/<2 hex>/<id>`.
    PackId
);
id_type!(
    /// BLAKE3 of a snapshot object's bytes; the object is `snapshots/<id>`.
    SnapshotId
);
id_type!(
    /// BLAKE3 of an index object's bytes; the object is `index/<id>`.
    IndexId
);
id_type!(
    /// BLAKE3 of a key object's bytes; the object is `keys/<id>`.
    KeyId
);
id_type!(
    /// BLAKE3 of an application backup record's bytes; the object is `backups/<id>`.
    BackupId
);

impl PackId {
    pub fn key(&self) -> String {
        let h = self.to_hex();
        format!("data/{}/{}", &h[..2], h)
    }
}
impl SnapshotId {
    pub fn key(&self) -> String {
        format!("snapshots/{}", self.to_hex())
    }
}
impl IndexId {
    pub fn key(&self) -> String {
        format!("index/{}", self.to_hex())
    }
}
impl KeyId {
    pub fn key(&self) -> String {
        format!("keys/{}", self.to_hex())
    }
}
impl BackupId {
    pub fn key(&self) -> String {
        format!("backups/{}", self.to_hex())
    }
}

/// The plain-BLAKE3 name of stored bytes (packs, index, snapshots, keys).
pub fn object_hash(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// `config`: the one object that is not content-addressed. Written once by `repo init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    pub version: u32,
    /// 16 random bytes, hex: tells repositories apart (and names the local cache).
    pub id: String,
    /// Fixed block size of volume snapshots, a power of two in [64 KiB, 8 MiB].
    pub chunk_size: u32,
    /// Packs are sealed once they reach this many bytes.
    pub pack_size: u32,
    /// zstd level for blobs (0: no compression).
    pub compression_level: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// Keyed BLAKE3 (key derived from the master secret) over the fields above, hex: a
    /// config changed by anyone without a password is refused.
    pub mac: String,
}

impl RepoConfig {
    /// The bytes the MAC covers: every field but `mac`, in a fixed order.
    pub fn mac_input(&self) -> Vec<u8> {
        format!(
            "lifeboat-config-v{}|{}|{}|{}|{}|{}",
            self.version,
            self.id,
            self.chunk_size,
            self.pack_size,
            self.compression_level,
            self.created.unix_timestamp()
        )
        .into_bytes()
    }
}

/// Argon2id parameters of a key object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdfParams {
    pub algorithm: KdfAlgorithm,
    /// Memory in KiB.
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KdfAlgorithm {
    Argon2id,
}

impl KdfParams {
    /// What `repo init` and `repo key add` use: Argon2id, 64 MiB, 3 passes, 4 lanes.
    pub const DEFAULT: KdfParams = KdfParams {
        algorithm: KdfAlgorithm::Argon2id,
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 4,
    };
    /// The most a key object may ask of a reader: 4 GiB of memory, 64 passes, 64 lanes. A
    /// key object is not authenticated before it is used, so its settings are bounded before
    /// Argon2 runs (someone who can write `keys/` must not make opening take forever).
    pub fn check_bounds(&self) -> Result<(), String> {
        let ok = (8..=4 << 20).contains(&self.memory_kib)
            && (1..=64).contains(&self.iterations)
            && (1..=64).contains(&self.parallelism);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "key derivation settings out of range (memory {} KiB, {} passes, {} lanes; at most 4 GiB, 64, 64)",
                self.memory_kib, self.iterations, self.parallelism
            ))
        }
    }

    /// For tests only: cheap enough to run hundreds of times.
    pub const INSECURE_FAST: KdfParams = KdfParams {
        algorithm: KdfAlgorithm::Argon2id,
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
}

/// `keys/<id>`: the master secret wrapped by a key derived from one password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub version: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    pub hostname: String,
    pub kdf: KdfParams,
    /// 32 random bytes, hex.
    pub salt: String,
    /// AES-256-GCM nonce, 12 bytes, hex.
    pub nonce: String,
    /// AES-256-GCM ciphertext and tag of the 64-byte master secret, hex.
    pub wrapped: String,
}

/// What a stored blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobKind {
    /// A block of volume data.
    Data,
    /// A block-map segment of a volume snapshot.
    Map,
    /// One Kubernetes object as the cluster exported it (JSON).
    Object,
}

impl BlobKind {
    pub fn tag(self) -> u8 {
        match self {
            BlobKind::Data => 1,
            BlobKind::Map => 2,
            BlobKind::Object => 3,
        }
    }
}

/// One blob inside a pack, as a pack trailer and an index list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackedBlob {
    pub id: BlobId,
    pub kind: BlobKind,
    /// Byte offset of the blob's sealed envelope in the pack.
    pub offset: u64,
    /// Length of the sealed envelope.
    pub length: u32,
    /// Length of the plaintext.
    pub raw_length: u32,
}

/// A pack and its blobs, inside an index object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexPack {
    pub id: PackId,
    /// Size of the pack object in bytes.
    pub size: u64,
    pub blobs: Vec<PackedBlob>,
}

/// `index/<id>` (sealed): where the blobs of some packs are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexFile {
    pub version: u32,
    pub packs: Vec<IndexPack>,
}

/// The sealed trailer at the end of a pack: its blob list, so indexes can be rebuilt from packs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackTrailer {
    pub version: u32,
    pub blobs: Vec<PackedBlob>,
}

/// Counters of one volume backup, stored with its snapshot and printed by `--json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupStats {
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Plaintext bytes of blobs that were new to the repository.
    pub bytes_new: u64,
    /// Bytes written to the store (packs, index, snapshot).
    pub bytes_uploaded: u64,
    pub blocks_total: u64,
    /// Blocks whose content differs from the parent snapshot (all non-zero blocks without one).
    pub blocks_changed: u64,
    /// Blocks that are all zeros or holes, stored as nothing.
    pub blocks_zero: u64,
    pub duration_seconds: f64,
}

/// `snapshots/<id>` (sealed): one volume at one instant. Written last: its existence is the
/// commit point of a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub version: u32,
    pub kind: SnapshotKind,
    /// Volume name; incrementals chain by name.
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub hostname: String,
    /// Path or device the data came from.
    pub source: String,
    pub parent: Option<SnapshotId>,
    /// Volume size in bytes.
    pub size: u64,
    pub chunk_size: u32,
    /// Block-map segments in order, each covering [`MAP_SEGMENT_ENTRIES`] blocks.
    pub map: Vec<BlobId>,
    /// How changed blocks were found.
    pub change_source: ChangeSource,
    pub stats: BackupStats,
    pub program_version: String,
}

/// How a volume backup found the blocks that changed since its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeSource {
    /// No parent (or `--full`): every block read.
    Full,
    /// Every block read and hashed; unchanged ids skipped.
    HashCompare,
    /// Only the blocks in the given changed ranges read (CBT, a ranges file).
    ChangedRanges,
}

impl ChangeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeSource::Full => "full",
            ChangeSource::HashCompare => "hash-compare",
            ChangeSource::ChangedRanges => "changed-ranges",
        }
    }
}

impl std::fmt::Display for ChangeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    Volume,
}

impl Snapshot {
    pub fn blocks(&self) -> u64 {
        // A chunk size of 0 is damage (never written); counted as 1 it cannot panic, and the
        // block map then fails its length check as any other damaged snapshot does.
        self.size.div_ceil(self.chunk_size.max(1) as u64)
    }
}

/// One entry of a block map: where a block's content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockRef {
    /// All zeros (or a hole): nothing stored.
    Zero,
    Blob(BlobId),
}

/// Encodes a block-map segment: `LBMAP001`, u32 LE count, then 32 bytes per entry
/// (all-zero bytes for a [`BlockRef::Zero`]).
pub fn encode_map(entries: &[BlockRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + entries.len() * 32);
    out.extend_from_slice(MAP_MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        match e {
            BlockRef::Zero => out.extend_from_slice(&[0u8; 32]),
            BlockRef::Blob(id) => out.extend_from_slice(&id.0),
        }
    }
    out
}

pub fn decode_map(bytes: &[u8]) -> Result<Vec<BlockRef>, String> {
    if bytes.len() < 12 || &bytes[..8] != MAP_MAGIC {
        return Err("not a block-map segment (bad magic)".into());
    }
    let n = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let body = &bytes[12..];
    if body.len() != n * 32 {
        return Err(format!(
            "block-map segment says {n} entries but holds {} bytes",
            body.len()
        ));
    }
    Ok(body
        .chunks_exact(32)
        .map(|c| {
            let id: [u8; 32] = c.try_into().unwrap();
            if id == [0u8; 32] {
                BlockRef::Zero
            } else {
                BlockRef::Blob(BlobId(id))
            }
        })
        .collect())
}

/// One captured object of an application backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackedUpObject {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    /// Blob (kind `object`) holding the object as exported, JSON.
    pub blob: BlobId,
    pub size: u32,
}

/// What an application backup was asked to capture.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupFilters {
    /// The namespaces backed up (`--include-namespaces` patterns resolved).
    pub namespaces: Vec<String>,
    pub selector: String,
    /// `--include-objects` items (`kind/name`, `kind/namespace/name`), then
    /// `--include-resources` names.
    pub include_resources: Vec<String>,
    /// `--exclude-resources` names.
    pub exclude_resource_types: Vec<String>,
}

/// `forgets/<hash>` (sealed): what a forget is about to remove, written before its first
/// delete and removed after its last: a forget killed in between leaves it, and the next
/// forget finishes the job, so the volume snapshots of removed records are never left behind
/// with no record naming them (their data would then never be pruned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgetIntent {
    pub version: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Records to remove.
    pub backups: Vec<BackupId>,
    /// Their volume snapshots that no other record referenced.
    pub snapshots: Vec<SnapshotId>,
}

/// Where forget intents are stored.
pub const FORGET_INTENTS: &str = "forgets";

/// `pending/<hex>` (sealed, role `pending-deletion`): packs that a prune took out of the index
/// at `time` but left in the store for its grace period, so that a reader holding no lock (a
/// DR site whose key can only read) and that loaded the index before still finds every pack
/// it reads. The first prune after `time` + its grace deletes the listed packs that no index
/// lists, then this object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingDeletion {
    pub version: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// The packs taken out of the index.
    pub packs: Vec<PackId>,
}

/// Where pending deletions are stored.
pub const PENDING_DELETIONS: &str = "pending";

/// `backups/<id>` (sealed): an application backup: the objects of some namespaces (and the
/// cluster-scoped objects they need) at one instant. Written after every blob it names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppBackup {
    pub version: u32,
    /// Unique among the repository's backups.
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Where the objects came from (`cluster-dir:/path`, `context:NAME`).
    pub source: String,
    /// The BackupSchedule that made it (None: made by hand). Retention works per schedule.
    #[serde(default)]
    pub schedule: Option<String>,
    pub filters: BackupFilters,
    pub objects: Vec<BackedUpObject>,
    /// What could not be captured (a list the API server refused, ...): a backup with
    /// failures is partially failed, and says exactly what it lacks.
    pub failures: Vec<CaptureFailure>,
    /// The data of each captured PersistentVolumeClaim: one volume snapshot each, all taken
    /// in one group while the pre rules held the application quiet. Absent in records of
    /// configuration-only backups.
    #[serde(default)]
    pub volumes: Vec<BackedUpVolume>,
    /// What each pre and post rule action did, per pod, in start order.
    #[serde(default)]
    pub rules: Vec<ActionRecord>,
    /// Things that did not fail the backup but weaken it (a rule action that failed under
    /// `onError: Continue`, a rule that selected no pod, ...).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// How long the backup took, from its start to its record, in seconds (None: a record
    /// older than the field).
    #[serde(default)]
    pub duration_seconds: Option<f64>,
    pub program_version: String,
}

/// One PersistentVolumeClaim's data in an application backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackedUpVolume {
    pub namespace: String,
    /// The claim's name; its object is among the backup's objects.
    pub pvc: String,
    /// The volume snapshot holding the data (its name is `pvc/<namespace>/<pvc>`).
    pub snapshot: SnapshotId,
    pub size: u64,
    /// How the point-in-time copy was taken.
    pub method: CopyMethod,
}

/// How a volume's point-in-time copy was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CopyMethod {
    /// A reflink of the volume file (FICLONE), in constant time.
    Reflink,
    /// A sparse copy of the volume file, inside the barrier.
    Copy,
    /// A CSI VolumeSnapshot of its own.
    Csi,
    /// A member of a CSI VolumeGroupSnapshot.
    CsiGroup,
}

impl CopyMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyMethod::Reflink => "reflink",
            CopyMethod::Copy => "copy",
            CopyMethod::Csi => "csi",
            CopyMethod::CsiGroup => "csi-group",
        }
    }
}

impl std::fmt::Display for CopyMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one rule action did in one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRecord {
    pub phase: RulePhase,
    /// The Rule object's name.
    pub rule: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub command: String,
    pub background: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub ended: OffsetDateTime,
    /// A background action that was ready and then stopped is `succeeded`.
    pub outcome: ActionOutcome,
    pub exit_code: Option<i32>,
    /// The last few KiB of its stdout and stderr.
    pub output_tail: String,
}

/// Which phase of a backup a rule action ran in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RulePhase {
    /// Before the snapshots, inside the barrier.
    Pre,
    /// After them, always.
    Post,
}

impl RulePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RulePhase::Pre => "pre",
            RulePhase::Post => "post",
        }
    }
}

/// How one rule action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ActionOutcome {
    Succeeded,
    Failed,
    TimedOut,
    /// An earlier action of its chain failed, so it never ran.
    NotStarted,
    Cancelled,
}

impl ActionOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionOutcome::Succeeded => "succeeded",
            ActionOutcome::Failed => "failed",
            ActionOutcome::TimedOut => "timed-out",
            ActionOutcome::NotStarted => "not-started",
            ActionOutcome::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for RulePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for ActionOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One part of a scope that a backup could not capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureFailure {
    /// What was attempted, e.g. `list secrets in namespace pg`.
    pub what: String,
    pub reason: String,
}

/// How a lock excludes others: shared locks (backups, restores) coexist; an exclusive one
/// (forget, prune) excludes every other lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Shared,
    Exclusive,
}

/// `locks/<hash>` (plain JSON, not sealed: who holds it, no secrets). Deleted when released;
/// ignored and removed once `expires` is past.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub version: u32,
    pub kind: LockKind,
    /// What it is for, e.g. `backup nightly` or `prune`.
    pub purpose: String,
    pub hostname: String,
    pub pid: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    /// Makes each lock object unique.
    pub nonce: String,
    /// The holder process, as `<boot id>/<pid namespace>/<start time>`: lets a locker of the
    /// same host, boot and pid namespace tell that the holder is gone (its pid runs no more,
    /// or runs another process). Absent in locks of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
}
