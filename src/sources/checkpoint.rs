//! Training checkpoints: one snapshot manifest of kind `checkpoint` per pushed
//! step, written by [`Upload`], and a [`Catalogue`] of them kept in memory.
//!
//! A checkpoint is stored as a manifest with source `checkpoints:<job>`,
//! `source_detail` `{job, step}`, one entry whose key is the step name, and
//! the label `final=true` when it was pushed as final. Its content goes
//! through the content-defined chunker, so tensors shared with the previous
//! checkpoint of the job are stored once.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use tracing::{debug, warn};

use crate::id::{BlobId, Digest, Hasher, SnapshotId};
use crate::repository::chunker::Chunker;
use crate::repository::lock::{LockGuard, LockKind};
use crate::repository::manifest::{rfc3339_utc, Entry, Manifest, SnapshotKind, SnapshotStatus, MANIFEST_VERSION};
use crate::repository::pack::{encode_frame, PackWriter};
use crate::repository::{RepoError, Repository};

/// Step name that means "the newest checkpoint of the job" in the API, so no
/// checkpoint may be stored under it.
pub const RESERVED_STEP: &str = "latest";

/// Maximum length of a job or step name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Label set on checkpoints pushed as final.
pub const FINAL_LABEL: &str = "final";

/// A job or step name that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("{what} name is empty; use 1 to {MAX_NAME_LEN} characters from A-Z a-z 0-9 . _ -")]
    Empty { what: &'static str },
    #[error("{what} name is {length} bytes long; the maximum is {MAX_NAME_LEN}")]
    TooLong { what: &'static str, length: usize },
    #[error("{what} name {value:?} contains {character:?}; only A-Z a-z 0-9 . _ - are allowed")]
    InvalidCharacter { what: &'static str, value: String, character: char },
    #[error("{what} name {value:?} is a path component (`.` or `..`) and cannot be used")]
    DotSegment { what: &'static str, value: String },
    #[error("step name {RESERVED_STEP:?} is reserved for the newest checkpoint of a job")]
    Reserved,
}

/// Checks a job or step name: 1 to 128 characters from `[A-Za-z0-9._-]`,
/// and neither `.` nor `..`. `what` names the kind in the error.
pub fn validate_name(what: &'static str, value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { what });
    }
    if value.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { what, length: value.len() });
    }
    if let Some(character) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(NameError::InvalidCharacter { what, value: value.to_owned(), character });
    }
    if value == "." || value == ".." {
        return Err(NameError::DotSegment { what, value: value.to_owned() });
    }
    Ok(())
}

/// Checks a step name for storing: a valid name other than `latest`.
pub fn validate_new_step(step: &str) -> Result<(), NameError> {
    validate_name("step", step)?;
    if step == RESERVED_STEP {
        return Err(NameError::Reserved);
    }
    Ok(())
}

/// Source identity of a job's checkpoints.
pub fn source_id(job: &str) -> String {
    format!("checkpoints:{job}")
}

/// One stored checkpoint, as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointRecord {
    pub job: String,
    pub step: String,
    /// Content size in bytes.
    pub size: u64,
    /// SHA-256 of the content.
    pub sha256: Digest,
    /// Push time: when the manifest was written.
    #[serde(serialize_with = "rfc3339_utc")]
    pub time: DateTime<Utc>,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub snapshot: SnapshotId,
    /// Blob ids whose concatenation is the content.
    #[serde(skip)]
    pub chunks: Vec<BlobId>,
}

impl CheckpointRecord {
    /// Reads a complete checkpoint manifest; `None` for any other manifest.
    pub fn from_manifest(m: &Manifest) -> Option<Self> {
        if m.kind != SnapshotKind::Checkpoint || !m.is_complete() {
            return None;
        }
        let job = m.source_detail.get("job")?.clone();
        let step = m.source_detail.get("step")?.clone();
        let entry = m.entries.iter().find(|e| e.key == step)?;
        Some(CheckpointRecord {
            job,
            step,
            size: entry.size,
            sha256: entry.sha256,
            time: m.time,
            is_final: m.labels.get(FINAL_LABEL).is_some_and(|v| v == "true"),
            snapshot: m.id.clone(),
            chunks: entry.chunks.clone(),
        })
    }
}

#[derive(Default)]
struct CatalogueState {
    checkpoints: BTreeMap<SnapshotId, CheckpointRecord>,
    /// Manifests already read that are not checkpoints, so a refresh skips them.
    others: HashSet<SnapshotId>,
}

/// The checkpoint manifests of a repository, kept in memory and brought up to
/// date by [`Catalogue::refresh`], which lists `snapshots/` and reads only the
/// manifests it has not seen.
#[derive(Default)]
pub struct Catalogue {
    state: tokio::sync::Mutex<CatalogueState>,
}

impl Catalogue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lists the repository's manifests, reads the new ones and drops those
    /// that were removed (by forget or prune in another process).
    pub async fn refresh(&self, repo: &Repository) -> Result<(), RepoError> {
        let mut state = self.state.lock().await;
        let ids = repo.snapshot_ids().await?;
        let present: HashSet<&SnapshotId> = ids.iter().collect();
        state.checkpoints.retain(|id, _| present.contains(id));
        state.others.retain(|id| present.contains(id));
        let new: Vec<SnapshotId> = ids
            .iter()
            .filter(|id| !state.checkpoints.contains_key(*id) && !state.others.contains(*id))
            .cloned()
            .collect();
        let loads = new.into_iter().map(|id| async move {
            let loaded = repo.load_manifest(&id).await;
            (id, loaded)
        });
        let mut loads = futures::stream::iter(loads).buffered(8);
        while let Some((id, loaded)) = loads.next().await {
            match loaded {
                Ok(m) => match CheckpointRecord::from_manifest(&m) {
                    Some(record) => {
                        state.checkpoints.insert(id, record);
                    }
                    None => {
                        state.others.insert(id);
                    }
                },
                // Removed between the listing and the read.
                Err(RepoError::SnapshotNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Checkpoints of `job`, oldest push first.
    pub async fn job(&self, job: &str) -> Vec<CheckpointRecord> {
        let state = self.state.lock().await;
        let mut out: Vec<CheckpointRecord> = state.checkpoints.values().filter(|r| r.job == job).cloned().collect();
        out.sort_by(|a, b| (a.time, &a.snapshot).cmp(&(b.time, &b.snapshot)));
        out
    }

    /// Returns every stored checkpoint of `job` and `step`, oldest push first.
    /// More than one exists only when two processes pushed the same step.
    pub async fn step(&self, job: &str, step: &str) -> Vec<CheckpointRecord> {
        self.job(job).await.into_iter().filter(|r| r.step == step).collect()
    }

    /// Returns the newest checkpoint of `job` by push time.
    pub async fn latest(&self, job: &str) -> Option<CheckpointRecord> {
        self.job(job).await.pop()
    }

    /// Returns each job with the push time of its newest checkpoint.
    pub async fn last_push_times(&self) -> BTreeMap<String, DateTime<Utc>> {
        let state = self.state.lock().await;
        let mut out: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        for r in state.checkpoints.values() {
            let t = out.entry(r.job.clone()).or_insert(r.time);
            *t = (*t).max(r.time);
        }
        out
    }

    pub async fn insert(&self, record: CheckpointRecord) {
        self.state.lock().await.checkpoints.insert(record.snapshot.clone(), record);
    }

    pub async fn remove(&self, ids: &[SnapshotId]) {
        let mut state = self.state.lock().await;
        for id in ids {
            state.checkpoints.remove(id);
        }
    }
}

/// Failure of an upload to produce a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the content hashes to {actual}, but the request declared {expected}")]
    HashMismatch { expected: Digest, actual: Digest },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// Figures of a committed upload.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct UploadStats {
    /// Content bytes received.
    pub bytes: u64,
    /// Blobs of the content that were not stored before.
    pub blobs_new: u64,
    /// Uncompressed bytes of those blobs.
    pub bytes_new: u64,
    /// Bytes of packs uploaded to the repository.
    pub pack_bytes_uploaded: u64,
}

/// The content of one checkpoint being received: chunked, hashed and, unless
/// it only verifies a repeated push, stored. Memory stays bounded by the
/// chunker's window, the chunk still being hashed for the content hash, and
/// the pack writer's packs in flight.
pub struct Upload {
    repo: Arc<Repository>,
    /// `None` when the upload only hashes the content.
    writer: Option<Arc<PackWriter>>,
    lock: Option<LockGuard>,
    chunker: Chunker,
    /// The content hash: it runs one chunk behind on the blocking pool, in
    /// parallel with the chunk's own hash and compression.
    hashing: Option<tokio::task::JoinHandle<Hasher>>,
    chunks: Vec<BlobId>,
    received: u64,
}

impl Upload {
    /// Starts an upload. With `store`, it takes a shared repository lock and
    /// reloads the index, so that no chunk is deduplicated against a pack that
    /// garbage collection in another process has deleted since the last load.
    pub async fn begin(repo: &Arc<Repository>, store: bool, purpose: &str) -> Result<Upload, RepoError> {
        let (writer, lock) = if store {
            let lock = repo.lock(LockKind::Shared, purpose).await?;
            if let Err(e) = repo.reload_index().await {
                release(lock).await;
                return Err(e);
            }
            (Some(repo.pack_writer()), Some(lock))
        } else {
            (None, None)
        };
        Ok(Upload {
            repo: repo.clone(),
            writer,
            lock,
            chunker: Chunker::new(repo.config().chunker.clone()),
            hashing: None,
            chunks: Vec::new(),
            received: 0,
        })
    }

    /// Content bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Adds received bytes and stores every chunk whose end is final.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), RepoError> {
        self.received += data.len() as u64;
        self.chunker.push(data);
        self.drain(false).await
    }

    async fn drain(&mut self, eof: bool) -> Result<(), RepoError> {
        while let Some(chunk) = self.chunker.next_chunk(eof) {
            let hasher = self.take_hasher().await;
            let content = chunk.clone();
            self.hashing = Some(tokio::task::spawn_blocking(move || {
                let mut hasher = hasher;
                hasher.update(&content);
                hasher
            }));
            let (id, chunk) = tokio::task::spawn_blocking(move || (BlobId::of(&chunk), chunk))
                .await
                .expect("hash task panicked");
            if let Some(writer) = &self.writer {
                store_chunk(&self.repo, writer, id, chunk).await?;
            }
            self.chunks.push(id);
        }
        Ok(())
    }

    /// Returns the content hasher once it has taken every chunk so far.
    async fn take_hasher(&mut self) -> Hasher {
        match self.hashing.take() {
            Some(task) => task.await.expect("hash task panicked"),
            None => Hasher::new(),
        }
    }

    /// Ends the content: stores the last chunks and checks the whole content
    /// against `expected`. Returns the content's size and SHA-256.
    pub async fn end(&mut self, expected: &Digest) -> Result<(u64, Digest), UploadError> {
        self.drain(true).await?;
        let actual = self.take_hasher().await.finish();
        if actual != *expected {
            return Err(UploadError::HashMismatch { expected: *expected, actual });
        }
        Ok((self.received, actual))
    }

    /// Makes the checkpoint visible: finishes the pack writer (every pack
    /// uploaded, checked and indexed), then writes the manifest, the last
    /// write (design rule 3), and releases the lock.
    pub async fn commit(
        mut self,
        job: &str,
        step: &str,
        sha256: Digest,
        is_final: bool,
        started: DateTime<Utc>,
        parent: Option<SnapshotId>,
    ) -> Result<(CheckpointRecord, UploadStats), RepoError> {
        let writer = self.writer.take().expect("commit needs an upload that stores");
        let lock = self.lock.take().expect("a storing upload has taken the repository lock");
        let result = async {
            writer.finish().await?;
            lock.ensure_held().await?;
            let mut labels = BTreeMap::new();
            if is_final {
                labels.insert(FINAL_LABEL.to_owned(), "true".to_owned());
            }
            let manifest = Manifest {
                version: MANIFEST_VERSION,
                id: SnapshotId::new(started),
                kind: SnapshotKind::Checkpoint,
                source: source_id(job),
                source_detail: BTreeMap::from([
                    ("job".to_owned(), job.to_owned()),
                    ("step".to_owned(), step.to_owned()),
                ]),
                started,
                time: Utc::now(),
                status: SnapshotStatus::Complete,
                error: None,
                parent,
                objects: 1,
                bytes: self.received,
                labels,
                entries: vec![Entry {
                    key: step.to_owned(),
                    size: self.received,
                    etag: None,
                    last_modified: None,
                    sha256,
                    content_type: Some("application/octet-stream".to_owned()),
                    content_encoding: None,
                    content_disposition: None,
                    cache_control: None,
                    content_language: None,
                    expires: None,
                    metadata: BTreeMap::new(),
                    tags: BTreeMap::new(),
                    chunks: std::mem::take(&mut self.chunks),
                }],
            };
            self.repo.save_manifest(&manifest).await?;
            Ok::<Manifest, RepoError>(manifest)
        }
        .await;
        release(lock).await;
        let manifest = result?;
        let stats = &writer.stats;
        let figures = UploadStats {
            bytes: self.received,
            blobs_new: stats.blobs_new.load(std::sync::atomic::Ordering::Relaxed),
            bytes_new: stats.raw_bytes_new.load(std::sync::atomic::Ordering::Relaxed),
            pack_bytes_uploaded: stats.pack_bytes.load(std::sync::atomic::Ordering::Relaxed),
        };
        let record = CheckpointRecord::from_manifest(&manifest).expect("a checkpoint manifest was just built");
        Ok((record, figures))
    }

    /// Abandons the upload without a manifest. Packs already cut are still
    /// uploaded and indexed, so a retry of the same content reuses them.
    /// Garbage collection frees them if no checkpoint ever refers to them.
    pub async fn abort(mut self) {
        if let Some(writer) = self.writer.take() {
            if let Err(e) = writer.finish().await {
                warn!(error = %e, "could not index the packs of an abandoned upload; garbage collection frees them");
            }
        }
        if let Some(lock) = self.lock.take() {
            release(lock).await;
        }
    }
}

async fn release(lock: LockGuard) {
    if let Err(e) = lock.release().await {
        warn!(error = %e, "could not remove the repository lock; it turns stale by itself");
    }
}

/// Stores a chunk unless a copy is stored in a pack that an index file lists.
///
/// A copy that another upload in this process has uploaded but not yet
/// indexed does not count: that upload may still be abandoned, and a manifest
/// must only refer to indexed blobs (design rule 3). Such a chunk is stored
/// again, which costs space until garbage collection, never data.
async fn store_chunk(repo: &Repository, writer: &PackWriter, id: BlobId, chunk: Bytes) -> Result<(), RepoError> {
    let indexed = repo.with_index(|i| {
        i.usable_locations(&id).iter().any(|l| !i.index_files_of(&l.pack).is_empty())
    });
    if indexed {
        debug!(blob.id = %id, "chunk stored already");
        return Ok(());
    }
    let level = repo.compression_level();
    let raw_length = chunk.len() as u64;
    let frame = tokio::task::spawn_blocking(move || encode_frame(chunk, level))
        .await
        .expect("compression task panicked");
    writer.add_frame_forced(id, raw_length, frame).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_the_allowed_characters() {
        for ok in ["a", "step-100", "lora_alice.v2", "A.b-C_9", "...", &"x".repeat(MAX_NAME_LEN)] {
            assert!(validate_name("job", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn names_reject_paths_and_controls() {
        for bad in ["", ".", "..", "a/b", "a\\b", "a b", "a\0b", "a\nb", "é", "a%2Fb", &"x".repeat(MAX_NAME_LEN + 1)] {
            assert!(validate_name("job", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn latest_is_reserved_for_steps() {
        assert!(matches!(validate_new_step(RESERVED_STEP), Err(NameError::Reserved)));
        assert!(validate_name("job", RESERVED_STEP).is_ok());
    }
}

/// Failure to write a checkpoint from the repository into a file.
#[derive(Debug, thiserror::Error)]
pub enum RestoreFileError {
    #[error(transparent)]
    Repository(#[from] RepoError),
    #[error("{op} {path} failed: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint {job}/{step} of snapshot {snapshot} read back with SHA-256 {actual}, not the recorded {expected}; run `visage-dr check --read-data` on the repository")]
    HashMismatch { job: String, step: String, snapshot: SnapshotId, expected: String, actual: String },
}

/// Whether [`restore_to_file`] wrote the file or found it already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileRestore {
    Written,
    AlreadyPresent,
}

fn file_sha256(path: &std::path::Path) -> std::io::Result<Digest> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

/// Writes the content of `record` to `path`, chunk by chunk, and checks its
/// SHA-256 before renaming the file into place. A file already at `path`
/// with the recorded size and hash is left as it is, so an interrupted
/// restore resumes where it stopped.
pub async fn restore_to_file(repo: &Repository, record: &CheckpointRecord, path: &std::path::Path) -> Result<FileRestore, RestoreFileError> {
    use std::io::Write;
    let io = |op: &'static str, p: &std::path::Path| {
        let path = p.to_path_buf();
        move |source| RestoreFileError::Io { op, path, source }
    };
    if std::fs::metadata(path).is_ok_and(|m| m.len() == record.size) && file_sha256(path).map_err(io("read", path))? == record.sha256 {
        return Ok(FileRestore::AlreadyPresent);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    let partial = path.with_extension("partial");
    let mut file = std::fs::File::create(&partial).map_err(io("create", &partial))?;
    let mut hasher = Hasher::new();
    for chunk in &record.chunks {
        let data = repo.read_blob(chunk).await?;
        hasher.update(&data);
        file.write_all(&data).map_err(io("write", &partial))?;
    }
    file.sync_all().map_err(io("sync", &partial))?;
    let actual = hasher.finish();
    if actual != record.sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(RestoreFileError::HashMismatch {
            job: record.job.clone(),
            step: record.step.clone(),
            snapshot: record.snapshot.clone(),
            expected: record.sha256.to_hex(),
            actual: actual.to_hex(),
        });
    }
    std::fs::rename(&partial, path).map_err(io("rename", &partial))?;
    Ok(FileRestore::Written)
}

/// Returns, per training job, the newest checkpoint pushed at or before `target`.
pub async fn newest_at(catalogue: &Catalogue, target: DateTime<Utc>) -> BTreeMap<String, CheckpointRecord> {
    let mut out = BTreeMap::new();
    for job in catalogue.last_push_times().await.into_keys() {
        if let Some(r) = catalogue.job(&job).await.into_iter().filter(|r| r.time <= target).max_by_key(|r| r.time) {
            out.insert(job, r);
        }
    }
    out
}
