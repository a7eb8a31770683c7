//! Reads a barman-cloud archive from object storage and builds its [`Catalogue`].
//!
//! barman-cloud keeps one server under `<destination_path>/<server_name>/`. This module lists
//! `base/` and reads every `backup.info`, lists `wals/` with sizes and LastModified times, and
//! downloads the timeline history files, then hands all of it to
//! [`Catalogue::build_with_history`]. It only reads: nothing in the archive is written or
//! deleted.

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt, TryStreamExt};
use tracing::{debug, info_span, Instrument};

use super::catalogue::{BackupId, BackupInfo, Catalogue, TimelineHistory, WalObject};
use super::config::ObjectStore;
use crate::repository::backend::list_objects;
use crate::s3::{S3Error, S3Overrides, S3Settings};

/// backup.info and history files downloaded at the same time.
const DOWNLOAD_CONCURRENCY: usize = 8;

/// Errors from reading a barman-cloud archive.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid destination path {path:?}: {reason}; use s3://bucket/prefix")]
    InvalidDestination { path: String, reason: &'static str },
    #[error(
        "bucket {bucket:?} of destination path {destination_path} not found on {endpoint}: \
         barman-cloud does not create buckets, so create it before archiving WAL or taking a backup"
    )]
    BucketNotFound {
        bucket: String,
        destination_path: String,
        endpoint: String,
    },
    #[error("{key} in bucket {bucket:?} is not UTF-8 text")]
    NotText { bucket: String, key: String },
    #[error(transparent)]
    S3(#[from] S3Error),
}

/// Bucket, key prefix and server name of one barman-cloud archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveLocation {
    /// The `s3://bucket/prefix` URL as configured, which barman-cloud commands take.
    pub destination_path: String,
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; empty for the bucket root.
    pub prefix: String,
    pub server_name: String,
}

impl ArchiveLocation {
    /// Parses `destination_path` (`s3://bucket[/prefix]`) and keeps `server_name`.
    pub fn new(destination_path: &str, server_name: &str) -> Result<ArchiveLocation, StoreError> {
        let invalid = |reason| StoreError::InvalidDestination {
            path: destination_path.to_string(),
            reason,
        };
        let rest = destination_path
            .strip_prefix("s3://")
            .ok_or_else(|| invalid("only s3:// destination paths are supported"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("the bucket name is missing"));
        }
        if server_name.is_empty() || server_name.contains('/') {
            return Err(invalid("the server name must be non-empty and contain no '/'"));
        }
        Ok(ArchiveLocation {
            destination_path: destination_path.trim_end_matches('/').to_string(),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            server_name: server_name.to_string(),
        })
    }

    /// Key prefix of the server's folder, ending in `/`: `<prefix>/<server_name>/`.
    pub fn server_prefix(&self) -> String {
        if self.prefix.is_empty() {
            format!("{}/", self.server_name)
        } else {
            format!("{}/{}/", self.prefix, self.server_name)
        }
    }
}

/// S3 settings of a database's object store: the policy's endpoint, region and key files,
/// each falling back to the AWS environment.
pub fn store_overrides(store: &ObjectStore) -> S3Overrides {
    S3Overrides {
        endpoint: store.endpoint.clone(),
        region: store.region.clone(),
        access_key_id_file: store.access_key_id_file.clone(),
        secret_access_key_file: store.secret_access_key_file.clone(),
        path_style: None,
    }
}

/// One object of the server's folder, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveObject {
    /// Full key in the bucket.
    pub key: String,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
}

/// Read access to one barman-cloud archive.
pub struct ArchiveStore {
    settings: S3Settings,
    client: aws_sdk_s3::Client,
    location: ArchiveLocation,
}

impl ArchiveStore {
    /// Resolves the S3 settings of `store` and prepares a client; nothing is sent yet.
    pub fn open(store: &ObjectStore) -> Result<ArchiveStore, StoreError> {
        let location = ArchiveLocation::new(&store.destination_path, &store.server_name)?;
        let settings = S3Settings::resolve("the PostgreSQL object store", &store_overrides(store))?;
        let client = settings.client();
        Ok(ArchiveStore { settings, client, location })
    }

    pub fn location(&self) -> &ArchiveLocation {
        &self.location
    }

    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }

    /// Checks that the archive's bucket exists and the credentials may read it.
    pub async fn check_bucket(&self) -> Result<(), StoreError> {
        let bucket = &self.location.bucket;
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(()),
            Err(error) => match self.settings.classify("HeadBucket", bucket, "", error) {
                // HeadBucket has no body, so a missing bucket comes back as a bare 404
                // that the classifier may report as a missing key.
                S3Error::NoSuchBucket { .. } | S3Error::NoSuchKey { .. } => Err(StoreError::BucketNotFound {
                    bucket: bucket.clone(),
                    destination_path: self.location.destination_path.clone(),
                    endpoint: self.settings.endpoint_display(),
                }),
                other => Err(other.into()),
            },
        }
    }

    /// Lists every object under the server's folder, or under one of its subfolders
    /// (`"base/"`, `"wals/"`), in key order.
    pub async fn list(&self, subfolder: &str) -> Result<Vec<ArchiveObject>, StoreError> {
        let prefix = format!("{}{subfolder}", self.location.server_prefix());
        let listed = list_objects(&self.settings, &self.client, &self.location.bucket, &prefix).await?;
        Ok(listed
            .into_iter()
            .map(|object| ArchiveObject {
                key: object.key,
                size: object.size,
                last_modified: object.last_modified,
            })
            .collect())
    }

    async fn read_text(&self, key: &str) -> Result<String, StoreError> {
        let bucket = &self.location.bucket;
        let output = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|error| self.settings.classify("GetObject", bucket, key, error))?;
        let body = output.body.collect().await.map_err(|error| S3Error::Other {
            operation: "GetObject",
            endpoint: self.settings.endpoint_display(),
            bucket: bucket.clone(),
            key: key.to_string(),
            detail: format!("reading the body failed: {error}"),
        })?;
        String::from_utf8(body.into_bytes().to_vec()).map_err(|_| StoreError::NotText {
            bucket: bucket.clone(),
            key: key.to_string(),
        })
    }

    /// Reads the archive and builds its catalogue.
    ///
    /// A backup.info that cannot be parsed, or a history file that cannot be parsed, becomes a
    /// warning of the catalogue instead of an error, so one damaged file does not hide the
    /// rest of the archive.
    pub async fn read_catalogue(&self) -> Result<Catalogue, StoreError> {
        let span = info_span!(
            "pg.read_catalogue",
            pg.server = %self.location.server_name,
            pg.destination = %self.location.destination_path,
        );
        async {
            self.check_bucket().await?;
            let server_prefix = self.location.server_prefix();
            let mut warnings = Vec::new();

            let base = self.list("base/").await?;
            let info_keys: Vec<(BackupId, String)> = base
                .iter()
                .filter_map(|object| {
                    let relative = object.key.strip_prefix(&server_prefix)?;
                    let id = relative.strip_prefix("base/")?.strip_suffix("/backup.info")?;
                    if id.contains('/') {
                        return None;
                    }
                    BackupId::new(id).ok().map(|id| (id, object.key.clone()))
                })
                .collect();
            let infos: Vec<(BackupId, String, String)> = stream::iter(info_keys)
                .map(|(id, key)| async move {
                    let text = self.read_text(&key).await?;
                    Ok::<_, StoreError>((id, key, text))
                })
                .buffer_unordered(DOWNLOAD_CONCURRENCY)
                .try_collect()
                .await?;
            let mut backups = Vec::new();
            for (id, key, text) in infos {
                match BackupInfo::parse(&id, &text) {
                    Ok(info) => backups.push((id, info)),
                    Err(error) => warnings.push(format!("{key} is ignored: {error}")),
                }
            }

            let wals = self.list("wals/").await?;
            let history_keys: Vec<(u32, String)> = wals
                .iter()
                .filter_map(|object| {
                    let relative = object.key.strip_prefix(&server_prefix)?;
                    let name = relative.strip_prefix("wals/")?.strip_suffix(".history")?;
                    if name.len() != 8 {
                        return None;
                    }
                    u32::from_str_radix(name, 16).ok().map(|timeline| (timeline, object.key.clone()))
                })
                .collect();
            let history_texts: Vec<(u32, String, String)> = stream::iter(history_keys)
                .map(|(timeline, key)| async move {
                    let text = self.read_text(&key).await?;
                    Ok::<_, StoreError>((timeline, key, text))
                })
                .buffer_unordered(DOWNLOAD_CONCURRENCY)
                .try_collect()
                .await?;
            let mut histories = Vec::new();
            for (timeline, key, text) in history_texts {
                match TimelineHistory::parse(timeline, &text) {
                    Ok(history) => histories.push(history),
                    Err(error) => warnings.push(format!("{key} is ignored: {error}")),
                }
            }

            let wal_objects: Vec<WalObject> = wals
                .into_iter()
                .map(|object| WalObject {
                    key: object.key,
                    size: object.size,
                    last_modified: object.last_modified,
                })
                .collect();
            debug!(
                pg.backups = backups.len(),
                pg.wal_objects = wal_objects.len(),
                pg.histories = histories.len(),
                "archive listed"
            );
            let mut catalogue = Catalogue::build_with_history(
                &self.location.server_name,
                backups,
                wal_objects,
                histories,
            );
            catalogue.warnings.extend(warnings);
            Ok(catalogue)
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_splits_bucket_and_prefix() {
        let location = ArchiveLocation::new("s3://backups/pg/prod/", "main").unwrap();
        assert_eq!(location.bucket, "backups");
        assert_eq!(location.prefix, "pg/prod");
        assert_eq!(location.destination_path, "s3://backups/pg/prod");
        assert_eq!(location.server_prefix(), "pg/prod/main/");
    }

    #[test]
    fn location_at_bucket_root() {
        let location = ArchiveLocation::new("s3://backups", "main").unwrap();
        assert_eq!(location.prefix, "");
        assert_eq!(location.server_prefix(), "main/");
    }

    #[test]
    fn location_rejects_other_schemes() {
        assert!(ArchiveLocation::new("gs://backups/pg", "main").is_err());
        assert!(ArchiveLocation::new("s3:///pg", "main").is_err());
        assert!(ArchiveLocation::new("s3://backups/pg", "a/b").is_err());
    }
}
