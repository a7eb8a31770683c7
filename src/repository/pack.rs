//! Writing blobs into packs, and decoding frames read back from packs.
//!
//! A [`PackWriter`] collects compressed frames into an in-memory pack, uploads
//! the pack when it reaches the target size, checks the stored length, and
//! writes an index file every few packs and at [`PackWriter::finish`]. Nothing
//! refers to a pack before its upload was checked (design rules 1 and 2).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info};

use super::backend::BackendError;
use super::index::{BlobEntry, IndexFile, PackEntry, INDEX_VERSION};
use super::{encode_json, RepoError, Repository};
use crate::id::{BlobId, Digest, IndexId, PackId};

/// Target pack size. 16 MiB keeps a 1 GB bucket to about 60 uploads while a
/// few packs in flight stay well inside the memory budget.
pub const DEFAULT_PACK_SIZE: usize = 16 * 1024 * 1024;

/// An index file is written after this many packs, so a killed run leaves
/// most of its uploads indexed for the next run to reuse.
pub const INDEX_FLUSH_PACKS: usize = 16;

/// Returns the key of a pack.
pub fn pack_key(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("data/{}/{}", &hex[..2], hex)
}

/// Decompresses a frame and checks that it hashes to `id`.
pub fn decode_frame(id: &BlobId, frame: &[u8], raw_length: u64) -> Result<Bytes, String> {
    if frame.is_empty() && raw_length > 0 {
        return Err("frame is empty".into());
    }
    let data = zstd::bulk::decompress(frame, raw_length as usize)
        .map_err(|e| format!("zstd decompression failed: {e}"))?;
    if data.len() as u64 != raw_length {
        return Err(format!("decompressed to {} bytes, expected {raw_length}", data.len()));
    }
    let actual = BlobId::of(&data);
    if actual != *id {
        return Err(format!("content hashes to {actual}, expected {id}"));
    }
    Ok(Bytes::from(data))
}

/// Compresses a blob into a frame at `level`.
pub fn encode_frame(data: &[u8], level: i32) -> Vec<u8> {
    zstd::bulk::compress(data, level).expect("zstd compresses in memory")
}

/// Figures of one writer session.
#[derive(Debug, Default)]
pub struct WriteStats {
    /// Blobs stored by this session.
    pub blobs_new: AtomicU64,
    /// Uncompressed bytes of those blobs.
    pub raw_bytes_new: AtomicU64,
    /// Bytes of packs uploaded.
    pub pack_bytes: AtomicU64,
    pub packs: AtomicU64,
    pub index_files: AtomicU64,
}

struct OpenPack {
    data: Vec<u8>,
    blobs: Vec<BlobEntry>,
}

impl OpenPack {
    /// Creates an empty pack whose buffer fits `pack_size` plus one largest frame,
    /// so that it never grows by doubling past the pack size.
    fn new(pack_size: usize) -> Self {
        let capacity = pack_size + super::chunker::MAX_SIZE as usize + 64 * 1024;
        Self { data: Vec::with_capacity(capacity), blobs: Vec::new() }
    }
}

struct State {
    open: OpenPack,
    /// Blobs in the open pack or in packs being uploaded.
    pending: HashSet<BlobId>,
}

/// Packs new blobs and uploads them. Shared by the tasks of one run.
pub struct PackWriter {
    repo: Arc<Repository>,
    state: Mutex<State>,
    uploads: Mutex<JoinSet<Result<(), RepoError>>>,
    permits: Arc<Semaphore>,
    /// Packs uploaded and checked but not yet listed in an index file.
    unindexed: Arc<Mutex<Vec<PackEntry>>>,
    /// Every pack this writer uploaded.
    written: Arc<Mutex<Vec<PackEntry>>>,
    /// Every index file this writer wrote.
    indexes: Arc<Mutex<Vec<IndexId>>>,
    pub stats: Arc<WriteStats>,
}

impl PackWriter {
    pub(super) fn new(repo: Arc<Repository>) -> Self {
        let open = OpenPack::new(repo.options().pack_size);
        let permits = Arc::new(Semaphore::new(repo.options().upload_concurrency.max(1)));
        Self {
            repo,
            state: Mutex::new(State { open, pending: HashSet::new() }),
            uploads: Mutex::new(JoinSet::new()),
            permits,
            unindexed: Arc::new(Mutex::new(Vec::new())),
            written: Arc::new(Mutex::new(Vec::new())),
            indexes: Arc::new(Mutex::new(Vec::new())),
            stats: Arc::new(WriteStats::default()),
        }
    }

    pub fn repository(&self) -> &Arc<Repository> {
        &self.repo
    }

    /// True when `id` must be stored: no usable copy is indexed and none is
    /// being written by this writer.
    pub async fn needs(&self, id: &BlobId) -> bool {
        if self.repo.with_index(|i| i.has_usable(id)) {
            return false;
        }
        !self.state.lock().await.pending.contains(id)
    }

    /// Hashes, compresses and stores `data` unless a usable copy exists.
    /// Returns its id. CPU work runs on the blocking pool.
    pub async fn store(&self, data: Bytes) -> Result<BlobId, RepoError> {
        let hashed = data.clone();
        let id = tokio::task::spawn_blocking(move || BlobId::of(&hashed))
            .await
            .expect("hash task panicked");
        self.store_hashed(id, data).await?;
        Ok(id)
    }

    /// Compresses and stores a blob whose id the caller computed, unless a
    /// usable copy exists.
    pub async fn store_hashed(&self, id: BlobId, data: Bytes) -> Result<(), RepoError> {
        if !self.needs(&id).await {
            return Ok(());
        }
        let level = self.repo.compression_level();
        let raw_len = data.len() as u64;
        let frame = tokio::task::spawn_blocking(move || encode_frame(&data, level))
            .await
            .expect("compression task panicked");
        self.add_frame(id, raw_len, frame).await
    }

    /// Adds a blob's frame to the open pack, unless a usable copy exists.
    pub async fn add_frame(&self, id: BlobId, raw_length: u64, frame: Vec<u8>) -> Result<(), RepoError> {
        self.add_frame_inner(id, raw_length, frame, false).await
    }

    /// Adds a blob's frame even when a usable copy exists elsewhere; garbage
    /// collection uses it to move live blobs out of a pack it deletes.
    pub async fn add_frame_forced(&self, id: BlobId, raw_length: u64, frame: Vec<u8>) -> Result<(), RepoError> {
        self.add_frame_inner(id, raw_length, frame, true).await
    }

    /// Packs this writer uploaded, taken out of the writer.
    pub async fn take_written(&self) -> Vec<PackEntry> {
        std::mem::take(&mut *self.written.lock().await)
    }

    /// Index files this writer wrote.
    pub async fn index_ids(&self) -> Vec<IndexId> {
        self.indexes.lock().await.clone()
    }

    async fn add_frame_inner(&self, id: BlobId, raw_length: u64, frame: Vec<u8>, forced: bool) -> Result<(), RepoError> {
        let full = {
            let mut st = self.state.lock().await;
            if st.pending.contains(&id) || (!forced && self.repo.with_index(|i| i.has_usable(&id))) {
                return Ok(());
            }
            st.pending.insert(id);
            let offset = st.open.data.len() as u64;
            st.open.data.extend_from_slice(&frame);
            st.open.blobs.push(BlobEntry { id, offset, length: frame.len() as u64, raw_length });
            self.stats.blobs_new.fetch_add(1, Ordering::Relaxed);
            self.stats.raw_bytes_new.fetch_add(raw_length, Ordering::Relaxed);
            if st.open.data.len() >= self.repo.options().pack_size {
                Some(std::mem::replace(&mut st.open, OpenPack::new(self.repo.options().pack_size)))
            } else {
                None
            }
        };
        if let Some(pack) = full {
            self.start_upload(pack).await?;
        }
        Ok(())
    }

    async fn start_upload(&self, pack: OpenPack) -> Result<(), RepoError> {
        // Waiting for a permit bounds the packs held in memory.
        let permit = self.permits.clone().acquire_owned().await.expect("semaphore never closes");
        let mut uploads = self.uploads.lock().await;
        // Surface a failed upload early instead of at finish.
        while let Some(done) = uploads.try_join_next() {
            done.expect("upload task panicked")?;
        }
        let repo = self.repo.clone();
        let unindexed = self.unindexed.clone();
        let written = self.written.clone();
        let indexes = self.indexes.clone();
        let stats = self.stats.clone();
        uploads.spawn(async move {
            let entry = upload_pack(&repo, pack, &stats).await?;
            drop(permit);
            written.lock().await.push(entry.clone());
            let batch = {
                let mut pending = unindexed.lock().await;
                pending.push(entry);
                if pending.len() >= repo.options().index_flush_packs {
                    std::mem::take(&mut *pending)
                } else {
                    Vec::new()
                }
            };
            if !batch.is_empty() {
                let id = write_index(&repo, batch, &stats).await?;
                indexes.lock().await.push(id);
            }
            Ok(())
        });
        Ok(())
    }

    /// Uploads the open pack, waits for every upload, and writes an index
    /// file for the packs not yet indexed. After it returns, every blob this
    /// writer stored is listed in an index file, so a manifest may refer to it.
    pub async fn finish(&self) -> Result<(), RepoError> {
        let last = {
            let mut st = self.state.lock().await;
            std::mem::replace(&mut st.open, OpenPack { data: Vec::new(), blobs: Vec::new() })
        };
        if !last.blobs.is_empty() {
            self.start_upload(last).await?;
        }
        let mut uploads = self.uploads.lock().await;
        let mut first_error = None;
        while let Some(done) = uploads.join_next().await {
            if let Err(e) = done.expect("upload task panicked") {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let batch = std::mem::take(&mut *self.unindexed.lock().await);
        if !batch.is_empty() {
            let id = write_index(&self.repo, batch, &self.stats).await?;
            self.indexes.lock().await.push(id);
        }
        self.state.lock().await.pending.clear();
        Ok(())
    }
}

/// Uploads a pack, checks its stored length, and adds it to the in-memory
/// index so later blobs of this run deduplicate against it.
async fn upload_pack(repo: &Repository, pack: OpenPack, stats: &WriteStats) -> Result<PackEntry, RepoError> {
    let data = Bytes::from(pack.data);
    let id = {
        let d = data.clone();
        tokio::task::spawn_blocking(move || PackId(Digest::of(&d))).await.expect("hash task panicked")
    };
    let key = pack_key(&id);
    let size = data.len() as u64;
    repo.backend().put(&key, data).await?;
    let stored = repo.backend().head(&key).await?;
    match stored {
        Some(meta) if meta.size == size => {}
        Some(meta) => {
            return Err(BackendError::LengthMismatch { key, expected: size, actual: meta.size }.into())
        }
        None => return Err(BackendError::NotFound { key }.into()),
    }
    // A pack is named by its content, so a damaged pack written again with
    // the same id now contains verified bytes and its damage records are void.
    let repaired = repo.with_index_mut(|i| i.clear_damaged(id));
    for blob in repaired {
        repo.backend().delete(&format!("damaged/{id}-{blob}")).await?;
        info!(pack.id = %id, blob.id = %blob, "damaged pack replaced by a verified copy");
    }
    stats.packs.fetch_add(1, Ordering::Relaxed);
    stats.pack_bytes.fetch_add(size, Ordering::Relaxed);
    debug!(pack.id = %id, pack.bytes = size, pack.blobs = pack.blobs.len(), "pack uploaded");
    let entry = PackEntry { id, size, blobs: pack.blobs };
    repo.with_index_mut(|i| i.add_pack(&entry));
    Ok(entry)
}

/// Writes an index file listing `packs`, all of which are uploaded and checked.
pub(crate) async fn write_index(
    repo: &Repository,
    packs: Vec<PackEntry>,
    stats: &WriteStats,
) -> Result<IndexId, RepoError> {
    let file = IndexFile { version: INDEX_VERSION, packs };
    let (json, data) = encode_json(&file);
    let id = IndexId(Digest::of(&json));
    repo.backend().put(&format!("index/{id}"), data).await?;
    // Record the file in the in-memory index, so that `index_files_of` shows
    // these packs as indexed without a reload.
    repo.with_index_mut(|i| i.add_file(id, &file));
    stats.index_files.fetch_add(1, Ordering::Relaxed);
    debug!(index.id = %id, index.packs = file.packs.len(), "index written");
    Ok(id)
}
