//! S3 bucket snapshots and restores.
//!
//! A snapshot lists the source bucket, reuses the chunks of objects whose key,
//! size, ETag and last-modified time match the parent snapshot, and streams
//! every other object through the chunker into the repository. A restore
//! writes each object back with its headers, user metadata and tags, checking
//! the SHA-256 of the whole object before the write is committed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Tag, Tagging};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::id::{BlobId, Digest, Hasher, SnapshotId};
use crate::progress::Progress;
use crate::repository::backend::{list_objects, ListedObject};
use crate::repository::chunker::Chunker;
use crate::repository::lock::LockKind;
use crate::repository::manifest::{Entry, Manifest, SnapshotKind, SnapshotStatus, MANIFEST_VERSION};
use crate::repository::pack_cache::PackCache;
use crate::repository::{RepoError, Repository};
use crate::s3::{S3Error, S3Overrides, S3Settings};

/// Default number of objects a snapshot reads at the same time. A GET from
/// Garage or MinIO streams a large object block by block, so one stream
/// leaves the server idle between blocks; 16 streams kept a 2-core machine
/// busy where 8 left it waiting (BENCHMARKS.md).
pub const DEFAULT_SNAPSHOT_CONCURRENCY: usize = 16;

/// Default number of objects a restore writes at the same time.
pub const DEFAULT_RESTORE_CONCURRENCY: usize = 8;

/// Objects up to this size are restored with one PutObject; larger ones with
/// a multipart upload. 8 MiB is far under S3's 5 GiB single-PUT limit and
/// bounds the memory of each object in flight, since a single PUT is
/// buffered whole to check its hash before it is sent.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 8 * 1024 * 1024;

/// Whole packs a restore keeps in memory: four 16 MiB packs cover the
/// objects that eight concurrent writers work on when they go in pack order.
const PACK_CACHE_PACKS: usize = 4;

/// Part size of multipart restores. S3 requires at least 5 MiB for every
/// part but the last.
pub const DEFAULT_PART_SIZE: u64 = 8 * 1024 * 1024;

/// Errors of bucket snapshots and restores.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("object {key:?} of bucket {bucket:?} changed while it was read (expected {expected} bytes, read {actual}); run the snapshot again")]
    ChangedWhileReading { bucket: String, key: String, expected: u64, actual: u64 },
    #[error("restored object {key:?} hashes to {actual} but snapshot {snapshot} recorded {expected}; nothing was written for it")]
    HashMismatch { key: String, snapshot: SnapshotId, expected: Digest, actual: Digest },
    #[error("bucket {bucket:?} already holds different content at {count} key(s) that the restore would write: {sample}; pass --overwrite to replace them, or restore into an empty bucket")]
    WouldOverwrite { bucket: String, count: usize, sample: String },
    #[error("no complete snapshot of {source_id} at or before {target}; the oldest one is from {oldest}")]
    NoSnapshotBefore { source_id: String, target: String, oldest: String },
    #[error("no complete snapshot of {source_id} in the repository")]
    NoSnapshots { source_id: String },
    #[error("the repository holds snapshots of several sources ({sources}); name one with --source")]
    AmbiguousSource { sources: String },
    #[error("snapshot {0} is not a bucket snapshot or is not complete, so it cannot be restored")]
    NotRestorable(SnapshotId),
}

/// Settings of a bucket snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotOptions {
    pub bucket: String,
    /// Only keys starting with this prefix.
    pub prefix: String,
    pub s3: S3Overrides,
    pub concurrency: usize,
    /// Read object tags (one extra request per downloaded object).
    pub tags: bool,
    /// Draw a progress bar on a terminal.
    pub progress: bool,
}

/// Figures of a finished snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotStats {
    pub snapshot: SnapshotId,
    pub source: String,
    pub objects: u64,
    pub bytes: u64,
    /// Objects read from the source (the rest reused the parent's chunks).
    pub objects_read: u64,
    pub bytes_read: u64,
    pub blobs_new: u64,
    pub bytes_new: u64,
    pub packs_uploaded: u64,
    pub pack_bytes_uploaded: u64,
    pub repository_puts: u64,
    pub seconds: f64,
}

/// Returns the source identity of a bucket.
pub fn source_id(bucket: &str) -> String {
    format!("s3:{bucket}")
}

fn s3_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
}

/// Finds the newest complete snapshot of `source` with the same prefix.
async fn find_parent(repo: &Repository, source: &str, prefix: &str) -> Result<Option<Manifest>, RepoError> {
    let ids = repo.snapshot_ids().await?;
    for id in ids.iter().rev() {
        let m = repo.load_manifest(id).await?;
        if m.source == source
            && m.is_complete()
            && m.kind == SnapshotKind::Bucket
            && m.source_detail.get("prefix").map(String::as_str).unwrap_or("") == prefix
        {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// Checks that a bucket exists and the credentials may read it.
pub async fn head_bucket(settings: &S3Settings, client: &aws_sdk_s3::Client, bucket: &str) -> Result<(), S3Error> {
    client
        .head_bucket()
        .bucket(bucket)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| settings.classify("HeadBucket", bucket, "", e))
}

/// Takes a snapshot of a bucket into `repo`.
pub async fn snapshot(repo: Arc<Repository>, opts: SnapshotOptions) -> Result<SnapshotStats, BucketError> {
    let started = Utc::now();
    let id = SnapshotId::new(started);
    let source = source_id(&opts.bucket);
    let span = info_span!("snapshot", snapshot.id = %id, snapshot.source = %source);
    async move {
        // Settings and the bucket are checked before anything is recorded:
        // a configuration mistake leaves no failed snapshot behind.
        let settings = S3Settings::resolve("the source bucket", &opts.s3)?;
        let client = settings.client();
        head_bucket(&settings, &client, &opts.bucket).await?;
        let lock = repo.lock(LockKind::Shared, &format!("snapshot {source}")).await?;
        let source_ctx = SourceClient { settings: &settings, client: &client };
        let result = snapshot_locked(&repo, &opts, &source_ctx, &id, &source, started, &lock).await;
        let outcome = match result {
            Ok(stats) => Ok(stats),
            Err(err) => {
                warn!(error = %err, "snapshot failed");
                let failed = Manifest {
                    version: MANIFEST_VERSION,
                    id: id.clone(),
                    kind: SnapshotKind::Bucket,
                    source: source.clone(),
                    source_detail: detail(&opts),
                    started,
                    time: Utc::now(),
                    status: SnapshotStatus::Failed,
                    error: Some(err.to_string()),
                    parent: None,
                    objects: 0,
                    bytes: 0,
                    labels: BTreeMap::new(),
                    entries: Vec::new(),
                };
                if let Err(e) = repo.save_manifest(&failed).await {
                    warn!(error = %e, "could not record the failed run in the repository");
                }
                Err(err)
            }
        };
        if let Err(e) = lock.release().await {
            warn!(error = %e, "could not remove the repository lock; it turns stale by itself");
        }
        outcome
    }
    .instrument(span)
    .await
}

fn detail(opts: &SnapshotOptions) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("bucket".to_owned(), opts.bucket.clone()),
        ("prefix".to_owned(), opts.prefix.clone()),
    ])
}

/// The source bucket's S3 settings and client.
struct SourceClient<'a> {
    settings: &'a S3Settings,
    client: &'a aws_sdk_s3::Client,
}

/// Returns the key prefix of the repository when it lives in `bucket` on the same
/// endpoint as the source, so that a snapshot does not back up its own
/// repository.
fn repository_prefix_in(repo: &Repository, bucket: &str, settings: &S3Settings) -> Option<String> {
    match repo.url() {
        crate::repository::RepoUrl::S3 { bucket: b, prefix } if b == bucket => {
            let same_endpoint = repo.options().s3.endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
                == settings.endpoint;
            same_endpoint.then(|| if prefix.is_empty() { String::new() } else { format!("{prefix}/") })
        }
        _ => None,
    }
}

/// True when `key` is one of the repository's own objects under `prefix`.
fn is_repository_key(key: &str, prefix: &str) -> bool {
    const TOP_LEVEL: [&str; 7] = ["data/", "index/", "snapshots/", "locks/", "damaged/", "catalogue/", "reports/"];
    match key.strip_prefix(prefix) {
        Some(rest) => rest == "config" || TOP_LEVEL.iter().any(|t| rest.starts_with(t)),
        None => false,
    }
}

async fn snapshot_locked(
    repo: &Arc<Repository>,
    opts: &SnapshotOptions,
    source_client: &SourceClient<'_>,
    id: &SnapshotId,
    source: &str,
    started: DateTime<Utc>,
    lock: &crate::repository::lock::LockGuard,
) -> Result<SnapshotStats, BucketError> {
    let clock = std::time::Instant::now();
    let (settings, client) = (source_client.settings, source_client.client);
    // The source listing and the parent manifest come from different
    // servers, so they are fetched at the same time.
    let listing = list_objects(settings, client, &opts.bucket, &opts.prefix);
    let (listed, parent) = tokio::join!(listing, find_parent(repo, source, &opts.prefix));
    let (mut listed, parent) = (listed?, parent?);
    if let Some(own) = repository_prefix_in(repo, &opts.bucket, settings) {
        let before = listed.len();
        listed.retain(|o| !is_repository_key(&o.key, &own));
        if listed.len() != before {
            warn!(
                repo.prefix = %own,
                skipped = before - listed.len(),
                "the repository is inside the source bucket; its own objects are left out of the snapshot"
            );
        }
    }
    let parent_entries: HashMap<String, Entry> = parent
        .as_ref()
        .map(|p| p.entries.iter().map(|e| (e.key.clone(), e.clone())).collect())
        .unwrap_or_default();

    let total_objects = listed.len() as u64;
    let total_bytes: u64 = listed.iter().map(|o| o.size).sum();
    info!(
        snapshot.parent = parent.as_ref().map(|p| p.id.to_string()).unwrap_or_default(),
        source.objects = total_objects,
        source.bytes = total_bytes,
        "bucket listed"
    );
    let progress = Progress::new("snapshot", total_objects, total_bytes, opts.progress);
    let writer = repo.pack_writer();
    let tags_supported = AtomicBool::new(opts.tags);
    let read_objects = AtomicU64::new(0);
    let read_bytes = AtomicU64::new(0);

    let ctx = ReadContext {
        settings,
        client,
        bucket: &opts.bucket,
        writer: &writer,
        tags: &tags_supported,
        repo,
    };
    let mut entries: Vec<Entry> = futures::stream::iter(listed.into_iter().map(|obj| {
        let ctx = &ctx;
        let parent_entries = &parent_entries;
        let progress = &progress;
        let read_objects = &read_objects;
        let read_bytes = &read_bytes;
        async move {
            let size = obj.size;
            if let Some(prev) = parent_entries.get(&obj.key) {
                if unchanged(prev, &obj) && prev.chunks.iter().all(|c| repo.with_index(|i| i.has_usable(c))) {
                    debug!(s3.key = %obj.key, "unchanged since the parent snapshot");
                    progress.add(1, size, total_objects);
                    return Ok::<Entry, BucketError>(prev.clone());
                }
            }
            let entry = ctx.read_object(&obj).await?;
            read_objects.fetch_add(1, Ordering::Relaxed);
            read_bytes.fetch_add(entry.size, Ordering::Relaxed);
            progress.add(1, size, total_objects);
            Ok(entry)
        }
    }))
    .buffer_unordered(opts.concurrency.max(1))
    .try_collect()
    .await?;
    progress.finish();

    writer.finish().await?;
    lock.ensure_held().await.map_err(RepoError::from)?;
    entries.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        id: id.clone(),
        kind: SnapshotKind::Bucket,
        source: source.to_owned(),
        source_detail: detail(opts),
        started,
        time: Utc::now(),
        status: SnapshotStatus::Complete,
        error: None,
        parent: parent.map(|p| p.id),
        objects: entries.len() as u64,
        bytes: entries.iter().map(|e| e.size).sum(),
        labels: BTreeMap::new(),
        entries,
    };
    repo.save_manifest(&manifest).await?;
    let stats = &writer.stats;
    let out = SnapshotStats {
        snapshot: id.clone(),
        source: source.to_owned(),
        objects: manifest.objects,
        bytes: manifest.bytes,
        objects_read: read_objects.load(Ordering::Relaxed),
        bytes_read: read_bytes.load(Ordering::Relaxed),
        blobs_new: stats.blobs_new.load(Ordering::Relaxed),
        bytes_new: stats.raw_bytes_new.load(Ordering::Relaxed),
        packs_uploaded: stats.packs.load(Ordering::Relaxed),
        pack_bytes_uploaded: stats.pack_bytes.load(Ordering::Relaxed),
        repository_puts: repo.backend().counters().puts.load(Ordering::Relaxed),
        seconds: clock.elapsed().as_secs_f64(),
    };
    info!(
        snapshot.objects = out.objects,
        snapshot.bytes = out.bytes,
        snapshot.objects_read = out.objects_read,
        snapshot.blobs_new = out.blobs_new,
        snapshot.packs = out.packs_uploaded,
        "snapshot committed"
    );
    Ok(out)
}

/// True when the listing shows the object as it was in the parent snapshot.
fn unchanged(prev: &Entry, obj: &ListedObject) -> bool {
    prev.size == obj.size
        && prev.etag.as_deref() == Some(obj.etag.as_str())
        && prev.last_modified == Some(obj.last_modified)
}

struct ReadContext<'a> {
    settings: &'a S3Settings,
    client: &'a aws_sdk_s3::Client,
    bucket: &'a str,
    writer: &'a Arc<crate::repository::pack::PackWriter>,
    tags: &'a AtomicBool,
    repo: &'a Arc<Repository>,
}

impl ReadContext<'_> {
    /// Streams one object through the chunker into the repository.
    async fn read_object(&self, obj: &ListedObject) -> Result<Entry, BucketError> {
        let span = tracing::debug_span!("object", s3.key = %obj.key);
        async move {
            let out = self
                .client
                .get_object()
                .bucket(self.bucket)
                .key(&obj.key)
                .send()
                .await
                .map_err(|e| self.settings.classify("GetObject", self.bucket, &obj.key, e))?;
            let expected = out.content_length.unwrap_or(0).max(0) as u64;
            // The next run compares its listing with these values, so keep
            // the listing's (millisecond) time when the GET returned the same
            // version. When the object changed after the listing, keep the
            // GET's values: they describe the bytes read, and the next run
            // then reads the object again.
            let same_version = out.e_tag.as_deref() == Some(obj.etag.as_str()) && expected == obj.size;
            let (etag, last_modified) = if same_version {
                (Some(obj.etag.clone()), Some(obj.last_modified))
            } else {
                debug!(s3.key = %obj.key, "object changed since the listing");
                (out.e_tag.clone(), s3_time(out.last_modified.as_ref()))
            };
            let mut entry = Entry {
                key: obj.key.clone(),
                size: expected,
                etag,
                last_modified,
                sha256: Digest([0; 32]),
                content_type: out.content_type.clone(),
                content_encoding: out.content_encoding.clone(),
                content_disposition: out.content_disposition.clone(),
                cache_control: out.cache_control.clone(),
                content_language: out.content_language.clone(),
                expires: out.expires_string.clone(),
                metadata: out.metadata.clone().unwrap_or_default().into_iter().collect(),
                tags: BTreeMap::new(),
                chunks: Vec::new(),
            };
            let config = self.repo.config().chunker.clone();
            let mut chunker = Chunker::new(config);
            let mut hasher = Hasher::new();
            let mut body = out.body;
            let mut read = 0u64;
            loop {
                let piece = body.try_next().await.map_err(|e| S3Error::Other {
                    operation: "GetObject",
                    endpoint: self.settings.endpoint_display(),
                    bucket: self.bucket.to_owned(),
                    key: obj.key.clone(),
                    detail: format!("reading the body failed after {read} bytes: {e}"),
                })?;
                let eof = piece.is_none();
                if let Some(p) = &piece {
                    read += p.len() as u64;
                    chunker.push(p);
                }
                while let Some(chunk) = chunker.next_chunk(eof) {
                    let (h, id) = tokio::task::spawn_blocking(move || {
                        let id = BlobId::of(&chunk);
                        let mut h = hasher;
                        h.update(&chunk);
                        (h, (id, chunk))
                    })
                    .await
                    .expect("hash task panicked");
                    hasher = h;
                    let (id, chunk) = id;
                    self.writer.store_hashed(id, chunk).await?;
                    entry.chunks.push(id);
                }
                if eof {
                    break;
                }
            }
            if read != expected {
                return Err(BucketError::ChangedWhileReading {
                    bucket: self.bucket.to_owned(),
                    key: obj.key.clone(),
                    expected,
                    actual: read,
                });
            }
            entry.sha256 = hasher.finish();
            if self.tags.load(Ordering::Relaxed) {
                entry.tags = self.read_tags(&obj.key).await?;
            }
            Ok(entry)
        }
        .instrument(span)
        .await
    }

    async fn read_tags(&self, key: &str) -> Result<BTreeMap<String, String>, BucketError> {
        match self.client.get_object_tagging().bucket(self.bucket).key(key).send().await {
            Ok(out) => Ok(out.tag_set().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect()),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e).unwrap_or("").to_owned();
                if status == Some(501) || code == "NotImplemented" {
                    if self.tags.swap(false, Ordering::Relaxed) {
                        warn!(
                            s3.endpoint = %self.settings.endpoint_display(),
                            "the source server does not support object tagging; ignoring tags for this run"
                        );
                    }
                    return Ok(BTreeMap::new());
                }
                Err(self.settings.classify("GetObjectTagging", self.bucket, key, e).into())
            }
        }
    }
}

/// Picks the newest complete bucket snapshot of `source` whose completion
/// time is at or before `target`.
pub async fn snapshot_at(
    repo: &Repository,
    source: Option<&str>,
    target: DateTime<Utc>,
) -> Result<Manifest, BucketError> {
    let mut candidates = Vec::new();
    for id in repo.snapshot_ids().await? {
        let m = repo.load_manifest(&id).await?;
        if m.kind == SnapshotKind::Bucket && m.is_complete() {
            candidates.push(m.summary());
        }
    }
    let source = match source {
        Some(s) => s.to_owned(),
        None => {
            let mut sources: Vec<_> = candidates.iter().map(|c| c.source.clone()).collect();
            sources.sort();
            sources.dedup();
            match sources.len() {
                0 => return Err(BucketError::NoSnapshots { source_id: "any bucket".into() }),
                1 => sources.remove(0),
                _ => return Err(BucketError::AmbiguousSource { sources: sources.join(", ") }),
            }
        }
    };
    let of_source: Vec<_> = candidates.into_iter().filter(|c| c.source == source).collect();
    let oldest = of_source.iter().map(|c| c.time).min();
    let best = of_source.into_iter().filter(|c| c.time <= target).max_by_key(|c| c.time);
    match (best, oldest) {
        (Some(b), _) => Ok(repo.load_manifest(&b.id).await?),
        (None, Some(o)) => Err(BucketError::NoSnapshotBefore {
            source_id: source,
            target: target.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            oldest: o.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }),
        (None, None) => Err(BucketError::NoSnapshots { source_id: source }),
    }
}

/// Settings of a bucket restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub to_bucket: String,
    /// Only keys starting with this prefix.
    pub prefix: String,
    pub s3: S3Overrides,
    pub overwrite: bool,
    pub dry_run: bool,
    pub concurrency: usize,
    pub multipart_threshold: u64,
    pub part_size: u64,
    /// Create the target bucket when it does not exist.
    pub create_bucket: bool,
    pub progress: bool,
}

/// Result of a restore (in a dry run, what it would do).
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub snapshot: SnapshotId,
    pub source: String,
    #[serde(serialize_with = "crate::repository::manifest::rfc3339_utc")]
    pub snapshot_time: DateTime<Utc>,
    pub to_bucket: String,
    pub dry_run: bool,
    pub objects: u64,
    pub bytes: u64,
    /// Objects already present with identical content, left as they are.
    pub identical: u64,
    /// Keys whose different content is (or would be) replaced.
    pub overwritten: Vec<String>,
    /// Bytes of the objects that are (or would be) written.
    pub bytes_to_write: u64,
    pub objects_written: u64,
    pub bytes_written: u64,
    pub multipart_objects: u64,
    pub seconds: f64,
}

/// Restores the objects of a bucket snapshot into `opts.to_bucket`.
pub async fn restore(repo: Arc<Repository>, manifest: &Manifest, opts: RestoreOptions) -> Result<RestoreReport, BucketError> {
    if manifest.kind != SnapshotKind::Bucket || !manifest.is_complete() {
        return Err(BucketError::NotRestorable(manifest.id.clone()));
    }
    let span = info_span!("restore", snapshot.id = %manifest.id, s3.bucket = %opts.to_bucket);
    async move {
        let lock = repo.lock(LockKind::Shared, &format!("restore {} into s3:{}", manifest.id, opts.to_bucket)).await?;
        let result = restore_locked(&repo, manifest, &opts).await;
        if let Err(e) = lock.release().await {
            warn!(error = %e, "could not remove the repository lock; it turns stale by itself");
        }
        result
    }
    .instrument(span)
    .await
}

async fn restore_locked(repo: &Arc<Repository>, manifest: &Manifest, opts: &RestoreOptions) -> Result<RestoreReport, BucketError> {
    let clock = std::time::Instant::now();
    let settings = S3Settings::resolve("the target bucket", &opts.s3)?;
    let client = settings.client();
    let entries: Vec<&Entry> = manifest.entries_with_prefix(&opts.prefix).collect();
    let mut report = RestoreReport {
        snapshot: manifest.id.clone(),
        source: manifest.source.clone(),
        snapshot_time: manifest.time,
        to_bucket: opts.to_bucket.clone(),
        dry_run: opts.dry_run,
        objects: entries.len() as u64,
        bytes: entries.iter().map(|e| e.size).sum(),
        identical: 0,
        overwritten: Vec::new(),
        bytes_to_write: 0,
        objects_written: 0,
        bytes_written: 0,
        multipart_objects: 0,
        seconds: 0.0,
    };

    let existing = match head_bucket(&settings, &client, &opts.to_bucket).await {
        Ok(()) => list_objects(&settings, &client, &opts.to_bucket, &opts.prefix).await?,
        Err(S3Error::NoSuchBucket { .. }) if opts.create_bucket => {
            if !opts.dry_run {
                client
                    .create_bucket()
                    .bucket(&opts.to_bucket)
                    .send()
                    .await
                    .map_err(|e| settings.classify("CreateBucket", &opts.to_bucket, "", e))?;
                info!(s3.bucket = %opts.to_bucket, "target bucket created");
            }
            Vec::new()
        }
        Err(e) => return Err(e.into()),
    };
    let existing: HashMap<&str, &ListedObject> = existing.iter().map(|o| (o.key.as_str(), o)).collect();

    // Decide per entry: write, skip (identical), or overwrite.
    let mut to_write = Vec::new();
    for e in &entries {
        match existing.get(e.key.as_str()) {
            None => to_write.push(*e),
            Some(found) => {
                if found.size == e.size && hash_object(&settings, &client, &opts.to_bucket, &e.key).await? == e.sha256 {
                    report.identical += 1;
                } else {
                    report.overwritten.push(e.key.clone());
                    to_write.push(*e);
                }
            }
        }
    }
    if !report.overwritten.is_empty() && !opts.overwrite && !opts.dry_run {
        let sample: Vec<_> = report.overwritten.iter().take(20).map(|k| format!("{k:?}")).collect();
        return Err(BucketError::WouldOverwrite {
            bucket: opts.to_bucket.clone(),
            count: report.overwritten.len(),
            sample: sample.join(", "),
        });
    }
    report.bytes_to_write = to_write.iter().map(|e| e.size).sum();
    if opts.dry_run {
        report.seconds = clock.elapsed().as_secs_f64();
        return Ok(report);
    }

    // Objects in pack order, so that the objects written at the same time
    // read the same few packs and each pack is downloaded once.
    let position = |e: &Entry| {
        e.chunks.first().and_then(|c| repo.with_index(|i| i.usable_locations(c).last().map(|l| (l.pack, l.offset))))
    };
    to_write.sort_by_cached_key(|e| position(e));
    let total_bytes: u64 = to_write.iter().map(|e| e.size).sum();
    let total_objects = to_write.len() as u64;
    let progress = Progress::new("restore", total_objects, total_bytes, opts.progress);
    let written = AtomicU64::new(0);
    let written_bytes = AtomicU64::new(0);
    let multipart = AtomicU64::new(0);
    let cache = PackCache::new(repo.clone(), PACK_CACHE_PACKS);
    let writer = ObjectWriter { cache: &cache, settings: &settings, client: &client, opts, snapshot: &manifest.id };
    futures::stream::iter(to_write.into_iter().map(|e| {
        let writer = &writer;
        let progress = &progress;
        let written = &written;
        let written_bytes = &written_bytes;
        let multipart = &multipart;
        async move {
            let used_multipart = writer.write(e).await?;
            if used_multipart {
                multipart.fetch_add(1, Ordering::Relaxed);
            }
            written.fetch_add(1, Ordering::Relaxed);
            written_bytes.fetch_add(e.size, Ordering::Relaxed);
            progress.add(1, e.size, total_objects);
            Ok::<(), BucketError>(())
        }
    }))
    .buffer_unordered(opts.concurrency.max(1))
    .try_collect::<Vec<()>>()
    .await?;
    progress.finish();
    report.objects_written = written.into_inner();
    report.bytes_written = written_bytes.into_inner();
    report.multipart_objects = multipart.into_inner();
    report.seconds = clock.elapsed().as_secs_f64();
    info!(
        restore.objects_written = report.objects_written,
        restore.bytes_written = report.bytes_written,
        restore.identical = report.identical,
        "restore finished"
    );
    Ok(report)
}

/// SHA-256 of an object in a bucket, streamed.
async fn hash_object(settings: &S3Settings, client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<Digest, BucketError> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| settings.classify("GetObject", bucket, key, e))?;
    let mut hasher = Hasher::new();
    let mut body = out.body;
    while let Some(piece) = body.try_next().await.map_err(|e| S3Error::Other {
        operation: "GetObject",
        endpoint: settings.endpoint_display(),
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        detail: e.to_string(),
    })? {
        hasher.update(&piece);
    }
    Ok(hasher.finish())
}

fn tagging(tags: &BTreeMap<String, String>) -> Option<String> {
    if tags.is_empty() {
        return None;
    }
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
    Some(tags.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&"))
}

struct ObjectWriter<'a> {
    cache: &'a PackCache,
    settings: &'a S3Settings,
    client: &'a aws_sdk_s3::Client,
    opts: &'a RestoreOptions,
    snapshot: &'a SnapshotId,
}

impl ObjectWriter<'_> {
    /// Writes one object; returns whether a multipart upload was used.
    async fn write(&self, e: &Entry) -> Result<bool, BucketError> {
        let span = tracing::debug_span!("object", s3.key = %e.key);
        async move {
            if e.size <= self.opts.multipart_threshold {
                self.write_single(e).await?;
                Ok(false)
            } else {
                self.write_multipart(e).await?;
                Ok(true)
            }
        }
        .instrument(span)
        .await
    }

    async fn write_single(&self, e: &Entry) -> Result<(), BucketError> {
        let mut buf = BytesMut::with_capacity(e.size as usize);
        for c in &e.chunks {
            self.cache.read_blob_into(c, &mut buf).await?;
        }
        let data = buf.freeze();
        let actual = match e.chunks.as_slice() {
            // The blob's id is the SHA-256 of these very bytes, checked as
            // they were read.
            [only] => only.0,
            _ => {
                let d = data.clone();
                tokio::task::spawn_blocking(move || Digest::of(&d)).await.expect("hash task panicked")
            }
        };
        if actual != e.sha256 {
            return Err(BucketError::HashMismatch {
                key: e.key.clone(),
                snapshot: self.snapshot.clone(),
                expected: e.sha256,
                actual,
            });
        }
        let put = self
            .client
            .put_object()
            .bucket(&self.opts.to_bucket)
            .key(&e.key)
            .content_length(data.len() as i64)
            .set_content_type(e.content_type.clone())
            .set_content_encoding(e.content_encoding.clone())
            .set_content_disposition(e.content_disposition.clone())
            .set_cache_control(e.cache_control.clone())
            .set_content_language(e.content_language.clone())
            .set_metadata((!e.metadata.is_empty()).then(|| e.metadata.clone().into_iter().collect()))
            .set_tagging(tagging(&e.tags))
            .body(ByteStream::from(data));
        // The content was checked against its SHA-256 above; the signature
        // does not hash it again.
        put.customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|err| self.settings.classify("PutObject", &self.opts.to_bucket, &e.key, err))?;
        debug!(s3.key = %e.key, bytes = e.size, "object restored");
        Ok(())
    }

    async fn write_multipart(&self, e: &Entry) -> Result<(), BucketError> {
        let bucket = &self.opts.to_bucket;
        let created = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(&e.key)
            .set_content_type(e.content_type.clone())
            .set_content_encoding(e.content_encoding.clone())
            .set_content_disposition(e.content_disposition.clone())
            .set_cache_control(e.cache_control.clone())
            .set_content_language(e.content_language.clone())
            .set_metadata((!e.metadata.is_empty()).then(|| e.metadata.clone().into_iter().collect()))
            .set_tagging(tagging(&e.tags))
            .send()
            .await
            .map_err(|err| self.settings.classify("CreateMultipartUpload", bucket, &e.key, err))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let result = self.upload_parts(e, &upload_id).await;
        match result {
            Ok(parts) => {
                self.client
                    .complete_multipart_upload()
                    .bucket(bucket)
                    .key(&e.key)
                    .upload_id(&upload_id)
                    .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                    .send()
                    .await
                    .map_err(|err| self.settings.classify("CompleteMultipartUpload", bucket, &e.key, err))?;
                debug!(s3.key = %e.key, bytes = e.size, "object restored with a multipart upload");
                Ok(())
            }
            Err(err) => {
                if let Err(abort) = self
                    .client
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(&e.key)
                    .upload_id(&upload_id)
                    .send()
                    .await
                {
                    warn!(s3.key = %e.key, error = %abort, "could not abort the multipart upload; the server's lifecycle rules must clean it");
                }
                Err(err)
            }
        }
    }

    /// Uploads the parts and checks the whole-object hash before returning
    /// them, so that a mismatch aborts the upload instead of completing it.
    async fn upload_parts(&self, e: &Entry, upload_id: &str) -> Result<Vec<CompletedPart>, BucketError> {
        let bucket = &self.opts.to_bucket;
        let part_size = self.opts.part_size.max(5 * 1024 * 1024) as usize;
        let mut hasher = Hasher::new();
        let mut parts = Vec::new();
        // Room for one part plus one largest chunk, so the buffer never
        // grows by doubling.
        let mut buf = BytesMut::with_capacity(part_size + crate::repository::chunker::MAX_SIZE as usize);
        let mut chunks = e.chunks.iter().peekable();
        loop {
            let last = chunks.peek().is_none();
            if buf.len() >= part_size || (last && (!buf.is_empty() || parts.is_empty())) {
                let take = buf.len().min(part_size);
                let part: Bytes = buf.split_to(take).freeze();
                hasher.update(&part);
                let number = parts.len() as i32 + 1;
                let out = self
                    .client
                    .upload_part()
                    .bucket(bucket)
                    .key(&e.key)
                    .upload_id(upload_id)
                    .part_number(number)
                    .content_length(part.len() as i64)
                    .body(ByteStream::from(part))
                    .customize()
                    .disable_payload_signing()
                    .send()
                    .await
                    .map_err(|err| self.settings.classify("UploadPart", bucket, &e.key, err))?;
                parts.push(CompletedPart::builder().set_e_tag(out.e_tag).part_number(number).build());
                continue;
            }
            if last {
                break;
            }
            let id = chunks.next().expect("peeked");
            self.cache.read_blob_into(id, &mut buf).await?;
        }
        let actual = hasher.finish();
        if actual != e.sha256 {
            return Err(BucketError::HashMismatch {
                key: e.key.clone(),
                snapshot: self.snapshot.clone(),
                expected: e.sha256,
                actual,
            });
        }
        Ok(parts)
    }
}

/// Tags as the SDK's type, for tests that set them on source objects.
pub fn to_tagging(tags: &BTreeMap<String, String>) -> Tagging {
    Tagging::builder()
        .set_tag_set(Some(
            tags.iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build().expect("key and value set"))
                .collect(),
        ))
        .build()
        .expect("tag set given")
}
