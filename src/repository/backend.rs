//! Storage backends: a local directory and an S3 bucket prefix.
//!
//! Both store whole objects under keys relative to the repository root. A
//! write returns only after the store acknowledged it (S3) or the file was
//! fsynced and renamed into place (local directory). Callers that must check
//! the stored length (design rule 1) follow it with [`Backend::head`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use tokio::io::AsyncWriteExt;

use crate::s3::{S3Error, S3Settings};

/// Errors of a storage backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{key} not found in the repository")]
    NotFound { key: String },
    #[error("{op} {path} failed: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error("{key} was written with {expected} bytes but the store reports {actual} bytes")]
    LengthMismatch { key: String, expected: u64, actual: u64 },
}

impl BackendError {
    pub fn is_not_found(&self) -> bool {
        match self {
            BackendError::NotFound { .. } => true,
            BackendError::S3(e) => e.is_not_found(),
            _ => false,
        }
    }
}

/// An object as listed by a backend.
#[derive(Debug, Clone)]
pub struct ObjectMeta {
    /// Key relative to the repository root.
    pub key: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
}

/// Request counters, for benchmarks and tests that assert upload volume.
#[derive(Debug, Default)]
pub struct Counters {
    pub puts: AtomicU64,
    pub put_bytes: AtomicU64,
    pub gets: AtomicU64,
    pub get_bytes: AtomicU64,
}

impl Counters {
    fn put(&self, bytes: u64) {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.put_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn get(&self, bytes: u64) {
        self.gets.fetch_add(1, Ordering::Relaxed);
        self.get_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Object storage under a repository root.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Returns the repository URL, for messages.
    fn location(&self) -> String;

    /// Stores `data` at `key`, replacing any object there, and returns once
    /// the store acknowledged the write.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), BackendError>;

    async fn get(&self, key: &str) -> Result<Bytes, BackendError>;

    /// Reads `length` bytes at `offset`.
    async fn get_range(&self, key: &str, offset: u64, length: u64) -> Result<Bytes, BackendError>;

    /// Returns the object's metadata, or `None` when it does not exist.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, BackendError>;

    /// Lists every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, BackendError>;

    /// Deletes `key`; deleting a missing key succeeds.
    async fn delete(&self, key: &str) -> Result<(), BackendError>;

    fn counters(&self) -> &Counters;
}

/// A repository in a local directory.
pub struct LocalBackend {
    root: PathBuf,
    counters: Counters,
}

impl LocalBackend {
    pub fn new(root: PathBuf) -> Self {
        Self { root, counters: Counters::default() }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BackendError + 'a {
    move |source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            BackendError::NotFound { key: path.display().to_string() }
        } else {
            BackendError::Io { op, path: path.to_owned(), source }
        }
    }
}

#[async_trait]
impl Backend for LocalBackend {
    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), BackendError> {
        let path = self.path(key);
        let dir = path.parent().expect("repository keys have a parent directory").to_owned();
        tokio::fs::create_dir_all(&dir).await.map_err(io_err("create directory", &dir))?;
        // Temporary file in the same directory, fsync, rename, fsync the
        // directory: the object is either absent or complete after a crash.
        let tmp = dir.join(format!(
            ".tmp-{}-{:016x}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            rand::random::<u64>()
        ));
        let write = async {
            let mut f = tokio::fs::File::create(&tmp).await?;
            f.write_all(&data).await?;
            f.sync_all().await?;
            drop(f);
            tokio::fs::rename(&tmp, &path).await?;
            let d = tokio::fs::File::open(&dir).await?;
            d.sync_all().await
        };
        if let Err(e) = write.await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(BackendError::Io { op: "write", path, source: e });
        }
        let actual = tokio::fs::metadata(&path).await.map_err(io_err("stat", &path))?.len();
        if actual != data.len() as u64 {
            return Err(BackendError::LengthMismatch {
                key: key.to_owned(),
                expected: data.len() as u64,
                actual,
            });
        }
        self.counters.put(data.len() as u64);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, BackendError> {
        let path = self.path(key);
        let data = tokio::fs::read(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                BackendError::NotFound { key: key.to_owned() }
            } else {
                BackendError::Io { op: "read", path: path.clone(), source: e }
            }
        })?;
        self.counters.get(data.len() as u64);
        Ok(Bytes::from(data))
    }

    async fn get_range(&self, key: &str, offset: u64, length: u64) -> Result<Bytes, BackendError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let path = self.path(key);
        let mut f = tokio::fs::File::open(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                BackendError::NotFound { key: key.to_owned() }
            } else {
                BackendError::Io { op: "open", path: path.clone(), source: e }
            }
        })?;
        f.seek(std::io::SeekFrom::Start(offset)).await.map_err(io_err("seek", &path))?;
        let mut buf = Vec::with_capacity(length as usize);
        f.take(length).read_to_end(&mut buf).await.map_err(io_err("read", &path))?;
        self.counters.get(buf.len() as u64);
        Ok(Bytes::from(buf))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, BackendError> {
        let path = self.path(key);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(ObjectMeta {
                key: key.to_owned(),
                size: m.len(),
                last_modified: m.modified().map(DateTime::<Utc>::from).unwrap_or_else(|_| Utc::now()),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BackendError::Io { op: "stat", path, source: e }),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, BackendError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        let found = tokio::task::spawn_blocking(move || -> Result<Vec<ObjectMeta>, BackendError> {
            // Walk only the directory part of the prefix.
            let dir_part = match prefix.rfind('/') {
                Some(i) => &prefix[..i],
                None => "",
            };
            let start = root.join(dir_part);
            let mut out = Vec::new();
            let mut stack = vec![start];
            while let Some(dir) = stack.pop() {
                let rd = match std::fs::read_dir(&dir) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(BackendError::Io { op: "list", path: dir, source: e }),
                };
                for entry in rd {
                    let entry = entry.map_err(io_err("list", &dir))?;
                    let path = entry.path();
                    let ft = entry.file_type().map_err(io_err("stat", &path))?;
                    if ft.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    let name = entry.file_name();
                    if name.to_string_lossy().starts_with(".tmp-") {
                        continue;
                    }
                    let rel = path
                        .strip_prefix(&root)
                        .expect("walk stays under the root")
                        .to_string_lossy()
                        .replace(std::path::MAIN_SEPARATOR, "/");
                    if !rel.starts_with(&prefix) {
                        continue;
                    }
                    let meta = entry.metadata().map_err(io_err("stat", &path))?;
                    out.push(ObjectMeta {
                        key: rel,
                        size: meta.len(),
                        last_modified: meta
                            .modified()
                            .map(DateTime::<Utc>::from)
                            .unwrap_or_else(|_| Utc::now()),
                    });
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
        .expect("listing task panicked")?;
        Ok(found)
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let path = self.path(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::Io { op: "delete", path, source: e }),
        }
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }
}

/// A repository under a prefix of an S3 bucket.
pub struct S3Backend {
    settings: S3Settings,
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Key prefix ending in `/`, or empty.
    prefix: String,
    counters: Counters,
}

impl S3Backend {
    pub fn new(settings: S3Settings, bucket: String, prefix: String) -> Self {
        let client = settings.client();
        let prefix = match prefix.trim_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        Self { settings, client, bucket, prefix, counters: Counters::default() }
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Reads a GetObject body into one buffer sized from its Content-Length,
    /// so that a 16 MiB pack takes 16 MiB, not its pieces plus a copy.
    async fn read_body(&self, out: GetObjectOutput, key: &str) -> Result<Bytes, BackendError> {
        let failed = |detail: String| S3Error::Other {
            operation: "GetObject",
            endpoint: self.settings.endpoint_display(),
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            detail,
        };
        let expected = out.content_length.unwrap_or(0).max(0) as usize;
        let mut body = out.body;
        let mut buf = BytesMut::with_capacity(expected);
        while let Some(piece) = body.try_next().await.map_err(|e| failed(format!("reading the body failed: {e}")))? {
            buf.extend_from_slice(&piece);
        }
        Ok(buf.freeze())
    }

    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }
}

#[async_trait]
impl Backend for S3Backend {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix.trim_end_matches('/'))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<(), BackendError> {
        let full = self.full_key(key);
        let len = data.len() as u64;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full)
            .content_length(len as i64)
            .body(data.into())
            .customize()
            // The payload is not hashed for the signature: readers check
            // every blob against its SHA-256, and writers check the stored
            // length (design: write ordering).
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| self.settings.classify("PutObject", &self.bucket, &full, e))?;
        self.counters.put(len);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, BackendError> {
        let full = self.full_key(key);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.settings.classify("GetObject", &self.bucket, &full, e))?;
        let data = self.read_body(out, &full).await?;
        self.counters.get(data.len() as u64);
        Ok(data)
    }

    async fn get_range(&self, key: &str, offset: u64, length: u64) -> Result<Bytes, BackendError> {
        if length == 0 {
            return Ok(Bytes::new());
        }
        let full = self.full_key(key);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .range(format!("bytes={}-{}", offset, offset + length - 1))
            .send()
            .await
            .map_err(|e| self.settings.classify("GetObject", &self.bucket, &full, e))?;
        let data = self.read_body(out, &full).await?;
        self.counters.get(data.len() as u64);
        Ok(data)
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, BackendError> {
        let full = self.full_key(key);
        match self.client.head_object().bucket(&self.bucket).key(&full).send().await {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.to_owned(),
                size: out.content_length.unwrap_or(0).max(0) as u64,
                last_modified: out
                    .last_modified
                    .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
                    .unwrap_or_else(Utc::now),
            })),
            Err(e) => {
                let err = self.settings.classify("HeadObject", &self.bucket, &full, e);
                if err.is_not_found() {
                    Ok(None)
                } else {
                    Err(err.into())
                }
            }
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, BackendError> {
        let full_prefix = self.full_key(prefix);
        let listed = list_objects(&self.settings, &self.client, &self.bucket, &full_prefix).await?;
        Ok(listed
            .into_iter()
            .map(|o| ObjectMeta {
                key: o.key[self.prefix.len()..].to_owned(),
                size: o.size,
                last_modified: o.last_modified,
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let full = self.full_key(key);
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.settings.classify("DeleteObject", &self.bucket, &full, e))?;
        Ok(())
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }
}

/// One object from a ListObjectsV2 walk, with its full key.
#[derive(Debug, Clone)]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: DateTime<Utc>,
}

/// Lists every object under `prefix`, following continuation tokens. A page
/// marked truncated but carries no continuation token is an error,
/// never a silently short listing.
pub async fn list_objects(
    settings: &S3Settings,
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<ListedObject>, S3Error> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = client.list_objects_v2().bucket(bucket);
        if !prefix.is_empty() {
            req = req.prefix(prefix);
        }
        if let Some(t) = &token {
            req = req.continuation_token(t);
        }
        let page = req
            .send()
            .await
            .map_err(|e| settings.classify("ListObjectsV2", bucket, "", e))?;
        for obj in page.contents() {
            let Some(key) = obj.key() else { continue };
            out.push(ListedObject {
                key: key.to_owned(),
                size: obj.size().unwrap_or(0).max(0) as u64,
                etag: obj.e_tag().unwrap_or("").to_owned(),
                last_modified: obj
                    .last_modified()
                    .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
                    .unwrap_or_default(),
            });
        }
        if page.is_truncated() == Some(true) {
            match page.next_continuation_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => {
                    return Err(S3Error::Other {
                        operation: "ListObjectsV2",
                        endpoint: settings.endpoint_display(),
                        bucket: bucket.to_owned(),
                        key: prefix.to_owned(),
                        detail: format!(
                            "the server marked page {} of the listing as truncated but sent no continuation token; the listing would be incomplete, so the run stops",
                            out.len()
                        ),
                    })
                }
            }
        } else {
            break;
        }
    }
    Ok(out)
}

/// A shareable backend.
pub type DynBackend = Arc<dyn Backend>;
