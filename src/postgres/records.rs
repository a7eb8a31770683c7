//! Catalogue records of PostgreSQL backup runs in a visage-dr repository.
//!
//! Each run writes one uncompressed JSON object at `catalogue/postgres/<database>/<record id>`
//! (see `docs/design.md`). The record id has the snapshot id form
//! `YYYYMMDDTHHMMSSZ-xxxxxxxx`, so keys sort by start time. Records are never rewritten.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::repository::backend::BackendError;
use crate::repository::{RepoError, Repository};

/// Format version of [`BackupRecord`].
pub const RECORD_VERSION: u32 = 1;

/// Outcome of one backup run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Complete,
    Failed,
}

/// Record of one backup run of one database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub version: u32,
    /// Record id, also the last component of its key.
    pub id: String,
    /// The database's `name` in the policy.
    pub database: String,
    /// `local` or `cnpg`.
    pub driver: String,
    pub destination_path: String,
    pub server_name: String,
    /// barman's backup id (the folder under `base/`), when the backup got that far.
    pub backup_id: Option<String>,
    /// The name passed to barman-cloud-backup with `--name`.
    pub backup_name: Option<String>,
    /// When the run started and finished, by visage-dr's clock.
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// The base backup's begin and end time and WAL, from its backup.info.
    pub begin_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    pub begin_wal: Option<String>,
    pub end_wal: Option<String>,
    pub status: RunStatus,
    pub error: Option<String>,
}

/// Key of a record: `catalogue/postgres/<database>/<record id>`.
pub fn record_key(database: &str, record_id: &str) -> String {
    format!("{}{record_id}", records_prefix(database))
}

fn records_prefix(database: &str) -> String {
    format!("catalogue/postgres/{database}/")
}

/// Stores `record` in the repository.
pub async fn write_record(repo: &Repository, record: &BackupRecord) -> Result<String, RepoError> {
    let key = record_key(&record.database, &record.id);
    let json = serde_json::to_vec_pretty(record).expect("record serialises");
    repo.backend().put(&key, Bytes::from(json)).await?;
    Ok(key)
}

/// Reads every backup record of `database`, oldest first.
pub async fn list_postgres_records(repo: &Repository, database: &str) -> Result<Vec<BackupRecord>, RepoError> {
    let prefix = records_prefix(database);
    let mut records = Vec::new();
    for object in repo.backend().list(&prefix).await? {
        // A deeper key belongs to another database whose name starts with `<database>/`.
        if object.key[prefix.len()..].contains('/') {
            continue;
        }
        let data = match repo.backend().get(&object.key).await {
            Ok(data) => data,
            Err(BackendError::NotFound { .. }) => continue,
            Err(error) => return Err(error.into()),
        };
        let record: BackupRecord = serde_json::from_slice(&data).map_err(|error| RepoError::Corrupt {
            what: "PostgreSQL catalogue record",
            key: object.key.clone(),
            reason: error.to_string(),
        })?;
        records.push(record);
    }
    records.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(records)
}
