//! The content-addressed repository: blobs in packs, indexes, snapshot
//! manifests and locks, on a local directory or an S3 bucket prefix.
//!
//! The stored format, the write ordering and the lock protocol are specified
//! in `docs/design.md`; this module implements them.

pub mod backend;
pub mod check;
pub mod chunker;
pub mod gc;
pub mod index;
pub mod lock;
pub mod manifest;
pub mod pack;
pub mod pack_cache;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::id::{BlobId, IndexId, PackId, SnapshotId};
use crate::s3::{S3Error, S3Overrides, S3Settings};
use backend::{BackendError, DynBackend, LocalBackend, S3Backend};
use index::{IndexFile, MasterIndex};
use lock::{LockGuard, LockKind, LockTiming};
use manifest::Manifest;

/// Repository format version written by this code.
pub const FORMAT_VERSION: u32 = 1;

/// Default zstd level: level 3 compresses text well and costs little time on
/// incompressible image data.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;

/// Errors of the repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("invalid repository URL {url:?}: {reason}; use s3://bucket/prefix or file:///absolute/path")]
    InvalidUrl { url: String, reason: String },
    #[error("no repository at {location}: run `visage-dr repo init --repo {location}` or take a snapshot, which initialises it")]
    NotInitialised { location: String },
    #[error("the repository at {location} has format version {found}, but this visage-dr reads version {FORMAT_VERSION}; use a matching visage-dr release")]
    UnsupportedVersion { location: String, found: u32 },
    #[error("{what} {key} is corrupt: {reason}")]
    Corrupt { what: &'static str, key: String, reason: String },
    #[error("snapshot {0} not found; list snapshots with `visage-dr snapshots`")]
    SnapshotNotFound(String),
    #[error("snapshot reference {reference:?} matches {count} snapshots; give more of the id")]
    AmbiguousSnapshot { reference: String, count: usize },
    #[error("blob {blob} is not stored in any index; the repository is missing data that a snapshot needs (run `visage-dr check`)")]
    BlobMissing { blob: BlobId },
    #[error("no readable copy of blob {blob}: {problems}")]
    BlobUnreadable { blob: BlobId, problems: String },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error(transparent)]
    Lock(#[from] lock::LockError),
}

/// Location of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoUrl {
    /// `file:///absolute/path`
    Local(PathBuf),
    /// `s3://bucket/prefix`
    S3 { bucket: String, prefix: String },
}

impl FromStr for RepoUrl {
    type Err = RepoError;

    fn from_str(s: &str) -> Result<Self, RepoError> {
        let invalid = |reason: &str| RepoError::InvalidUrl { url: s.to_owned(), reason: reason.to_owned() };
        if let Some(rest) = s.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(invalid("a file URL needs an absolute path (three slashes: file:///var/backups)"));
            }
            return Ok(RepoUrl::Local(PathBuf::from(rest)));
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("the bucket name is missing"));
            }
            if bucket.len() < 3 || bucket.len() > 63 {
                return Err(invalid("a bucket name has 3 to 63 characters"));
            }
            return Ok(RepoUrl::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        Err(invalid("unknown scheme"))
    }
}

impl std::fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepoUrl::Local(p) => write!(f, "file://{}", p.display()),
            RepoUrl::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            RepoUrl::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// Settings of one repository session.
#[derive(Debug, Clone)]
pub struct RepoOptions {
    /// S3 settings for the repository (over the AWS environment).
    pub s3: S3Overrides,
    /// zstd level for new frames; `None` uses the repository's default.
    pub compression_level: Option<i32>,
    /// Pack size at which a pack is closed and uploaded.
    pub pack_size: usize,
    /// Packs uploaded at the same time.
    pub upload_concurrency: usize,
    /// An index file is written after this many packs.
    pub index_flush_packs: usize,
    pub lock_timing: LockTiming,
    /// How long to wait for a conflicting lock to go.
    pub lock_wait: Duration,
}

impl Default for RepoOptions {
    fn default() -> Self {
        Self {
            s3: S3Overrides::default(),
            compression_level: None,
            pack_size: pack::DEFAULT_PACK_SIZE,
            upload_concurrency: 3,
            index_flush_packs: pack::INDEX_FLUSH_PACKS,
            lock_timing: LockTiming::default(),
            lock_wait: Duration::ZERO,
        }
    }
}

/// The repository's `config` object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub format_version: u32,
    pub id: String,
    pub created: DateTime<Utc>,
    pub chunker: ChunkerConfig,
    pub compression: CompressionConfig,
    /// Reserved for client-side encryption; always `null` in version 1.
    pub encryption: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChunkerConfig {
    pub algorithm: String,
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompressionConfig {
    pub algorithm: String,
    pub level: i32,
}

/// An open repository.
pub struct Repository {
    url: RepoUrl,
    backend: DynBackend,
    config: Config,
    options: RepoOptions,
    index: RwLock<MasterIndex>,
}

/// Builds the backend for `url`.
pub fn open_backend(url: &RepoUrl, options: &RepoOptions) -> Result<DynBackend, RepoError> {
    Ok(match url {
        RepoUrl::Local(path) => Arc::new(LocalBackend::new(path.clone())),
        RepoUrl::S3 { bucket, prefix } => {
            let settings = S3Settings::resolve("the repository", &options.s3)?;
            Arc::new(S3Backend::new(settings, bucket.clone(), prefix.clone()))
        }
    })
}

/// Compresses JSON metadata (index files and manifests).
pub(crate) fn encode_json<T: Serialize>(value: &T) -> (Vec<u8>, Bytes) {
    let json = serde_json::to_vec(value).expect("metadata serialises");
    let compressed = zstd::bulk::compress(&json, DEFAULT_COMPRESSION_LEVEL).expect("zstd compresses in memory");
    (json, Bytes::from(compressed))
}

pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    key: &str,
    data: &[u8],
) -> Result<T, RepoError> {
    let corrupt = |reason: String| RepoError::Corrupt { what, key: key.to_owned(), reason };
    let json = zstd::stream::decode_all(data).map_err(|e| corrupt(format!("zstd: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| corrupt(format!("JSON: {e}")))
}

impl Repository {
    /// Creates a repository at `url`. Fails when one exists already.
    pub async fn init(url: &RepoUrl, options: RepoOptions) -> Result<Repository, RepoError> {
        let backend = open_backend(url, &options)?;
        if backend.head("config").await?.is_some() {
            return Err(RepoError::Corrupt {
                what: "repository",
                key: url.to_string(),
                reason: "a repository exists there already".into(),
            });
        }
        let config = Config {
            format_version: FORMAT_VERSION,
            id: hex::encode(rand::random::<[u8; 16]>()),
            created: Utc::now(),
            chunker: chunker::default_config(),
            compression: CompressionConfig {
                algorithm: "zstd".into(),
                level: options.compression_level.unwrap_or(DEFAULT_COMPRESSION_LEVEL),
            },
            encryption: None,
        };
        backend
            .put("config", Bytes::from(serde_json::to_vec_pretty(&config).expect("config serialises")))
            .await?;
        info!(repo.url = %url, repo.id = %config.id, "repository initialised");
        Ok(Repository {
            url: url.clone(),
            backend,
            config,
            options,
            index: RwLock::new(MasterIndex::default()),
        })
    }

    /// Opens the repository at `url` and loads its index.
    pub async fn open(url: &RepoUrl, options: RepoOptions) -> Result<Repository, RepoError> {
        let backend = open_backend(url, &options)?;
        let data = match backend.get("config").await {
            Ok(d) => d,
            Err(e) if e.is_not_found() => {
                return Err(RepoError::NotInitialised { location: url.to_string() })
            }
            Err(e) => return Err(e.into()),
        };
        let config: Config = serde_json::from_slice(&data).map_err(|e| RepoError::Corrupt {
            what: "repository config",
            key: "config".into(),
            reason: e.to_string(),
        })?;
        if config.format_version != FORMAT_VERSION {
            return Err(RepoError::UnsupportedVersion {
                location: url.to_string(),
                found: config.format_version,
            });
        }
        let repo = Repository {
            url: url.clone(),
            backend,
            config,
            options,
            index: RwLock::new(MasterIndex::default()),
        };
        repo.reload_index().await?;
        Ok(repo)
    }

    /// Opens the repository, initialising it first when `url` contains none.
    pub async fn open_or_init(url: &RepoUrl, options: RepoOptions) -> Result<Repository, RepoError> {
        match Self::open(url, options.clone()).await {
            Err(RepoError::NotInitialised { .. }) => Self::init(url, options).await,
            other => other,
        }
    }

    pub fn url(&self) -> &RepoUrl {
        &self.url
    }

    pub fn backend(&self) -> &DynBackend {
        &self.backend
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn options(&self) -> &RepoOptions {
        &self.options
    }

    pub fn compression_level(&self) -> i32 {
        self.options.compression_level.unwrap_or(self.config.compression.level)
    }

    /// Reads every index file and damage record into memory.
    pub async fn reload_index(&self) -> Result<(), RepoError> {
        let mut master = MasterIndex::default();
        let listed = self.backend.list("index/").await?;
        let files = futures::future::try_join_all(listed.iter().map(|obj| async move {
            let data = self.backend.get(&obj.key).await?;
            let file: IndexFile = decode_json("index file", &obj.key, &data)?;
            let id_text = obj.key.trim_start_matches("index/");
            let id = IndexId::from_str(id_text).map_err(|e| RepoError::Corrupt {
                what: "index file name",
                key: obj.key.clone(),
                reason: e.to_string(),
            })?;
            Ok::<_, RepoError>((id, file))
        }))
        .await?;
        for (id, file) in &files {
            master.add_file(*id, file);
        }
        for obj in self.backend.list("damaged/").await? {
            let name = obj.key.trim_start_matches("damaged/");
            if let Some((pack, blob)) = name.split_once('-') {
                if let (Ok(p), Ok(b)) = (pack.parse::<PackId>(), blob.parse::<BlobId>()) {
                    master.mark_damaged(p, b);
                    continue;
                }
            }
            warn!(s3.key = %obj.key, "ignoring a damage record with an unexpected name");
        }
        debug!(index.files = files.len(), index.blobs = master.blob_count(), "index loaded");
        *self.index.write().expect("index lock") = master;
        Ok(())
    }

    /// Runs `f` with read access to the in-memory index.
    pub fn with_index<R>(&self, f: impl FnOnce(&MasterIndex) -> R) -> R {
        f(&self.index.read().expect("index lock"))
    }

    pub(crate) fn with_index_mut<R>(&self, f: impl FnOnce(&mut MasterIndex) -> R) -> R {
        f(&mut self.index.write().expect("index lock"))
    }

    /// Reads a blob, checks its hash, and falls back to other copies when one
    /// is unreadable.
    pub async fn read_blob(&self, id: &BlobId) -> Result<Bytes, RepoError> {
        let locations = self.with_index(|i| i.usable_locations(id));
        if locations.is_empty() {
            return Err(RepoError::BlobMissing { blob: *id });
        }
        let mut problems = Vec::new();
        for loc in locations.iter().rev() {
            let key = pack::pack_key(&loc.pack);
            match self.backend.get_range(&key, loc.offset, loc.length).await {
                Ok(frame) => match pack::decode_frame(id, &frame, loc.raw_length) {
                    Ok(data) => return Ok(data),
                    Err(problem) => {
                        warn!(blob.id = %id, s3.key = %key, %problem, "blob copy failed verification, trying another copy");
                        problems.push(format!("{key}: {problem}"));
                    }
                },
                Err(e) => {
                    warn!(blob.id = %id, s3.key = %key, error = %e, "blob copy unreadable, trying another copy");
                    problems.push(format!("{key}: {e}"));
                }
            }
        }
        Err(RepoError::BlobUnreadable { blob: *id, problems: problems.join("; ") })
    }

    /// Writes a manifest. Callers must have finished their pack writer first
    /// (design rule 3).
    pub async fn save_manifest(&self, manifest: &Manifest) -> Result<(), RepoError> {
        let (_, data) = encode_json(manifest);
        let key = format!("snapshots/{}", manifest.id);
        self.backend.put(&key, data).await?;
        info!(snapshot.id = %manifest.id, snapshot.source = %manifest.source, snapshot.status = %manifest.status, "snapshot manifest written");
        Ok(())
    }

    pub async fn load_manifest(&self, id: &SnapshotId) -> Result<Manifest, RepoError> {
        let key = format!("snapshots/{id}");
        let data = match self.backend.get(&key).await {
            Ok(d) => d,
            Err(e) if e.is_not_found() => return Err(RepoError::SnapshotNotFound(id.to_string())),
            Err(e) => return Err(e.into()),
        };
        decode_json("snapshot manifest", &key, &data)
    }

    /// Ids of every snapshot manifest, sorted (by start time).
    pub async fn snapshot_ids(&self) -> Result<Vec<SnapshotId>, RepoError> {
        let mut ids = Vec::new();
        for obj in self.backend.list("snapshots/").await? {
            let name = obj.key.trim_start_matches("snapshots/");
            match name.parse::<SnapshotId>() {
                Ok(id) => ids.push(id),
                Err(e) => warn!(s3.key = %obj.key, error = %e, "ignoring an object in snapshots/ that is not a manifest"),
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Loads every manifest, sorted by id.
    pub async fn load_manifests(&self) -> Result<Vec<Manifest>, RepoError> {
        let ids = self.snapshot_ids().await?;
        let mut out = Vec::with_capacity(ids.len());
        // Bounded concurrency: manifests can be large.
        use futures::StreamExt;
        // Owned ids keep the stream's future Send for callers that spawn it.
        let mut stream = futures::stream::iter(ids).map(|id| async move { self.load_manifest(&id).await }).buffered(8);
        while let Some(m) = stream.next().await {
            out.push(m?);
        }
        Ok(out)
    }

    /// Resolves a snapshot reference: a full id or a unique prefix of one.
    pub async fn resolve_snapshot(&self, reference: &str) -> Result<SnapshotId, RepoError> {
        let ids = self.snapshot_ids().await?;
        let matches: Vec<_> = ids.into_iter().filter(|id| id.as_str().starts_with(reference)).collect();
        match matches.len() {
            1 => Ok(matches.into_iter().next().expect("one match")),
            0 => Err(RepoError::SnapshotNotFound(reference.to_owned())),
            n => Err(RepoError::AmbiguousSnapshot { reference: reference.to_owned(), count: n }),
        }
    }

    /// Takes a repository lock.
    pub async fn lock(&self, kind: LockKind, purpose: &str) -> Result<LockGuard, RepoError> {
        Ok(LockGuard::acquire(
            self.backend.clone(),
            kind,
            purpose,
            self.options.lock_timing,
            self.options.lock_wait,
        )
        .await?)
    }

    /// Creates a writer that packs new blobs into this repository.
    pub fn pack_writer(self: &Arc<Self>) -> Arc<pack::PackWriter> {
        Arc::new(pack::PackWriter::new(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_url_parses_both_schemes() {
        assert_eq!(
            "s3://visage-backups/dr/".parse::<RepoUrl>().unwrap(),
            RepoUrl::S3 { bucket: "visage-backups".into(), prefix: "dr".into() }
        );
        assert_eq!(
            "s3://visage-backups".parse::<RepoUrl>().unwrap(),
            RepoUrl::S3 { bucket: "visage-backups".into(), prefix: "".into() }
        );
        assert_eq!(
            "file:///var/backups/visage".parse::<RepoUrl>().unwrap(),
            RepoUrl::Local("/var/backups/visage".into())
        );
    }

    #[test]
    fn repo_url_rejects_bad_forms() {
        for bad in ["file://relative/path", "s3://", "http://x/y", "/var/backups", "s3://ab/x"] {
            let err = bad.parse::<RepoUrl>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
            assert!(err.contains("s3://bucket/prefix"), "{err}");
        }
    }
}
