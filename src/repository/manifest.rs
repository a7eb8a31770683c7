//! Snapshot manifests: what a backup run read and where its content is stored.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::id::{BlobId, Digest, SnapshotId};

/// Manifest format version written by this code.
pub const MANIFEST_VERSION: u32 = 1;

/// Kind of source a snapshot records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    /// The objects of an S3 bucket (or a prefix of it).
    Bucket,
    /// One training checkpoint pushed by a worker.
    Checkpoint,
}

/// Whether a run finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotStatus {
    /// Every object was read and stored.
    Complete,
    /// The run stopped with an error; the manifest has no entries.
    Failed,
}

impl std::fmt::Display for SnapshotStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SnapshotStatus::Complete => "complete",
            SnapshotStatus::Failed => "failed",
        })
    }
}

/// A snapshot manifest, stored as zstd-compressed JSON under `snapshots/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub id: SnapshotId,
    pub kind: SnapshotKind,
    /// Stable source identity, such as `s3:visage-uploads`.
    pub source: String,
    /// Source-specific details (bucket and prefix, job and step).
    #[serde(default)]
    pub source_detail: BTreeMap<String, String>,
    pub started: DateTime<Utc>,
    /// Completion time: every object was read before it.
    pub time: DateTime<Utc>,
    pub status: SnapshotStatus,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub parent: Option<SnapshotId>,
    pub objects: u64,
    pub bytes: u64,
    /// Labels such as `final` for checkpoints.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub entries: Vec<Entry>,
}

impl Manifest {
    pub fn is_complete(&self) -> bool {
        self.status == SnapshotStatus::Complete
    }

    /// Returns the entries whose key starts with `prefix`.
    pub fn entries_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| e.key.starts_with(prefix))
    }

    /// Summary without the entries, for listings.
    pub fn summary(&self) -> SnapshotSummary {
        SnapshotSummary {
            id: self.id.clone(),
            kind: self.kind,
            source: self.source.clone(),
            started: self.started,
            time: self.time,
            objects: self.objects,
            bytes: self.bytes,
            status: self.status,
            parent: self.parent.clone(),
            error: self.error.clone(),
            labels: self.labels.clone(),
        }
    }
}

/// One stored object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The object key, exactly as the source returned it.
    pub key: String,
    pub size: u64,
    /// The source's ETag: a change detector, never compared with a content hash.
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub last_modified: Option<DateTime<Utc>>,
    /// SHA-256 of the whole object.
    pub sha256: Digest,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub content_encoding: Option<String>,
    #[serde(default)]
    pub content_disposition: Option<String>,
    #[serde(default)]
    pub cache_control: Option<String>,
    #[serde(default)]
    pub content_language: Option<String>,
    #[serde(default)]
    pub expires: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Blob ids whose concatenation is the object.
    pub chunks: Vec<BlobId>,
}

/// A snapshot without its entries: the stable `--json` listing form.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotSummary {
    pub id: SnapshotId,
    pub kind: SnapshotKind,
    pub source: String,
    #[serde(serialize_with = "rfc3339_utc")]
    pub started: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_utc")]
    pub time: DateTime<Utc>,
    pub objects: u64,
    pub bytes: u64,
    pub status: SnapshotStatus,
    pub parent: Option<SnapshotId>,
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Serialises a time as RFC 3339 in UTC with a `Z` and millisecond precision.
pub fn rfc3339_utc<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<BlobId>().map(|b| b.0).map_err(serde::de::Error::custom)
    }
}

/// Changes between two snapshots.
#[derive(Debug, Default, Serialize)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Keys whose content or headers differ.
    pub changed: Vec<String>,
}

/// Compares the entries of `a` (older) and `b` (newer) by key.
pub fn diff(a: &Manifest, b: &Manifest) -> Diff {
    let old: BTreeMap<&str, &Entry> = a.entries.iter().map(|e| (e.key.as_str(), e)).collect();
    let new: BTreeMap<&str, &Entry> = b.entries.iter().map(|e| (e.key.as_str(), e)).collect();
    let mut d = Diff::default();
    for (k, e) in &new {
        match old.get(k) {
            None => d.added.push((*k).to_owned()),
            Some(o) if !same_content(o, e) => d.changed.push((*k).to_owned()),
            Some(_) => {}
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            d.removed.push((*k).to_owned());
        }
    }
    d
}

fn same_content(a: &Entry, b: &Entry) -> bool {
    a.sha256 == b.sha256
        && a.size == b.size
        && a.content_type == b.content_type
        && a.content_encoding == b.content_encoding
        && a.content_disposition == b.content_disposition
        && a.cache_control == b.cache_control
        && a.content_language == b.content_language
        && a.expires == b.expires
        && a.metadata == b.metadata
        && a.tags == b.tags
}
