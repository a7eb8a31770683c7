//! Whole-pack reads for restores: a pack is downloaded once and its frames
//! served from memory, so restoring thousands of small objects costs one
//! request per pack instead of one per blob.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::Mutex;
use tracing::debug;

use super::pack::{decode_frame_into, pack_key};
use super::{RepoError, Repository};
use crate::id::{BlobId, PackId};

/// Packs larger than this are read blob by blob with ranged requests, so
/// the cache never keeps more than `capacity` times this many bytes.
const MAX_CACHED_PACK: u64 = 32 * 1024 * 1024;

type PackFuture = Shared<BoxFuture<'static, Result<Bytes, Arc<RepoError>>>>;

/// A small least-recently-inserted cache of whole packs.
pub struct PackCache {
    repo: Arc<Repository>,
    capacity: usize,
    packs: Mutex<VecDeque<(PackId, PackFuture)>>,
}

impl PackCache {
    /// Creates a cache that keeps up to `capacity` packs.
    pub fn new(repo: Arc<Repository>, capacity: usize) -> Self {
        Self { repo, capacity: capacity.max(1), packs: Mutex::new(VecDeque::new()) }
    }

    /// Reads a blob, from a cached pack when its copy is in one. Falls back
    /// to [`Repository::read_blob`] (ranged reads, every copy tried) when the
    /// pack is too large to cache or its frame fails verification.
    pub async fn read_blob(&self, id: &BlobId) -> Result<Bytes, RepoError> {
        let mut out = BytesMut::new();
        self.read_blob_into(id, &mut out).await?;
        Ok(out.freeze())
    }

    /// Reads a blob like [`PackCache::read_blob`] and appends it to `out`,
    /// which saves a buffer and a copy per blob when objects are assembled.
    pub async fn read_blob_into(&self, id: &BlobId, out: &mut BytesMut) -> Result<(), RepoError> {
        let Some(loc) = self.repo.with_index(|i| i.usable_locations(id)).last().copied() else {
            return Err(RepoError::BlobMissing { blob: *id });
        };
        let size = self.repo.with_index(|i| i.pack_size(&loc.pack)).unwrap_or(u64::MAX);
        if size <= MAX_CACHED_PACK {
            let pack = self.pack(loc.pack).await;
            if let Ok(data) = pack.await {
                let end = (loc.offset + loc.length) as usize;
                if let Some(frame) = data.get(loc.offset as usize..end) {
                    if decode_frame_into(id, frame, loc.raw_length, out).is_ok() {
                        return Ok(());
                    }
                }
            }
        }
        // The ranged path reports a problem and tries other copies.
        out.extend_from_slice(&self.repo.read_blob(id).await?);
        Ok(())
    }

    async fn pack(&self, id: PackId) -> PackFuture {
        let mut packs = self.packs.lock().await;
        if let Some((_, fut)) = packs.iter().find(|(p, _)| *p == id) {
            return fut.clone();
        }
        let repo = self.repo.clone();
        let fut: PackFuture = async move {
            let key = pack_key(&id);
            debug!(pack.id = %id, s3.key = %key, "reading whole pack");
            repo.backend().get(&key).await.map_err(|e| Arc::new(RepoError::from(e)))
        }
        .boxed()
        .shared();
        packs.push_back((id, fut.clone()));
        while packs.len() > self.capacity {
            packs.pop_front();
        }
        fut
    }
}
