//! The policy file as written: serde types that keep the line and column of the values that
//! later checks refer to. [`super::validate`] turns a [`Document`] into a [`super::Policy`].

use std::path::PathBuf;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{DataBoundary, QueryCheck, ReferenceCheck, S3Options};
use crate::postgres::config::DatabaseSpec;
use crate::retention::RetentionRules;
use crate::units::{ByteSize, Duration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Document {
    pub repository: Spanned<RepositoryDocument>,
    #[serde(default)]
    pub timezone: Option<Spanned<String>>,
    #[serde(default)]
    pub postgres: Vec<Spanned<DatabaseSpec>>,
    #[serde(default)]
    pub buckets: Vec<Spanned<BucketDocument>>,
    #[serde(default)]
    pub source_s3: Option<Spanned<S3Options>>,
    #[serde(default)]
    pub checkpoints: Option<Spanned<CheckpointsDocument>>,
    #[serde(default)]
    pub prune: Option<Spanned<PruneDocument>>,
    #[serde(default)]
    pub verification: Option<Spanned<VerificationDocument>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RepositoryDocument {
    pub url: Spanned<String>,
    #[serde(default)]
    pub s3: Option<Spanned<S3Options>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BucketDocument {
    pub name: Spanned<String>,
    pub bucket: Spanned<String>,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub schedule: Option<Spanned<String>>,
    pub retention: Spanned<RetentionRules>,
    #[serde(default)]
    pub s3: Option<Spanned<S3Options>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointsDocument {
    pub retention: Spanned<RetentionRules>,
    #[serde(default)]
    pub max_size: Option<Spanned<ByteSize>>,
    #[serde(default)]
    pub schedule: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PruneDocument {
    pub schedule: Spanned<String>,
    #[serde(default)]
    pub max_snapshot_age: Option<Spanned<Duration>>,
    #[serde(default)]
    pub gc_grace: Option<Spanned<Duration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerificationDocument {
    pub schedule: Spanned<String>,
    #[serde(default)]
    pub scratch_namespace: Option<Spanned<String>>,
    #[serde(default)]
    pub scratch_dir: Option<Spanned<PathBuf>>,
    pub timeout: Spanned<Duration>,
    #[serde(default)]
    pub sample_objects: Option<Spanned<u32>>,
    #[serde(default)]
    pub data_boundary: Option<Spanned<DataBoundary>>,
    #[serde(default)]
    pub references: Vec<Spanned<ReferenceCheck>>,
    #[serde(default)]
    pub schema: Option<Spanned<SchemaDocument>>,
    #[serde(default)]
    pub checks: Vec<Spanned<QueryCheck>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SchemaDocument {
    #[serde(default)]
    pub database: Option<Spanned<String>>,
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default)]
    pub extensions: Vec<String>,
}

/// The positions of the fields of each `postgres:` entry.
///
/// [`DatabaseSpec`] is shared with the PostgreSQL driver and has no positions, so the checker
/// reads the same text a second time into this shape, which ignores every other field.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct DatabasePositions {
    #[serde(default)]
    pub postgres: Vec<DatabaseFieldPositions>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DatabaseFieldPositions {
    pub name: Option<Spanned<IgnoredAny>>,
    pub driver: Option<Spanned<IgnoredAny>>,
    pub schedule: Option<Spanned<IgnoredAny>>,
    pub retention: Option<Spanned<IgnoredAny>>,
    pub cluster: Option<Spanned<IgnoredAny>>,
    pub namespace: Option<Spanned<IgnoredAny>>,
    pub connection: Option<Spanned<IgnoredAny>>,
    pub method: Option<Spanned<IgnoredAny>>,
    pub object_store: Option<ObjectStorePositions>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ObjectStorePositions {
    pub destination_path: Option<Spanned<IgnoredAny>>,
    pub endpoint: Option<Spanned<IgnoredAny>>,
}
