//! Writing blobs into packs, and decoding frames read back from packs.
//!
//! A [`PackWriter`] collects compressed frames into an in-memory pack, uploads
//! the pack when it reaches the target size, checks the stored length, and
//! writes an index file every few packs and at [`PackWriter::finish`]. Nothing
//! refers to a pack before its upload was checked (design rules 1 and 2).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info};

use super::backend::BackendError;
use super::index::{BlobEntry, IndexFile, PackEntry, INDEX_VERSION};
use super::{encode_json, RepoError, Repository};
use crate::id::{BlobId, Digest, Hasher, IndexId, PackId};

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
    let mut out = BytesMut::new();
    decode_frame_into(id, frame, raw_length, &mut out)?;
    Ok(out.freeze())
}

/// Decompresses a frame onto the end of `out` and checks that it hashes to
/// `id`. On an error, `out` keeps only its earlier content. A frame of raw
/// blocks (see [`encode_frame`]) is copied without the zstd decoder.
pub fn decode_frame_into(id: &BlobId, frame: &[u8], raw_length: u64, out: &mut BytesMut) -> Result<(), String> {
    if frame.is_empty() && raw_length > 0 {
        return Err("frame is empty".into());
    }
    let start = out.len();
    let raw = raw_length as usize;
    out.reserve(raw);
    if !copy_raw_blocks(frame, raw, out) {
        out.truncate(start);
        out.resize(start + raw, 0);
        match zstd::bulk::decompress_to_buffer(frame, &mut out[start..]) {
            Ok(n) if n == raw => {}
            Ok(n) => {
                out.truncate(start);
                return Err(format!("decompressed to {n} bytes, expected {raw_length}"));
            }
            Err(e) => {
                out.truncate(start);
                return Err(format!("zstd decompression failed: {e}"));
            }
        }
    }
    let actual = BlobId::of(&out[start..]);
    if actual != *id {
        out.truncate(start);
        return Err(format!("content hashes to {actual}, expected {id}"));
    }
    Ok(())
}

/// Appends the content of a single-segment frame made only of raw blocks
/// whose content size is `raw`, and returns true. Returns false, possibly
/// after appending a part, for any other frame; the caller then decodes it
/// with zstd.
fn copy_raw_blocks(frame: &[u8], raw: usize, out: &mut BytesMut) -> bool {
    let Some(header) = frame.get(..13) else { return false };
    if header[..4] != 0xFD2F_B528u32.to_le_bytes() || header[4] != 0b1110_0000 {
        return false;
    }
    let size = u64::from_le_bytes(header[5..13].try_into().expect("8 bytes"));
    if size != raw as u64 {
        return false;
    }
    let mut rest = &frame[13..];
    let mut copied = 0;
    loop {
        let Some(block) = rest.get(..3) else { return false };
        let header = u32::from_le_bytes([block[0], block[1], block[2], 0]);
        let (last, kind, len) = (header & 1 == 1, (header >> 1) & 3, (header >> 3) as usize);
        if kind != 0 || len > MAX_BLOCK {
            return false;
        }
        let Some(content) = rest.get(3..3 + len) else { return false };
        out.extend_from_slice(content);
        copied += len;
        rest = &rest[3 + len..];
        if last {
            return rest.is_empty() && copied == raw;
        }
    }
}

/// A blob encoded for a pack.
pub enum Frame {
    /// A complete zstd frame: compressed, or copied from another pack.
    Encoded(Vec<u8>),
    /// A blob to be written as a zstd frame of raw blocks, straight into the
    /// pack buffer, without a copy of its own.
    Raw(Bytes),
}

impl Frame {
    /// Length of the frame as stored.
    pub fn len(&self) -> usize {
        match self {
            Frame::Encoded(f) => f.len(),
            Frame::Raw(data) => raw_frame_len(data.len()),
        }
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Encoded(f) => out.extend_from_slice(f),
            Frame::Raw(data) => write_raw_frame(data, out),
        }
    }
}

/// Encodes a blob as a zstd frame at `level`. A blob whose samples do not
/// compress (random image bytes, trained weights) is stored in raw blocks,
/// which costs a copy instead of a compression pass. Either way the frame
/// is a standard zstd frame that any zstd decoder reads.
pub fn encode_frame(data: Bytes, level: i32) -> Frame {
    if looks_incompressible(&data, level) {
        return Frame::Raw(data);
    }
    Frame::Encoded(zstd::bulk::compress(&data, level).expect("zstd compresses in memory"))
}

/// Bytes compressed from each of three places of a blob to judge it.
const SAMPLE_LEN: usize = 32 * 1024;

/// True when compressing samples from the start, middle and end of `data`
/// saves less than 2 % of their size. Blobs shorter than four samples are
/// always compressed.
fn looks_incompressible(data: &[u8], level: i32) -> bool {
    if data.len() < 4 * SAMPLE_LEN {
        return false;
    }
    let starts = [0, data.len() / 2 - SAMPLE_LEN / 2, data.len() - SAMPLE_LEN];
    let mut compressed = 0;
    for start in starts {
        let sample = &data[start..start + SAMPLE_LEN];
        compressed += zstd::bulk::compress(sample, level).expect("zstd compresses in memory").len();
    }
    compressed * 100 >= starts.len() * SAMPLE_LEN * 98
}

/// Largest block a zstd frame may hold.
const MAX_BLOCK: usize = 128 * 1024;

/// Length of the raw-block frame of `len` bytes: magic number, header
/// descriptor, 8-byte content size, and a 3-byte header per block.
fn raw_frame_len(len: usize) -> usize {
    4 + 1 + 8 + 3 * len.div_ceil(MAX_BLOCK).max(1) + len
}

/// Appends a single-segment zstd frame that stores `data` in raw blocks,
/// with the content size in the header and no checksum (the blob id is the
/// check).
fn write_raw_frame(data: &[u8], out: &mut Vec<u8>) {
    out.reserve(raw_frame_len(data.len()));
    out.extend_from_slice(&0xFD2F_B528u32.to_le_bytes());
    // Frame header descriptor: 8-byte content size, single segment, no
    // checksum, no dictionary.
    out.push(0b1110_0000);
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let mut pieces = data.chunks(MAX_BLOCK).peekable();
    if pieces.peek().is_none() {
        // An empty blob: one empty last block.
        out.extend_from_slice(&[1, 0, 0]);
    }
    while let Some(piece) = pieces.next() {
        let last = u32::from(pieces.peek().is_none());
        // Block header: last-block bit, block type 0 (raw), 21-bit size.
        let header = last | ((piece.len() as u32) << 3);
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(piece);
    }
}

/// Returns the id of a pack that contains `blobs`, in pack order: the SHA-256
/// of its frame table, where each frame contributes its blob id's 32 bytes,
/// then its stored length and its raw length as 8-byte little-endian
/// integers. Frames sit back to back from offset 0, so the table fixes every
/// byte range, and every frame decodes to the blob named. Hashing the table
/// instead of the pack bytes saves a pass over all stored data.
pub fn pack_id(blobs: &[BlobEntry]) -> PackId {
    let mut hasher = Hasher::new();
    for b in blobs {
        hasher.update(&b.id.0 .0);
        hasher.update(&b.length.to_le_bytes());
        hasher.update(&b.raw_length.to_le_bytes());
    }
    PackId(hasher.finish())
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
        let frame = tokio::task::spawn_blocking(move || encode_frame(data, level))
            .await
            .expect("compression task panicked");
        self.add_frame(id, raw_len, frame).await
    }

    /// Adds a blob's frame to the open pack, unless a usable copy exists.
    pub async fn add_frame(&self, id: BlobId, raw_length: u64, frame: Frame) -> Result<(), RepoError> {
        self.add_frame_inner(id, raw_length, frame, false).await
    }

    /// Adds a blob's frame even when a usable copy exists elsewhere; garbage
    /// collection uses it to move live blobs out of a pack it deletes.
    pub async fn add_frame_forced(&self, id: BlobId, raw_length: u64, frame: Frame) -> Result<(), RepoError> {
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

    async fn add_frame_inner(&self, id: BlobId, raw_length: u64, frame: Frame, forced: bool) -> Result<(), RepoError> {
        let full = {
            let mut st = self.state.lock().await;
            if st.pending.contains(&id) || (!forced && self.repo.with_index(|i| i.has_usable(&id))) {
                return Ok(());
            }
            st.pending.insert(id);
            let offset = st.open.data.len() as u64;
            frame.write_to(&mut st.open.data);
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
    let id = pack_id(&pack.blobs);
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    fn framed(frame: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        frame.write_to(&mut out);
        assert_eq!(out.len(), frame.len());
        out
    }

    fn random(len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(len as u64).fill_bytes(&mut data);
        data
    }

    #[test]
    fn raw_frames_decode_to_their_content() {
        for len in [0, 1, MAX_BLOCK - 1, MAX_BLOCK, MAX_BLOCK + 1, 3 * MAX_BLOCK, 1024 * 1024 + 7] {
            let data = random(len);
            let mut frame = Vec::new();
            write_raw_frame(&data, &mut frame);
            assert_eq!(frame.len(), 13 + 3 * len.div_ceil(MAX_BLOCK).max(1) + len, "frame size for {len} bytes");
            assert_eq!(frame.len(), raw_frame_len(len));
            let decoded = zstd::bulk::decompress(&frame, len).expect("zstd reads a raw frame");
            assert!(decoded == data, "{len} bytes did not round-trip");
            let id = BlobId::of(&data);
            assert!(decode_frame(&id, &frame, len as u64).is_ok(), "decode_frame rejected {len} bytes");
        }
    }

    #[test]
    fn encode_frame_stores_noise_raw() {
        let noise = random(1024 * 1024);
        let frame = encode_frame(Bytes::from(noise.clone()), 3);
        assert!(matches!(frame, Frame::Raw(_)), "random bytes were compressed");
        let stored = framed(&frame);
        assert_eq!(stored.len(), raw_frame_len(noise.len()));
        assert!(zstd::bulk::decompress(&stored, noise.len()).unwrap() == noise);

        let mut text = Vec::new();
        while text.len() < 1024 * 1024 {
            text.extend_from_slice(format!("{{\"step\": {}, \"loss\": 0.25}}\n", text.len()).as_bytes());
        }
        let frame = framed(&encode_frame(Bytes::from(text.clone()), 3));
        assert!(zstd::bulk::decompress(&frame, text.len()).unwrap() == text);
        assert!(frame.len() < text.len() / 4, "{} bytes of JSON lines compressed to {}", text.len(), frame.len());
    }

    #[test]
    fn frames_decode_onto_existing_content() {
        let noise = random(3 * MAX_BLOCK + 5);
        let text = b"{\"a\": 1}\n".repeat(20_000);
        let mut out = BytesMut::from(&b"head"[..]);
        for data in [&noise[..], &text[..]] {
            let frame = framed(&encode_frame(Bytes::copy_from_slice(data), 3));
            decode_frame_into(&BlobId::of(data), &frame, data.len() as u64, &mut out).unwrap();
        }
        assert!(out[..4] == *b"head", "the earlier content changed");
        assert!(out[4..4 + noise.len()] == noise[..], "the raw frame decoded wrong");
        assert!(out[4 + noise.len()..] == text[..], "the compressed frame decoded wrong");

        // A damaged frame leaves the buffer as it was, in both decoders.
        let before = out.len();
        let mut raw = framed(&encode_frame(Bytes::from(noise.clone()), 3));
        raw[100] ^= 1;
        let err = decode_frame_into(&BlobId::of(&noise), &raw, noise.len() as u64, &mut out).unwrap_err();
        assert!(err.contains("content hashes to"), "{err}");
        let mut packed = framed(&encode_frame(Bytes::from(text.clone()), 3));
        let last = packed.len() - 1;
        packed.truncate(last);
        assert!(decode_frame_into(&BlobId::of(&text), &packed, text.len() as u64, &mut out).is_err());
        assert_eq!(out.len(), before);
    }

    #[test]
    fn small_blobs_are_always_compressed() {
        let noise = random(4 * SAMPLE_LEN - 1);
        let frame = framed(&encode_frame(Bytes::from(noise.clone()), 3));
        assert_eq!(frame, zstd::bulk::compress(&noise, 3).unwrap());
    }

    #[test]
    fn raw_frame_zstd_cli_decodes() {
        let data = random(3 * MAX_BLOCK + 11);
        let mut child = std::process::Command::new("zstd")
            .args(["-d", "-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the zstd command-line tool is installed (scripts/install-deps)");
        let mut stdin = child.stdin.take().unwrap();
        let mut frame = Vec::new();
        write_raw_frame(&data, &mut frame);
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &frame));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "zstd -d failed: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout == data, "zstd -d gave {} bytes, expected {}", out.stdout.len(), data.len());
    }

    #[test]
    fn pack_ids_follow_the_frame_table() {
        let entry = |n: u8, length: u64, raw_length: u64| BlobEntry {
            id: BlobId::of(&[n]),
            offset: 0,
            length,
            raw_length,
        };
        let a = vec![entry(1, 10, 20), entry(2, 5, 5)];
        assert_eq!(pack_id(&a), pack_id(&a.clone()));
        let reordered = vec![entry(2, 5, 5), entry(1, 10, 20)];
        assert_ne!(pack_id(&a), pack_id(&reordered));
        let longer_frame = vec![entry(1, 11, 20), entry(2, 5, 5)];
        assert_ne!(pack_id(&a), pack_id(&longer_frame));
        let other_raw = vec![entry(1, 10, 21), entry(2, 5, 5)];
        assert_ne!(pack_id(&a), pack_id(&other_raw));
    }
}
