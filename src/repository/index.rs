//! The in-memory index: which pack holds each blob. Built from the index objects; pure.

use std::collections::HashMap;

use crate::format::{BlobId, BlobKind, IndexFile, IndexPack, PackId};

/// Where one blob is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// Position of the pack in [`Index::packs`].
    pub pack: u32,
    pub offset: u64,
    pub length: u32,
    pub raw_length: u32,
    pub kind: BlobKind,
}

#[derive(Debug, Default, Clone)]
pub struct Index {
    packs: Vec<(PackId, u64)>,
    pack_pos: HashMap<PackId, u32>,
    blobs: HashMap<BlobId, BlobLocation>,
}

impl Index {
    pub fn from_files(files: Vec<IndexFile>) -> Index {
        let mut idx = Index::default();
        for f in files {
            for p in f.packs {
                idx.add_pack(&p);
            }
        }
        idx
    }

    /// Adds a pack and its blobs; a blob already known elsewhere keeps its first location.
    pub fn add_pack(&mut self, p: &IndexPack) {
        let pos = *self.pack_pos.entry(p.id).or_insert_with(|| {
            self.packs.push((p.id, p.size));
            (self.packs.len() - 1) as u32
        });
        for b in &p.blobs {
            self.blobs.entry(b.id).or_insert(BlobLocation {
                pack: pos,
                offset: b.offset,
                length: b.length,
                raw_length: b.raw_length,
                kind: b.kind,
            });
        }
    }

    pub fn get(&self, id: &BlobId) -> Option<BlobLocation> {
        self.blobs.get(id).copied()
    }

    pub fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    pub fn pack_id(&self, pos: u32) -> PackId {
        self.packs[pos as usize].0
    }

    /// Every indexed pack with its size.
    pub fn packs(&self) -> &[(PackId, u64)] {
        &self.packs
    }

    /// Every indexed blob with its location.
    pub fn iter(&self) -> impl Iterator<Item = (&BlobId, &BlobLocation)> {
        self.blobs.iter()
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }
}
