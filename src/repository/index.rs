//! Index files and the in-memory map from blob id to stored copies.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::id::{BlobId, IndexId, PackId};

/// Index file format version written by this code.
pub const INDEX_VERSION: u32 = 1;

/// One index file, as stored (zstd-compressed JSON) under `index/`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexFile {
    pub version: u32,
    pub packs: Vec<PackEntry>,
}

/// A pack and the frames it holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackEntry {
    pub id: PackId,
    /// Size of the pack object in bytes.
    pub size: u64,
    pub blobs: Vec<BlobEntry>,
}

/// A frame inside a pack.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct BlobEntry {
    pub id: BlobId,
    /// Byte offset of the frame in the pack.
    pub offset: u64,
    /// Length of the frame (compressed) in bytes.
    pub length: u64,
    /// Length of the blob (uncompressed) in bytes.
    pub raw_length: u64,
}

/// Location of one stored copy of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    pub pack: PackId,
    pub offset: u64,
    pub length: u64,
    pub raw_length: u64,
}

/// The union of all index files, with the copies that `check` recorded as
/// damaged left out of lookups.
#[derive(Debug, Default)]
pub struct MasterIndex {
    blobs: HashMap<BlobId, Vec<BlobLocation>>,
    packs: HashMap<PackId, u64>,
    /// Index files that list each pack.
    pack_indexes: HashMap<PackId, Vec<IndexId>>,
    damaged: HashSet<(PackId, BlobId)>,
}

impl MasterIndex {
    /// Adds the packs of one index file.
    pub fn add_file(&mut self, file_id: IndexId, file: &IndexFile) {
        for pack in &file.packs {
            self.add_pack(pack);
            self.pack_indexes.entry(pack.id).or_default().push(file_id);
        }
    }

    /// Adds one pack's entries.
    pub fn add_pack(&mut self, pack: &PackEntry) {
        if self.packs.insert(pack.id, pack.size).is_some() {
            return;
        }
        for b in &pack.blobs {
            let loc = BlobLocation {
                pack: pack.id,
                offset: b.offset,
                length: b.length,
                raw_length: b.raw_length,
            };
            self.blobs.entry(b.id).or_default().push(loc);
        }
    }

    pub fn mark_damaged(&mut self, pack: PackId, blob: BlobId) {
        self.damaged.insert((pack, blob));
    }

    /// Forgets the damage recorded for `pack` and returns the blobs it named.
    pub fn clear_damaged(&mut self, pack: PackId) -> Vec<BlobId> {
        let blobs: Vec<BlobId> = self.damaged.iter().filter(|(p, _)| *p == pack).map(|(_, b)| *b).collect();
        for b in &blobs {
            self.damaged.remove(&(pack, *b));
        }
        blobs
    }

    pub fn is_damaged(&self, pack: PackId, blob: BlobId) -> bool {
        self.damaged.contains(&(pack, blob))
    }

    /// Copies of `blob` not recorded as damaged, newest pack last.
    pub fn usable_locations(&self, blob: &BlobId) -> Vec<BlobLocation> {
        self.blobs
            .get(blob)
            .map(|locs| {
                locs.iter()
                    .filter(|l| !self.damaged.contains(&(l.pack, *blob)))
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Returns every listed copy of `blob`, damaged ones included.
    pub fn all_locations(&self, blob: &BlobId) -> &[BlobLocation] {
        self.blobs.get(blob).map(Vec::as_slice).unwrap_or(&[])
    }

    /// True when a usable copy of `blob` is stored.
    pub fn has_usable(&self, blob: &BlobId) -> bool {
        self.blobs
            .get(blob)
            .is_some_and(|locs| locs.iter().any(|l| !self.damaged.contains(&(l.pack, *blob))))
    }

    pub fn pack_size(&self, pack: &PackId) -> Option<u64> {
        self.packs.get(pack).copied()
    }

    pub fn packs(&self) -> impl Iterator<Item = (&PackId, &u64)> {
        self.packs.iter()
    }

    pub fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    pub fn damaged(&self) -> impl Iterator<Item = &(PackId, BlobId)> {
        self.damaged.iter()
    }

    /// Returns every blob with its copies.
    pub fn blobs(&self) -> impl Iterator<Item = (&BlobId, &Vec<BlobLocation>)> {
        self.blobs.iter()
    }

    pub fn index_files_of(&self, pack: &PackId) -> &[IndexId] {
        self.pack_indexes.get(pack).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(tag: &[u8], blobs: &[(&[u8], u64)]) -> PackEntry {
        let mut offset = 0;
        PackEntry {
            id: PackId::of(tag),
            size: blobs.iter().map(|b| b.1).sum(),
            blobs: blobs
                .iter()
                .map(|(content, len)| {
                    let e = BlobEntry { id: BlobId::of(content), offset, length: *len, raw_length: *len };
                    offset += len;
                    e
                })
                .collect(),
        }
    }

    #[test]
    fn damaged_copy_is_not_usable() {
        let mut idx = MasterIndex::default();
        let p1 = pack(b"p1", &[(b"a", 10), (b"b", 5)]);
        idx.add_pack(&p1);
        let a = BlobId::of(b"a");
        assert!(idx.has_usable(&a));
        idx.mark_damaged(p1.id, a);
        assert!(!idx.has_usable(&a));
        assert!(idx.usable_locations(&a).is_empty());
        assert_eq!(idx.all_locations(&a).len(), 1);

        let p2 = pack(b"p2", &[(b"a", 10)]);
        idx.add_pack(&p2);
        assert_eq!(idx.usable_locations(&a)[0].pack, p2.id);
    }

    #[test]
    fn same_pack_twice_is_listed_once() {
        let mut idx = MasterIndex::default();
        let p1 = pack(b"p1", &[(b"a", 10)]);
        idx.add_pack(&p1);
        idx.add_pack(&p1);
        assert_eq!(idx.all_locations(&BlobId::of(b"a")).len(), 1);
    }
}
