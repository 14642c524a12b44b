//! Packing and uploading: takes sealed blobs, gives packs in the store and index objects that
//! list them. Data blobs and map blobs go to separate packs (metadata stays in few small
//! packs). A sealed pack uploads in the background, with at most `max_uploads` in flight, so
//! memory stays bounded at about `(max_uploads + 2) × pack_size`. An index object is written
//! only for packs whose upload has finished, every [`INDEX_EVERY`] packs and at the end: a crash
//! loses at most the packs not yet indexed, which `repo check` reports as unreferenced.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::task::JoinSet;

use super::{cpu, RepoError, Repository};
use crate::crypto::Role;
use crate::format::{
    object_hash, BlobId, BlobKind, IndexFile, IndexPack, PackId, PackTrailer, PackedBlob,
    FORMAT_VERSION, PACK_MAGIC,
};
use crate::store::StoreError;

/// Packs per index object while a backup runs.
pub const INDEX_EVERY: usize = 64;

#[derive(Debug, Default)]
struct Packer {
    buf: Vec<u8>,
    blobs: Vec<PackedBlob>,
}

/// What a writer stored.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriterStats {
    pub packs: u64,
    pub index_files: u64,
    pub blobs_new: u64,
    /// Plaintext bytes of the new blobs.
    pub bytes_new: u64,
    /// Bytes of packs and index objects written to the store.
    pub bytes_uploaded: u64,
}

pub struct BlobWriter {
    repo: Arc<Repository>,
    data: Packer,
    meta: Packer,
    uploads: JoinSet<Result<IndexPack, RepoError>>,
    max_uploads: usize,
    uploaded: Vec<IndexPack>,
    claims: Arc<Claims>,
    stats: WriterStats,
}

/// The blobs a writer session has taken, shared with the workers that seal them: a worker
/// claims an id before sealing, so each new blob is compressed and sealed once even when the
/// same content shows up in several places at the same time.
#[derive(Debug, Default)]
pub struct Claims(Mutex<HashSet<BlobId>>);

impl Claims {
    /// True when `id` was not claimed before (the caller should seal and add it).
    pub fn claim(&self, id: BlobId) -> bool {
        self.0.lock().unwrap().insert(id)
    }

    pub fn contains(&self, id: &BlobId) -> bool {
        self.0.lock().unwrap().contains(id)
    }
}

impl BlobWriter {
    pub(super) fn new(repo: Arc<Repository>, max_uploads: usize) -> Self {
        BlobWriter {
            repo,
            data: Packer::default(),
            meta: Packer::default(),
            uploads: JoinSet::new(),
            max_uploads: max_uploads.max(1),
            uploaded: Vec::new(),
            claims: Arc::new(Claims::default()),
            stats: WriterStats::default(),
        }
    }

    /// The claim set of this session, for the workers that seal blobs.
    pub fn claims(&self) -> Arc<Claims> {
        self.claims.clone()
    }

    /// Adds a sealed blob that the caller has claimed (see [`Claims::claim`]).
    pub async fn add(
        &mut self,
        kind: BlobKind,
        id: BlobId,
        sealed: Vec<u8>,
        raw_length: u32,
    ) -> Result<(), RepoError> {
        debug_assert!(self.claims.contains(&id), "blob {id} added without a claim");
        self.stats.blobs_new += 1;
        self.stats.bytes_new += raw_length as u64;
        let packer = match kind {
            BlobKind::Data => &mut self.data,
            BlobKind::Map | BlobKind::Object => &mut self.meta,
        };
        packer.blobs.push(PackedBlob {
            id,
            kind,
            offset: packer.buf.len() as u64,
            length: sealed.len() as u32,
            raw_length,
        });
        packer.buf.extend_from_slice(&sealed);
        if packer.buf.len() >= self.repo.config().pack_size as usize {
            self.seal(kind).await?;
        }
        Ok(())
    }

    async fn seal(&mut self, kind: BlobKind) -> Result<(), RepoError> {
        let packer = std::mem::take(match kind {
            BlobKind::Data => &mut self.data,
            BlobKind::Map | BlobKind::Object => &mut self.meta,
        });
        if packer.blobs.is_empty() {
            return Ok(());
        }
        while self.uploads.len() >= self.max_uploads {
            self.collect_one().await?;
        }
        let repo = self.repo.clone();
        self.uploads.spawn(async move {
            let keys = repo.keys().clone();
            let Packer { mut buf, blobs } = packer;
            let (buf, blobs, id) = cpu(move || {
                let trailer = PackTrailer {
                    version: FORMAT_VERSION,
                    blobs,
                };
                let json = serde_json::to_vec(&trailer).expect("trailer serialises");
                let sealed = keys.seal(Role::PackTrailer, &json, 3);
                buf.extend_from_slice(&sealed);
                buf.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
                buf.extend_from_slice(PACK_MAGIC);
                let id = PackId(object_hash(&buf));
                (buf, trailer.blobs, id)
            })
            .await?;
            let size = buf.len() as u64;
            match repo
                .store()
                .put(&id.key(), Bytes::from(buf), repo.cancel())
                .await
            {
                // Same name, same bytes: the pack is there already.
                Ok(()) | Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            tracing::debug!(pack = %id.short(), size, blobs = blobs.len(), "pack uploaded");
            Ok(IndexPack { id, size, blobs })
        });
        Ok(())
    }

    async fn collect_one(&mut self) -> Result<(), RepoError> {
        if let Some(joined) = self.uploads.join_next().await {
            let pack = joined.map_err(|e| RepoError::Worker(e.to_string()))??;
            self.stats.packs += 1;
            self.stats.bytes_uploaded += pack.size;
            self.uploaded.push(pack);
            if self.uploaded.len() >= INDEX_EVERY {
                self.write_index().await?;
            }
        }
        Ok(())
    }

    async fn write_index(&mut self) -> Result<(), RepoError> {
        if self.uploaded.is_empty() {
            return Ok(());
        }
        let file = IndexFile {
            version: FORMAT_VERSION,
            packs: std::mem::take(&mut self.uploaded),
        };
        let (_, len) = self
            .repo
            .write_sealed_json("index", &file, Role::Index)
            .await?;
        self.stats.index_files += 1;
        self.stats.bytes_uploaded += len;
        Ok(())
    }

    /// Seals the open packs, waits for every upload, and indexes them. Only after this returns
    /// may a snapshot refer to the blobs.
    pub async fn finish(mut self) -> Result<WriterStats, RepoError> {
        self.seal(BlobKind::Data).await?;
        self.seal(BlobKind::Map).await?;
        while !self.uploads.is_empty() {
            self.collect_one().await?;
        }
        self.write_index().await?;
        Ok(self.stats)
    }
}
