//! Recovery catalogue of a barman-cloud archive and base-backup selection for point-in-time
//! recovery.
//!
//! barman-cloud stores one PostgreSQL server under `<destinationPath>/<serverName>/`:
//!
//! ```text
//! base/<backupId>/backup.info           key=value metadata of one base backup
//! base/<backupId>/data.tar[.gz|...]     the base backup itself
//! wals/<timeline><log id>/<segment>[.gz|.bz2|.xz|.snappy|.zst|.lz4]   archived WAL
//! wals/<timeline>.history               timeline history files
//! ```
//!
//! This module is pure logic over a listing of those objects and the parsed backup.info
//! files. Reading the object store is done by the caller.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use thiserror::Error;

use super::wal::{Lsn, SegmentSize, WalError, WalFile, WalObjectName, WalSegment};

/// Source of the estimated times of archived WAL, see [`ArchivedWal::estimated_time`].
pub const LAST_WAL_TIME_SOURCE: &str = "object last-modified";

/// Identifier of a base backup: the name of its folder under `base/`, such as
/// `20261204T200152`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BackupId(String);

impl BackupId {
    /// Validates a folder name: it must be non-empty and contain no `/`.
    pub fn new(id: impl Into<String>) -> Result<BackupId, BackupInfoError> {
        let id = id.into();
        if id.is_empty() || id.contains('/') {
            return Err(BackupInfoError::InvalidBackupId { id });
        }
        Ok(BackupId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Status of a barman backup, from the `status` key of backup.info.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackupStatus {
    Empty,
    Started,
    Failed,
    Done,
    Syncing,
    WaitingForWals,
    /// A status this module does not know, kept as written.
    Other(String),
}

impl BackupStatus {
    /// Parses the status as barman writes it, such as `DONE`.
    pub fn parse(text: &str) -> BackupStatus {
        match text {
            "EMPTY" => BackupStatus::Empty,
            "STARTED" => BackupStatus::Started,
            "FAILED" => BackupStatus::Failed,
            "DONE" => BackupStatus::Done,
            "SYNCING" => BackupStatus::Syncing,
            "WAITING_FOR_WALS" => BackupStatus::WaitingForWals,
            other => BackupStatus::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            BackupStatus::Empty => "EMPTY",
            BackupStatus::Started => "STARTED",
            BackupStatus::Failed => "FAILED",
            BackupStatus::Done => "DONE",
            BackupStatus::Syncing => "SYNCING",
            BackupStatus::WaitingForWals => "WAITING_FOR_WALS",
            BackupStatus::Other(other) => other,
        }
    }
}

impl fmt::Display for BackupStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for BackupStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Errors from reading backup.info files and timeline history files.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BackupInfoError {
    #[error("invalid backup id {id:?}: a backup id is the non-empty name of a folder under base/")]
    InvalidBackupId { id: String },

    #[error(
        "line {line_number} of backup.info of backup {backup_id} is not key=value: {line:?}; \
         check that the object was uploaded completely"
    )]
    InvalidLine {
        backup_id: BackupId,
        line_number: usize,
        line: String,
    },

    #[error("backup.info of backup {backup_id} has an invalid {key} {value:?}: {reason}")]
    InvalidValue {
        backup_id: BackupId,
        key: &'static str,
        value: String,
        reason: String,
    },

    #[error(
        "backup.info of backup {backup_id} has status {status} but no {key}, which recovery \
         needs; the file is incomplete, so use another backup or take a new one"
    )]
    MissingKey {
        backup_id: BackupId,
        status: BackupStatus,
        key: &'static str,
    },

    #[error("timeline history file {file} has an invalid line {line_number} {line:?}: {reason}")]
    InvalidHistory {
        file: String,
        line_number: usize,
        line: String,
        reason: String,
    },

    #[error("timeline history file {file} lists no parent timeline; a history file has at least one line")]
    EmptyHistory { file: String },
}

/// Metadata of one base backup, parsed from its backup.info.
///
/// Fields are `None` when backup.info lacks the key or has the value `None`. For a `DONE`
/// backup, [`BackupInfo::parse`] rejects a file that lacks a key recovery needs (see
/// [`BaseBackup::from_info`]). Other statuses are parsed leniently because barman writes a
/// partial file for failed backups.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupInfo {
    pub status: BackupStatus,
    /// The `--name` given to barman-cloud-backup, if any.
    pub backup_name: Option<String>,
    /// Error recorded by barman for a failed backup.
    pub error: Option<String>,
    pub begin_time: Option<DateTime<Utc>>,
    pub end_time: Option<DateTime<Utc>>,
    /// Segment containing `begin_lsn`: the first WAL that recovery from this backup replays.
    pub begin_wal: Option<WalSegment>,
    /// Segment containing `end_lsn`: recovery is consistent once this segment is replayed.
    pub end_wal: Option<WalSegment>,
    /// `begin_xlog` in backup.info.
    pub begin_lsn: Option<Lsn>,
    /// `end_xlog` in backup.info.
    pub end_lsn: Option<Lsn>,
    /// Timeline the backup started on.
    pub timeline: Option<u32>,
    /// PostgreSQL system identifier (`pg_control_system().system_identifier`). JSON output
    /// writes it as a string because it usually exceeds 2^53.
    #[serde(serialize_with = "serialize_optional_u64_as_string")]
    pub systemid: Option<u64>,
    /// PostgreSQL server version number, such as 150018 for 15.18.
    pub version: Option<u32>,
    /// `xlog_segment_size` in backup.info.
    pub segment_size: Option<SegmentSize>,
}

/// Keys of backup.info that this module reads. All other keys are ignored.
const KNOWN_KEYS: [&str; 13] = [
    "status",
    "backup_name",
    "error",
    "begin_time",
    "end_time",
    "begin_wal",
    "end_wal",
    "begin_xlog",
    "end_xlog",
    "timeline",
    "systemid",
    "version",
    "xlog_segment_size",
];

impl BackupInfo {
    /// Parses a backup.info file written by barman (checked against barman 3.19 output).
    ///
    /// Lines are `key=value`. Blank lines and lines starting with `#` are skipped, as barman's
    /// own reader does. barman writes most values with Python's `str()` and a few with
    /// `repr()`, so `None` means absent and a value in Python string quotes is unquoted with
    /// its escapes decoded.
    ///
    /// Returns an error for a malformed line, an invalid value of a key listed above, and a
    /// `DONE` backup without a key that recovery needs.
    pub fn parse(backup_id: &BackupId, text: &str) -> Result<BackupInfo, BackupInfoError> {
        let mut values: HashMap<&'static str, (String, Option<String>)> = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((key, value)) = trimmed.split_once('=') else {
                return Err(BackupInfoError::InvalidLine {
                    backup_id: backup_id.clone(),
                    line_number: index + 1,
                    line: line.to_string(),
                });
            };
            let key = key.trim();
            let value = value.trim();
            if let Some(known) = KNOWN_KEYS.iter().find(|known| **known == key) {
                values.insert(known, (value.to_string(), decode_python_value(value)));
            }
        }

        let fields = Fields { backup_id, values };
        let info = BackupInfo {
            status: fields
                .text("status")
                .map(|status| BackupStatus::parse(&status))
                // barman's default for a backup.info without a status.
                .unwrap_or(BackupStatus::Empty),
            backup_name: fields.text("backup_name"),
            error: fields.text("error"),
            begin_time: fields.typed("begin_time", parse_barman_time)?,
            end_time: fields.typed("end_time", parse_barman_time)?,
            begin_wal: fields.typed("begin_wal", |value| {
                WalSegment::parse(value).map_err(to_reason)
            })?,
            end_wal: fields.typed("end_wal", |value| {
                WalSegment::parse(value).map_err(to_reason)
            })?,
            begin_lsn: fields.typed("begin_xlog", |value| Lsn::parse(value).map_err(to_reason))?,
            end_lsn: fields.typed("end_xlog", |value| Lsn::parse(value).map_err(to_reason))?,
            timeline: fields.typed("timeline", parse_timeline)?,
            systemid: fields.typed("systemid", |value| {
                value
                    .parse::<u64>()
                    .map_err(|_| "expected an unsigned 64-bit integer".to_string())
            })?,
            version: fields.typed("version", |value| {
                value
                    .parse::<u32>()
                    .map_err(|_| "expected a version number such as 150018".to_string())
            })?,
            segment_size: fields.typed("xlog_segment_size", |value| {
                let bytes = value
                    .parse::<u64>()
                    .map_err(|_| "expected a size in bytes".to_string())?;
                SegmentSize::new(bytes).map_err(to_reason)
            })?,
        };

        if info.status == BackupStatus::Done {
            BaseBackup::from_info(backup_id.clone(), &info)?;
        }
        Ok(info)
    }
}

/// Decoded backup.info values of one file, keyed by backup.info key.
struct Fields<'a> {
    backup_id: &'a BackupId,
    /// Raw text and decoded value (`None` for a Python `None`).
    values: HashMap<&'static str, (String, Option<String>)>,
}

impl Fields<'_> {
    fn text(&self, key: &str) -> Option<String> {
        self.values
            .get(key)
            .and_then(|(_, decoded)| decoded.clone())
    }

    fn typed<T>(
        &self,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, BackupInfoError> {
        let Some((raw, Some(decoded))) = self.values.get(key) else {
            return Ok(None);
        };
        parse(decoded)
            .map(Some)
            .map_err(|reason| BackupInfoError::InvalidValue {
                backup_id: self.backup_id.clone(),
                key,
                value: raw.clone(),
                reason,
            })
    }
}

fn serialize_optional_u64_as_string<S: Serializer>(
    value: &Option<u64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.collect_str(value),
        None => serializer.serialize_none(),
    }
}

fn to_reason(error: WalError) -> String {
    error.to_string()
}

fn parse_timeline(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(0) | Err(_) => Err("expected a timeline number of 1 or more".to_string()),
        Ok(timeline) => Ok(timeline),
    }
}

/// Parses a time as Python's `str(datetime)` writes it: `2026-12-04 20:01:52.881420+00:00`.
///
/// A time without a UTC offset is rejected: barman would read it in its own host's local
/// time zone, which is unknown here.
fn parse_barman_time(value: &str) -> Result<DateTime<Utc>, String> {
    ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f%:z"]
        .iter()
        .find_map(|format| DateTime::parse_from_str(value, format).ok())
        .map(|time| time.with_timezone(&Utc))
        .ok_or_else(|| {
            "expected a time with a UTC offset such as 2026-12-04 20:01:52.881420+00:00".to_string()
        })
}

/// Decodes a backup.info value: `None` becomes `None`, a complete Python string literal in
/// single or double quotes is unquoted, and any other text is returned as written.
///
/// Text that starts with a quote but is not a complete literal (an error message that
/// happens to start with a quote) is also returned as written.
fn decode_python_value(raw: &str) -> Option<String> {
    if raw == "None" {
        return None;
    }
    match raw.chars().next() {
        Some(quote @ ('\'' | '"')) => {
            Some(decode_python_string(&raw[1..], quote).unwrap_or_else(|| raw.to_string()))
        }
        _ => Some(raw.to_string()),
    }
}

/// Decodes the body of a Python string literal after its opening `quote`. Returns `None`
/// when the literal is not closed or text follows the closing quote.
fn decode_python_string(body: &str, quote: char) -> Option<String> {
    let mut decoded = String::new();
    let mut chars = body.chars();
    loop {
        match chars.next()? {
            c if c == quote => return chars.next().is_none().then_some(decoded),
            '\\' => {
                let escaped = chars.next()?;
                match escaped {
                    'n' => decoded.push('\n'),
                    't' => decoded.push('\t'),
                    'r' => decoded.push('\r'),
                    'a' => decoded.push('\u{07}'),
                    'b' => decoded.push('\u{08}'),
                    'f' => decoded.push('\u{0C}'),
                    'v' => decoded.push('\u{0B}'),
                    '\\' | '\'' | '"' => decoded.push(escaped),
                    'x' | 'u' | 'U' => {
                        let digits = match escaped {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = chars.by_ref().take(digits).collect();
                        if hex.len() != digits {
                            return None;
                        }
                        let code = u32::from_str_radix(&hex, 16).ok()?;
                        decoded.push(char::from_u32(code)?);
                    }
                    // Python keeps the backslash of an unknown escape.
                    other => {
                        decoded.push('\\');
                        decoded.push(other);
                    }
                }
            }
            other => decoded.push(other),
        }
    }
}

/// A completed (`DONE`) base backup with every value recovery needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaseBackup {
    pub id: BackupId,
    pub backup_name: Option<String>,
    pub begin_time: DateTime<Utc>,
    /// Time the backup finished. Recovery from this backup can only reach targets after it.
    pub end_time: DateTime<Utc>,
    pub begin_wal: WalSegment,
    pub end_wal: WalSegment,
    pub begin_lsn: Lsn,
    pub end_lsn: Lsn,
    pub timeline: u32,
    /// See [`BackupInfo::systemid`].
    #[serde(serialize_with = "serialize_optional_u64_as_string")]
    pub systemid: Option<u64>,
    pub version: Option<u32>,
    /// `xlog_segment_size`, or 16 MiB when absent as barman assumes.
    pub segment_size: SegmentSize,
}

impl BaseBackup {
    /// Builds a base backup from a `DONE` backup.info.
    ///
    /// Returns [`BackupInfoError::MissingKey`] naming the first absent key among `begin_time`,
    /// `end_time`, `begin_wal`, `end_wal`, `begin_xlog`, `end_xlog` and `timeline`, and
    /// [`BackupInfoError::InvalidValue`] when the WAL names do not fit the segment size or
    /// `end_wal` precedes `begin_wal`.
    pub fn from_info(id: BackupId, info: &BackupInfo) -> Result<BaseBackup, BackupInfoError> {
        let missing = |key: &'static str| BackupInfoError::MissingKey {
            backup_id: id.clone(),
            status: info.status.clone(),
            key,
        };
        let begin_time = info.begin_time.ok_or_else(|| missing("begin_time"))?;
        let end_time = info.end_time.ok_or_else(|| missing("end_time"))?;
        let begin_wal = info.begin_wal.ok_or_else(|| missing("begin_wal"))?;
        let end_wal = info.end_wal.ok_or_else(|| missing("end_wal"))?;
        let begin_lsn = info.begin_lsn.ok_or_else(|| missing("begin_xlog"))?;
        let end_lsn = info.end_lsn.ok_or_else(|| missing("end_xlog"))?;
        let timeline = info.timeline.ok_or_else(|| missing("timeline"))?;
        let segment_size = info.segment_size.unwrap_or_default();

        let invalid =
            |key: &'static str, value: String, reason: String| BackupInfoError::InvalidValue {
                backup_id: id.clone(),
                key,
                value,
                reason,
            };
        let out_of_range = |segment: WalSegment| {
            format!("segment {segment} does not exist with {segment_size} segments")
        };
        let begin_number = begin_wal
            .segment_number(segment_size)
            .ok_or_else(|| invalid("begin_wal", begin_wal.to_string(), out_of_range(begin_wal)))?;
        let end_number = end_wal
            .segment_number(segment_size)
            .ok_or_else(|| invalid("end_wal", end_wal.to_string(), out_of_range(end_wal)))?;
        if end_number < begin_number {
            return Err(invalid(
                "end_wal",
                end_wal.to_string(),
                format!("it precedes begin_wal {begin_wal}"),
            ));
        }

        Ok(BaseBackup {
            id,
            backup_name: info.backup_name.clone(),
            begin_time,
            end_time,
            begin_wal,
            end_wal,
            begin_lsn,
            end_lsn,
            timeline,
            systemid: info.systemid,
            version: info.version,
            segment_size,
        })
    }
}

/// One line of a timeline history file: the parent timeline ended at `switch_lsn`, where
/// the next timeline in the file (or the file's own timeline, after the last line) began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineSwitch {
    pub parent_timeline: u32,
    pub switch_lsn: Lsn,
    pub reason: String,
}

/// Content of `<timeline>.history`: the ancestors of `timeline`, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineHistory {
    pub timeline: u32,
    pub switches: Vec<TimelineSwitch>,
}

impl TimelineHistory {
    /// Parses the history file of `timeline`, such as
    /// `1\t0/50000B0\tbefore 2026-12-04 20:02:03.356005+00\n`.
    ///
    /// Each line contains a parent timeline, a switch LSN and an optional reason, separated by
    /// whitespace. Blank lines and lines starting with `#` are skipped, as PostgreSQL does.
    /// Parent timelines must increase and stay below `timeline`, and switch LSNs must not
    /// decrease.
    pub fn parse(timeline: u32, text: &str) -> Result<TimelineHistory, BackupInfoError> {
        let file = format!("{timeline:08X}.history");
        let mut switches: Vec<TimelineSwitch> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let invalid = |reason: &str| BackupInfoError::InvalidHistory {
                file: file.clone(),
                line_number: index + 1,
                line: line.to_string(),
                reason: reason.to_string(),
            };

            let mut fields = trimmed.splitn(3, char::is_whitespace);
            let parent_timeline = fields
                .next()
                .and_then(|field| field.parse::<u32>().ok())
                .filter(|parent| *parent >= 1)
                .ok_or_else(|| invalid("expected a parent timeline number first"))?;
            let switch_lsn = fields
                .next()
                .and_then(|field| Lsn::parse(field).ok())
                .ok_or_else(|| invalid("expected a switch LSN such as 0/50000B0 second"))?;
            let reason = fields.next().unwrap_or_default().trim().to_string();

            if parent_timeline >= timeline {
                return Err(invalid(
                    "a parent timeline must be lower than the file's timeline",
                ));
            }
            if let Some(previous) = switches.last() {
                if parent_timeline <= previous.parent_timeline {
                    return Err(invalid("parent timelines must increase from line to line"));
                }
                if switch_lsn < previous.switch_lsn {
                    return Err(invalid("switch LSNs must not decrease from line to line"));
                }
            }
            switches.push(TimelineSwitch {
                parent_timeline,
                switch_lsn,
                reason,
            });
        }
        if switches.is_empty() {
            return Err(BackupInfoError::EmptyHistory { file });
        }
        Ok(TimelineHistory { timeline, switches })
    }

    /// LSN where this timeline began: the switch point of its direct parent.
    pub fn begin_lsn(&self) -> Lsn {
        self.switches
            .last()
            .map(|switch| switch.switch_lsn)
            .unwrap_or(Lsn(0))
    }
}

/// One object of the `wals/` listing, as returned by the object store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalObject {
    pub key: String,
    /// Size in bytes, after compression.
    pub size: u64,
    pub last_modified: DateTime<Utc>,
}

/// An archived WAL segment with an estimate of the latest time its records can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ArchivedWal {
    pub segment: WalSegment,
    /// The LastModified time of the segment's object.
    ///
    /// This is an estimate, because the listing carries no commit times. The segment was
    /// uploaded after PostgreSQL closed it, so every record in it is older than this time,
    /// which makes it an upper bound as long as the database host's clock and the object
    /// store's clock agree. A target between the segment's last commit and its
    /// upload is still not reachable: PostgreSQL 13 and later stop with "recovery ended before
    /// configured recovery target was reached" when the WAL runs out before a commit after the
    /// target.
    pub estimated_time: DateTime<Utc>,
}

/// A timeline that recovery replays from `first_segment` onwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TimelineStep {
    pub timeline: u32,
    pub first_segment: WalSegment,
}

/// Reason that a contiguous run of archived WAL ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RunEnd {
    /// `missing` is not archived but a later segment on its timeline is: WAL after the gap
    /// cannot be replayed from this run.
    Gap {
        missing: WalSegment,
        next_archived: WalSegment,
    },
    /// The run ends with the newest WAL in the archive.
    EndOfArchive,
    /// The run ends on a timeline that a newer timeline superseded, and does not continue
    /// onto the newer one. Either its history file was not supplied, or the backup lies on a
    /// branch that the newer timeline did not continue.
    EndOfTimeline { later_timeline: u32 },
}

/// The archived WAL that recovery from one base backup can replay without interruption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalRun {
    /// Timelines that the run follows, starting with the backup's own.
    pub timeline_path: Vec<TimelineStep>,
    /// The backup's `begin_wal`.
    pub first: WalSegment,
    /// Last segment of the run, or `None` when `first` itself is not archived.
    pub last: Option<ArchivedWal>,
    /// First segment after the run, which the archive does not contain. It is `None` only when
    /// the run reaches the end of the WAL address space.
    pub next_needed: Option<WalSegment>,
    pub end: RunEnd,
}

/// A `DONE` base backup and the WAL that can be replayed from it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CataloguedBackup {
    #[serde(flatten)]
    pub backup: BaseBackup,
    /// Whether the archive contains every segment from `begin_wal` to `end_wal`, which recovery
    /// needs to reach a consistent state.
    pub usable: bool,
    pub wal: WalRun,
}

/// A backup that the catalogue does not use, with the reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkippedBackup {
    pub id: BackupId,
    pub status: BackupStatus,
    pub reason: String,
}

/// An object under `wals/` whose key is not a barman-cloud WAL key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IgnoredObject {
    pub key: String,
    pub reason: String,
}

/// Missing segments between two archived ones on the same timeline, or between the first
/// segment the catalogue expects on a timeline and the first archived one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WalGap {
    pub timeline: u32,
    pub first_missing: WalSegment,
    pub last_missing: WalSegment,
    pub missing_count: u64,
    /// Archived segment just before the gap, or `None` for a gap at the start of the timeline.
    pub previous_archived: Option<WalSegment>,
    pub next_archived: WalSegment,
}

/// Instants that recovery can reach without crossing a WAL gap: every time strictly after
/// `after` and up to `until`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecoverableRange {
    /// End time of the oldest backup that starts this range.
    pub after: DateTime<Utc>,
    /// Estimated time of `last_segment`; see [`ArchivedWal::estimated_time`].
    pub until: DateTime<Utc>,
    /// Usable backups whose WAL run ends at `last_segment`, oldest first.
    pub backups: Vec<BackupId>,
    pub last_segment: WalSegment,
    pub end: RunEnd,
}

/// From the end of the oldest usable backup to the estimated time of the last archived WAL.
///
/// WAL gaps can make parts of the window unreachable; `recoverable_ranges` lists the parts
/// that are reachable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecoverableWindow {
    pub after: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

/// Archived WAL of one timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineSummary {
    pub timeline: u32,
    pub first_segment: Option<WalSegment>,
    pub last_segment: Option<WalSegment>,
    pub segment_count: usize,
    /// `.partial` segments. Recovery does not use them.
    pub partial_segments: Vec<WalSegment>,
    pub backup_history_files: usize,
    /// Whether `wals/<timeline>.history` is in the listing.
    pub history_file_archived: bool,
    /// Content of the history file, when the caller supplied it.
    pub history: Option<TimelineHistory>,
}

/// Recoverable state of one server's barman-cloud archive, built from the object listing.
#[derive(Debug, Clone, Serialize)]
pub struct Catalogue {
    pub server: String,
    /// Segment size of the oldest `DONE` backup, or 16 MiB when there is none.
    pub segment_size: SegmentSize,
    /// `DONE` backups with a complete backup.info, sorted by end time.
    pub backups: Vec<CataloguedBackup>,
    pub skipped_backups: Vec<SkippedBackup>,
    pub timelines: Vec<TimelineSummary>,
    /// Gaps from the oldest `DONE` backup's `begin_wal` onwards, per timeline.
    pub gaps: Vec<WalGap>,
    /// Reachable ranges, sorted by start.
    pub recoverable_ranges: Vec<RecoverableRange>,
    pub window: Option<RecoverableWindow>,
    /// Segment with the highest name: the newest WAL on the newest timeline.
    pub last_wal: Option<ArchivedWal>,
    /// Always [`LAST_WAL_TIME_SOURCE`]: WAL times are estimated from object LastModified times.
    pub last_wal_time_source: &'static str,
    pub ignored_objects: Vec<IgnoredObject>,
    pub warnings: Vec<String>,
    #[serde(skip)]
    archive: Archive,
}

/// Archived full segments by timeline and segment number, with their estimated times.
#[derive(Debug, Clone, Default)]
struct Archive {
    segment_size: SegmentSize,
    segments: BTreeMap<u32, BTreeMap<u64, DateTime<Utc>>>,
    /// Highest timeline seen in segments, partial segments or history files.
    latest_timeline: u32,
}

impl Archive {
    fn estimated_time(&self, timeline: u32, number: u64) -> Option<DateTime<Utc>> {
        self.segments.get(&timeline)?.get(&number).copied()
    }

    fn next_archived_after(&self, timeline: u32, number: u64) -> Option<u64> {
        let numbers = self.segments.get(&timeline)?;
        numbers.range(number + 1..).next().map(|(next, _)| *next)
    }

    fn segment(&self, timeline: u32, number: u64) -> Option<WalSegment> {
        WalSegment::from_segment_number(timeline, number, self.segment_size)
    }
}

/// A timeline of a recovery path, replayed from segment number `from` onwards.
#[derive(Debug, Clone, Copy)]
struct PathStep {
    timeline: u32,
    from: u64,
}

impl Catalogue {
    /// Builds the catalogue without timeline history contents.
    ///
    /// Each timeline's WAL is then treated separately: recovery from a backup does not
    /// continue onto a newer timeline. Use [`Catalogue::build_with_history`] to follow
    /// promotions.
    pub fn build(
        server: &str,
        backups: Vec<(BackupId, BackupInfo)>,
        wal_objects: Vec<WalObject>,
    ) -> Catalogue {
        Catalogue::build_with_history(server, backups, wal_objects, Vec::new())
    }

    /// Builds the catalogue from parsed backup.info files, the `wals/` listing and the parsed
    /// timeline history files.
    ///
    /// Recovery from a backup follows the newest supplied timeline whose history contains the
    /// backup's timeline, switching at each switch LSN as PostgreSQL does with
    /// `recovery_target_timeline = 'latest'`. Backups that are not `DONE`, or whose backup.info
    /// is incomplete, go to `skipped_backups`. Keys that are not WAL archive keys go to
    /// `ignored_objects`.
    pub fn build_with_history(
        server: &str,
        backups: Vec<(BackupId, BackupInfo)>,
        wal_objects: Vec<WalObject>,
        histories: Vec<TimelineHistory>,
    ) -> Catalogue {
        let mut warnings = Vec::new();
        let (base_backups, skipped_backups) = collect_base_backups(backups, &mut warnings);
        let segment_size = base_backups
            .first()
            .map(|backup| backup.segment_size)
            .unwrap_or_default();

        let histories: BTreeMap<u32, TimelineHistory> = histories
            .into_iter()
            .map(|history| (history.timeline, history))
            .collect();
        let listing = collect_wal_objects(wal_objects, segment_size, &mut warnings);

        let mut archive = listing.archive;
        archive.latest_timeline = archive
            .latest_timeline
            .max(histories.keys().copied().max().unwrap_or(0));

        let backups: Vec<CataloguedBackup> = base_backups
            .into_iter()
            .map(|backup| catalogue_backup(backup, &archive, &histories))
            .collect();
        warn_about_unfollowed_timelines(&backups, &archive, &histories, &mut warnings);

        let gaps = find_gaps(&backups, &archive, &histories);
        let recoverable_ranges = recoverable_ranges(&backups, &mut warnings);
        let last_wal = last_archived_wal(&archive);
        let window = backups
            .iter()
            .filter(|backup| backup.usable)
            .map(|backup| backup.backup.end_time)
            .min()
            .zip(last_wal)
            .map(|(after, last)| RecoverableWindow {
                after,
                until: last.estimated_time,
            });
        let timelines = timeline_summaries(&archive, &listing.extras, &histories);

        Catalogue {
            server: server.to_string(),
            segment_size,
            backups,
            skipped_backups,
            timelines,
            gaps,
            recoverable_ranges,
            window,
            last_wal,
            last_wal_time_source: LAST_WAL_TIME_SOURCE,
            ignored_objects: listing.ignored,
            warnings,
            archive,
        }
    }

    /// Selects the base backup to restore for a recovery to `target`.
    ///
    /// The result is the newest usable backup whose end time is strictly before `target` and
    /// from whose `begin_wal` the archived WAL is unbroken up to a segment whose estimated
    /// time is at or after `target`. With `allow_end_of_archive`, a target after the last
    /// archived WAL selects the newest backup whose WAL reaches the end of the archive, and
    /// the plan marks that recovery stops there.
    pub fn select_base_backup(
        &self,
        target: DateTime<Utc>,
        now: DateTime<Utc>,
        allow_end_of_archive: bool,
    ) -> Result<BackupPlan, PlanError> {
        if target > now {
            return Err(PlanError::TargetInFuture { target, now });
        }
        let Some(oldest) = self.backups.first() else {
            return Err(PlanError::NoBackups {
                target,
                server: self.server.clone(),
            });
        };
        let usable: Vec<&CataloguedBackup> =
            self.backups.iter().filter(|backup| backup.usable).collect();
        let Some(first_usable) = usable.first() else {
            return Err(PlanError::NoUsableBackup {
                target,
                backup: oldest.backup.id.clone(),
                missing: oldest.wal.next_needed,
            });
        };

        let eligible: Vec<&CataloguedBackup> = usable
            .iter()
            .copied()
            .filter(|backup| backup.backup.end_time < target)
            .collect();
        let Some(newest_eligible) = eligible.last() else {
            return Err(PlanError::TargetBeforeFirstBackup {
                target,
                backup: first_usable.backup.id.clone(),
                end_time: first_usable.backup.end_time,
            });
        };

        for candidate in eligible.iter().rev() {
            let last = candidate
                .wal
                .last
                .expect("a usable backup has archived WAL");
            if target <= last.estimated_time {
                return Ok(BackupPlan::new(target, candidate, last, false));
            }
        }

        // No eligible backup reaches the target. The newest one explains why, because older
        // backups on the same timeline path end at the same place or earlier.
        let last = newest_eligible
            .wal
            .last
            .expect("a usable backup has archived WAL");
        let backup = newest_eligible.backup.id.clone();
        match newest_eligible.wal.end {
            RunEnd::Gap { missing, .. } => {
                let next_backup = usable
                    .iter()
                    .find(|later| later.backup.end_time >= target)
                    .map(|later| (later.backup.id.clone(), later.backup.end_time));
                Err(PlanError::TargetBeyondGap {
                    target,
                    backup,
                    last_segment: last.segment,
                    reachable_until: last.estimated_time,
                    missing,
                    next_backup,
                })
            }
            RunEnd::EndOfArchive if allow_end_of_archive => {
                Ok(BackupPlan::new(target, newest_eligible, last, true))
            }
            RunEnd::EndOfArchive => Err(PlanError::TargetAfterArchiveEnd {
                target,
                backup,
                last_segment: last.segment,
                reachable_until: last.estimated_time,
            }),
            RunEnd::EndOfTimeline { later_timeline } => Err(PlanError::TargetBeyondTimeline {
                target,
                backup,
                last_segment: last.segment,
                reachable_until: last.estimated_time,
                later_timeline,
                history_supplied: self
                    .timelines
                    .iter()
                    .any(|summary| summary.timeline == later_timeline && summary.history.is_some()),
            }),
        }
    }

    /// Estimated time of an archived full segment, or `None` when it is not archived.
    pub fn estimated_time(&self, segment: WalSegment) -> Option<DateTime<Utc>> {
        let number = segment.segment_number(self.segment_size)?;
        self.archive.estimated_time(segment.timeline, number)
    }
}

/// Restore plan for one recovery target: the base backup and the WAL range to replay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupPlan {
    pub target: DateTime<Utc>,
    pub backup: BaseBackup,
    /// Timeline of `wal_last`, the timeline that recovery ends on.
    pub timeline: u32,
    pub timeline_path: Vec<TimelineStep>,
    /// The backup's `begin_wal`, the first segment recovery requests.
    pub wal_first: WalSegment,
    /// Last segment of the contiguous archived run from `wal_first`. Recovery stops at the
    /// first commit after the target, which lies in this range but cannot be located from the
    /// listing, so the whole run is included.
    pub wal_last: WalSegment,
    /// Estimated time of `wal_last`; see [`ArchivedWal::estimated_time`].
    pub wal_last_estimated_time: DateTime<Utc>,
    pub last_wal_time_source: &'static str,
    /// Whether the target lies after the estimated time of the last archived WAL, so recovery
    /// replays to the end of the archive.
    ///
    /// PostgreSQL 13 and later fail such a recovery when `recovery_target_time` is set, so
    /// the restore must then recover to the end of WAL without a target time.
    pub stops_at_end_of_archive: bool,
}

impl BackupPlan {
    fn new(
        target: DateTime<Utc>,
        catalogued: &CataloguedBackup,
        last: ArchivedWal,
        stops_at_end_of_archive: bool,
    ) -> BackupPlan {
        BackupPlan {
            target,
            backup: catalogued.backup.clone(),
            timeline: last.segment.timeline,
            timeline_path: catalogued.wal.timeline_path.clone(),
            wal_first: catalogued.wal.first,
            wal_last: last.segment,
            wal_last_estimated_time: last.estimated_time,
            last_wal_time_source: LAST_WAL_TIME_SOURCE,
            stops_at_end_of_archive,
        }
    }
}

/// Errors from [`Catalogue::select_base_backup`]. Each message names the target and the next
/// step.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlanError {
    #[error(
        "target time {} is in the future (current time {}): choose a time at or before the \
         current time",
        rfc3339(.target),
        rfc3339(.now)
    )]
    TargetInFuture {
        target: DateTime<Utc>,
        now: DateTime<Utc>,
    },

    #[error(
        "no completed base backup of server {server:?} is in the archive, so target time {} \
         cannot be recovered: take a base backup first, or check the destination path and \
         server name",
        rfc3339(.target)
    )]
    NoBackups {
        target: DateTime<Utc>,
        server: String,
    },

    #[error(
        "no base backup can be restored to target time {}: the oldest, {backup}, needs WAL \
         segment {} which is not in the archive, and no later backup has all of its WAL; \
         check that WAL archiving works and take a new base backup",
        rfc3339(.target),
        optional_segment(.missing)
    )]
    NoUsableBackup {
        target: DateTime<Utc>,
        backup: BackupId,
        missing: Option<WalSegment>,
    },

    #[error(
        "target time {} is not after the end of the first usable base backup {backup}, which \
         ended at {}: choose a target later than {}",
        rfc3339(.target),
        rfc3339(.end_time),
        rfc3339(.end_time)
    )]
    TargetBeforeFirstBackup {
        target: DateTime<Utc>,
        backup: BackupId,
        end_time: DateTime<Utc>,
    },

    #[error(
        "target time {} cannot be reached from base backup {backup}: WAL segment {missing} is \
         missing from the archive, so replay stops after {last_segment} (estimated time {}); \
         choose a target at or before {}{}, or put the missing segment back into the archive",
        rfc3339(.target),
        rfc3339(.reachable_until),
        rfc3339(.reachable_until),
        later_backup_hint(.next_backup)
    )]
    TargetBeyondGap {
        target: DateTime<Utc>,
        backup: BackupId,
        last_segment: WalSegment,
        reachable_until: DateTime<Utc>,
        missing: WalSegment,
        next_backup: Option<(BackupId, DateTime<Utc>)>,
    },

    #[error(
        "target time {} is after the last archived WAL segment {last_segment}, whose estimated \
         time is {} (its object's last-modified time): choose a target at or before {}, wait \
         until more WAL is archived, or allow recovery to stop at the end of the archive",
        rfc3339(.target),
        rfc3339(.reachable_until),
        rfc3339(.reachable_until)
    )]
    TargetAfterArchiveEnd {
        target: DateTime<Utc>,
        backup: BackupId,
        last_segment: WalSegment,
        reachable_until: DateTime<Utc>,
    },

    #[error(
        "target time {} cannot be reached from base backup {backup}: its WAL ends at \
         {last_segment} (estimated time {}) and recovery from it does not continue onto the \
         newer timeline {later_timeline}; choose a target at or before {}, {}",
        rfc3339(.target),
        rfc3339(.reachable_until),
        rfc3339(.reachable_until),
        timeline_hint(*.later_timeline, *.history_supplied)
    )]
    TargetBeyondTimeline {
        target: DateTime<Utc>,
        backup: BackupId,
        last_segment: WalSegment,
        reachable_until: DateTime<Utc>,
        later_timeline: u32,
        /// Whether the history file of `later_timeline` was supplied. When it was, the backup
        /// lies on a branch that `later_timeline` does not continue.
        history_supplied: bool,
    },
}

fn rfc3339(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn optional_segment(segment: &Option<WalSegment>) -> String {
    match segment {
        Some(segment) => segment.to_string(),
        None => "after the end of the WAL address space".to_string(),
    }
}

fn timeline_hint(later_timeline: u32, history_supplied: bool) -> String {
    if history_supplied {
        format!("or use a backup taken on timeline {later_timeline}, because this backup ended after timeline {later_timeline} branched off")
    } else {
        format!("supply the history file of timeline {later_timeline}, or use a backup taken on timeline {later_timeline}")
    }
}

fn later_backup_hint(next_backup: &Option<(BackupId, DateTime<Utc>)>) -> String {
    match next_backup {
        Some((id, end_time)) => format!(
            ", or a target after {} when base backup {id} ended",
            rfc3339(end_time)
        ),
        None => String::new(),
    }
}

/// Splits backup.info entries into `DONE` base backups, sorted by end time, and skipped ones.
///
/// Backups whose segment size differs from the oldest backup's come from another cluster and
/// are skipped. A differing system identifier only adds a warning, because the WAL listing
/// carries no system identifier by which to separate the clusters' WAL.
fn collect_base_backups(
    backups: Vec<(BackupId, BackupInfo)>,
    warnings: &mut Vec<String>,
) -> (Vec<BaseBackup>, Vec<SkippedBackup>) {
    let mut base_backups = Vec::new();
    let mut skipped = Vec::new();
    for (id, info) in backups {
        if info.status != BackupStatus::Done {
            let reason = match &info.error {
                Some(error) => format!("status is {}: {error}", info.status),
                None => format!("status is {}, not DONE", info.status),
            };
            skipped.push(SkippedBackup {
                id,
                status: info.status,
                reason,
            });
            continue;
        }
        match BaseBackup::from_info(id.clone(), &info) {
            Ok(backup) => base_backups.push(backup),
            Err(error) => skipped.push(SkippedBackup {
                id,
                status: info.status,
                reason: error.to_string(),
            }),
        }
    }
    base_backups.sort_by(|a, b| (a.end_time, &a.id).cmp(&(b.end_time, &b.id)));

    let Some(reference) = base_backups.first().cloned() else {
        return (base_backups, skipped);
    };
    let mut same_cluster = Vec::new();
    for backup in base_backups {
        if backup.segment_size != reference.segment_size {
            skipped.push(SkippedBackup {
                reason: format!(
                    "WAL segment size is {} but the oldest backup {} uses {}, so it belongs to \
                     another cluster",
                    backup.segment_size, reference.id, reference.segment_size
                ),
                id: backup.id,
                status: BackupStatus::Done,
            });
            continue;
        }
        if let (Some(system), Some(reference_system)) = (backup.systemid, reference.systemid) {
            if system != reference_system {
                warnings.push(format!(
                    "backup {} has system identifier {system} but the oldest backup {} has \
                     {reference_system}; they may come from different clusters",
                    backup.id, reference.id
                ));
            }
        }
        same_cluster.push(backup);
    }
    (same_cluster, skipped)
}

/// Objects of the listing that are not full segments, counted per timeline.
#[derive(Debug, Default)]
struct TimelineExtras {
    partial_segments: Vec<WalSegment>,
    backup_history_files: usize,
    history_file_archived: bool,
}

struct Listing {
    archive: Archive,
    extras: BTreeMap<u32, TimelineExtras>,
    ignored: Vec<IgnoredObject>,
}

/// Sorts the `wals/` listing into full segments, other WAL files and ignored keys.
///
/// A segment archived more than once (for example both plain and compressed) keeps the
/// earliest LastModified time, which is the tighter upper bound.
fn collect_wal_objects(
    wal_objects: Vec<WalObject>,
    segment_size: SegmentSize,
    warnings: &mut Vec<String>,
) -> Listing {
    let mut archive = Archive {
        segment_size,
        ..Archive::default()
    };
    let mut extras: BTreeMap<u32, TimelineExtras> = BTreeMap::new();
    let mut ignored = Vec::new();
    let mut duplicates: Vec<WalSegment> = Vec::new();

    for object in wal_objects {
        let name = match WalObjectName::parse_key(&object.key) {
            Ok(name) => name,
            Err(error) => {
                let reason = match error {
                    WalError::InvalidObjectKey { reason, .. } => reason,
                    other => other.to_string(),
                };
                ignored.push(IgnoredObject {
                    key: object.key,
                    reason,
                });
                continue;
            }
        };
        let timeline = name.file.timeline();
        archive.latest_timeline = archive.latest_timeline.max(timeline);
        let timeline_extras = extras.entry(timeline).or_default();
        match name.file {
            WalFile::Segment { segment } => {
                let Some(number) = segment.segment_number(segment_size) else {
                    ignored.push(IgnoredObject {
                        key: object.key,
                        reason: format!(
                            "segment {segment} does not exist with {segment_size} segments"
                        ),
                    });
                    continue;
                };
                let times = archive.segments.entry(timeline).or_default();
                match times.get_mut(&number) {
                    Some(time) => {
                        duplicates.push(segment);
                        *time = (*time).min(object.last_modified);
                    }
                    None => {
                        times.insert(number, object.last_modified);
                    }
                }
            }
            WalFile::Partial { segment } => timeline_extras.partial_segments.push(segment),
            WalFile::BackupHistory { .. } => timeline_extras.backup_history_files += 1,
            WalFile::TimelineHistory { .. } => timeline_extras.history_file_archived = true,
        }
    }

    if let Some(first) = duplicates.first() {
        warnings.push(format!(
            "{} WAL segments are archived more than once under different names, for example \
             {first}; the earliest upload time is used for each",
            duplicates.len()
        ));
    }
    for timeline_extras in extras.values_mut() {
        timeline_extras.partial_segments.sort();
    }
    Listing {
        archive,
        extras,
        ignored,
    }
}

/// Timelines that recovery from `backup` replays, with the segment number where each starts.
///
/// The path follows the newest supplied history when that history lists the backup's
/// timeline as an ancestor and the backup ended at or before the switch away from it.
/// Otherwise the path is the backup's own timeline alone.
fn timeline_path(backup: &BaseBackup, histories: &BTreeMap<u32, TimelineHistory>) -> Vec<PathStep> {
    let size = backup.segment_size;
    let begin = backup
        .begin_wal
        .segment_number(size)
        .expect("validated by BaseBackup::from_info");
    let mut path = vec![PathStep {
        timeline: backup.timeline,
        from: begin,
    }];

    let Some((&latest, history)) = histories.iter().next_back() else {
        return path;
    };
    if latest <= backup.timeline {
        return path;
    }
    let Some(index) = history
        .switches
        .iter()
        .position(|switch| switch.parent_timeline == backup.timeline)
    else {
        return path;
    };
    if backup.end_lsn > history.switches[index].switch_lsn {
        return path;
    }

    for (offset, switch) in history.switches[index..].iter().enumerate() {
        let next_timeline = history
            .switches
            .get(index + offset + 1)
            .map(|next| next.parent_timeline)
            .unwrap_or(latest);
        path.push(PathStep {
            timeline: next_timeline,
            from: switch.switch_lsn.segment_number(size).max(begin),
        });
    }
    path
}

/// Timeline that recovery reads segment `number` from: the newest path step that has begun.
///
/// NOTE: when the newer timeline's copy of a segment is missing, PostgreSQL also tries the
/// older timelines' copies. The catalogue does not, so it can report a gap right after a
/// timeline switch that PostgreSQL would replay across.
fn timeline_at(path: &[PathStep], number: u64) -> u32 {
    path.iter()
        .rev()
        .find(|step| step.from <= number)
        .map(|step| step.timeline)
        .unwrap_or(path[0].timeline)
}

/// Follows the archived WAL from the backup's `begin_wal` until the first missing segment.
fn catalogue_backup(
    backup: BaseBackup,
    archive: &Archive,
    histories: &BTreeMap<u32, TimelineHistory>,
) -> CataloguedBackup {
    let path = timeline_path(&backup, histories);
    let begin = path[0].from;

    let mut number = begin;
    let mut last: Option<ArchivedWal> = None;
    let missing_timeline = loop {
        let timeline = timeline_at(&path, number);
        match (
            archive.estimated_time(timeline, number),
            archive.segment(timeline, number),
        ) {
            (Some(estimated_time), Some(segment)) => {
                last = Some(ArchivedWal {
                    segment,
                    estimated_time,
                });
                number += 1;
            }
            _ => break timeline,
        }
    };

    let next_needed = archive.segment(missing_timeline, number);
    let end = match (
        archive.next_archived_after(missing_timeline, number),
        next_needed,
    ) {
        (Some(next), Some(missing)) => RunEnd::Gap {
            missing,
            next_archived: archive
                .segment(missing_timeline, next)
                .expect("archived segments have valid numbers"),
        },
        _ if archive.latest_timeline > missing_timeline => RunEnd::EndOfTimeline {
            later_timeline: archive.latest_timeline,
        },
        _ => RunEnd::EndOfArchive,
    };

    let end_number = backup
        .end_wal
        .segment_number(backup.segment_size)
        .expect("validated by BaseBackup::from_info");
    let usable = last.is_some() && number > end_number;

    let timeline_path = path
        .iter()
        .filter_map(|step| {
            Some(TimelineStep {
                timeline: step.timeline,
                first_segment: archive.segment(step.timeline, step.from)?,
            })
        })
        .collect();

    CataloguedBackup {
        usable,
        wal: WalRun {
            timeline_path,
            first: backup.begin_wal,
            last,
            next_needed,
            end,
        },
        backup,
    }
}

/// Warns when a newer timeline exists but its history was not supplied, so backups on older
/// timelines cannot follow it.
fn warn_about_unfollowed_timelines(
    backups: &[CataloguedBackup],
    archive: &Archive,
    histories: &BTreeMap<u32, TimelineHistory>,
    warnings: &mut Vec<String>,
) {
    let latest = archive.latest_timeline;
    let has_older_backup = backups.iter().any(|backup| backup.backup.timeline < latest);
    if has_older_backup && latest > 1 && !histories.contains_key(&latest) {
        warnings.push(format!(
            "the history file of timeline {latest} was not supplied, so recovery from backups on \
             older timelines stops at the end of their own timeline"
        ));
    }
}

/// Finds gaps per timeline from the oldest `DONE` backup's `begin_wal` onwards.
///
/// On the oldest backup's timeline the expected first segment is its `begin_wal`. On a
/// timeline with a supplied history it is the segment where the timeline began. Elsewhere
/// only holes between archived segments count. A timeline switch is never a gap, because
/// each timeline is checked on its own.
fn find_gaps(
    backups: &[CataloguedBackup],
    archive: &Archive,
    histories: &BTreeMap<u32, TimelineHistory>,
) -> Vec<WalGap> {
    let size = archive.segment_size;
    // TODO: follow the history chain so that a gap on an old timeline after its switch point,
    // which recovery never reads, is not reported.
    let oldest = backups.first().map(|backup| {
        let number = backup
            .backup
            .begin_wal
            .segment_number(size)
            .expect("validated by BaseBackup::from_info");
        (backup.backup.timeline, number)
    });
    let lower_bound = oldest.map(|(_, number)| number).unwrap_or(0);

    let mut gaps = Vec::new();
    for (&timeline, numbers) in &archive.segments {
        let expected_start = match (oldest, histories.get(&timeline)) {
            (Some((oldest_timeline, number)), _) if oldest_timeline == timeline => Some(number),
            (_, Some(history)) => Some(history.begin_lsn().segment_number(size).max(lower_bound)),
            _ => None,
        };
        let from = expected_start.unwrap_or(lower_bound);

        let mut previous: Option<u64> = None;
        for &number in numbers.range(from..).map(|(number, _)| number) {
            let gap_start = match previous {
                Some(previous) => previous + 1,
                None => expected_start.unwrap_or(number),
            };
            if number > gap_start {
                let segment = |n| {
                    archive
                        .segment(timeline, n)
                        .expect("numbers come from archived segments")
                };
                gaps.push(WalGap {
                    timeline,
                    first_missing: segment(gap_start),
                    last_missing: segment(number - 1),
                    missing_count: number - gap_start,
                    previous_archived: previous.map(segment),
                    next_archived: segment(number),
                });
            }
            previous = Some(number);
        }
    }
    gaps
}

/// Groups usable backups by the last segment of their WAL run. Each group is one range.
fn recoverable_ranges(
    backups: &[CataloguedBackup],
    warnings: &mut Vec<String>,
) -> Vec<RecoverableRange> {
    let mut ranges: BTreeMap<WalSegment, RecoverableRange> = BTreeMap::new();
    for catalogued in backups.iter().filter(|backup| backup.usable) {
        let Some(last) = catalogued.wal.last else {
            continue;
        };
        let backup = &catalogued.backup;
        if last.estimated_time <= backup.end_time {
            warnings.push(format!(
                "the WAL of backup {} ends with {}, uploaded at {}, which is not after the backup \
                 ended at {}; check the clocks of the database host and the object store",
                backup.id,
                last.segment,
                rfc3339(&last.estimated_time),
                rfc3339(&backup.end_time)
            ));
            continue;
        }
        let range = ranges
            .entry(last.segment)
            .or_insert_with(|| RecoverableRange {
                after: backup.end_time,
                until: last.estimated_time,
                backups: Vec::new(),
                last_segment: last.segment,
                end: catalogued.wal.end,
            });
        range.after = range.after.min(backup.end_time);
        range.backups.push(backup.id.clone());
    }
    let mut ranges: Vec<RecoverableRange> = ranges.into_values().collect();
    ranges.sort_by_key(|range| range.after);
    ranges
}

fn last_archived_wal(archive: &Archive) -> Option<ArchivedWal> {
    let (&timeline, numbers) = archive.segments.iter().next_back()?;
    let (&number, &estimated_time) = numbers.iter().next_back()?;
    Some(ArchivedWal {
        segment: archive.segment(timeline, number)?,
        estimated_time,
    })
}

fn timeline_summaries(
    archive: &Archive,
    extras: &BTreeMap<u32, TimelineExtras>,
    histories: &BTreeMap<u32, TimelineHistory>,
) -> Vec<TimelineSummary> {
    let timelines: BTreeSet<u32> = archive
        .segments
        .keys()
        .chain(extras.keys())
        .chain(histories.keys())
        .copied()
        .collect();
    timelines
        .into_iter()
        .map(|timeline| {
            let numbers = archive.segments.get(&timeline);
            let first = numbers.and_then(|numbers| numbers.keys().next().copied());
            let last = numbers.and_then(|numbers| numbers.keys().next_back().copied());
            let timeline_extras = extras.get(&timeline);
            TimelineSummary {
                timeline,
                first_segment: first.and_then(|number| archive.segment(timeline, number)),
                last_segment: last.and_then(|number| archive.segment(timeline, number)),
                segment_count: numbers.map(BTreeMap::len).unwrap_or(0),
                partial_segments: timeline_extras
                    .map(|extras| extras.partial_segments.clone())
                    .unwrap_or_default(),
                backup_history_files: timeline_extras
                    .map(|extras| extras.backup_history_files)
                    .unwrap_or(0),
                history_file_archived: timeline_extras
                    .is_some_and(|extras| extras.history_file_archived),
                history: histories.get(&timeline).cloned(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// backup.info of a streamed backup of PostgreSQL 15, as written by barman 3.19.
    const BARMAN_BACKUP_INFO: &str = "\
backup_label='START WAL LOCATION: 0/3000028 (file 000000010000000000000003)\\nCHECKPOINT LOCATION: 0/3000060\\nBACKUP METHOD: streamed\\nBACKUP FROM: primary\\nSTART TIME: 2026-12-04 20:01:52 UTC\\nLABEL: Barman backup cloud 20261204T200152\\nSTART TIMELINE: 1\\n'
backup_name=base1
begin_offset=40
begin_time=2026-12-04 20:01:52.881420+00:00
begin_wal=000000010000000000000003
begin_xlog=0/3000028
children_backup_ids=None
cluster_size=23191241
compression=None
copy_stats={'total_time': 1.567763, 'number_of_workers': 2, 'copy_time': 1.201743}
end_offset=312
end_time=2026-12-04 20:01:53.375500+00:00
end_wal=000000010000000000000003
end_xlog=0/3000138
error=None
server_name=cloud
status=DONE
systemid=7715541354393170512
timeline=1
version=150018
xlog_segment_size=16777216
";

    const FAILED_BACKUP_INFO: &str = "\
backup_label=None
backup_name=None
begin_time=2026-12-04 21:00:00.000001+00:00
begin_wal=000000010000000000000009
begin_xlog=0/9000028
end_time=None
end_wal=None
end_xlog=None
error='failure uploading data (connection reset by peer)\\nretry later'
server_name=cloud
status=FAILED
timeline=1
";

    fn time(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn id(text: &str) -> BackupId {
        BackupId::new(text).unwrap()
    }

    fn segment(timeline: u32, number: u64) -> WalSegment {
        WalSegment::from_segment_number(timeline, number, SegmentSize::DEFAULT).unwrap()
    }

    /// Object of segment `number` on `timeline`, uploaded at `uploaded`.
    fn wal_object(timeline: u32, number: u64, extension: &str, uploaded: &str) -> WalObject {
        let segment = segment(timeline, number);
        WalObject {
            key: format!(
                "s3prefix/pg-main/wals/{}/{segment}{extension}",
                segment.archive_folder()
            ),
            size: 16 * 1024 * 1024,
            last_modified: time(uploaded),
        }
    }

    /// Parses a `DONE` backup.info for a backup whose WAL starts and ends in segments
    /// `begin` and `end` of `timeline`.
    fn done_backup(
        backup_id: &str,
        timeline: u32,
        begin: u64,
        end: u64,
        begin_time: &str,
        end_time: &str,
    ) -> (BackupId, BackupInfo) {
        let text = format!(
            "backup_name=None\n\
             begin_time={begin_time}\n\
             begin_wal={}\n\
             begin_xlog=0/{:X}\n\
             end_time={end_time}\n\
             end_wal={}\n\
             end_xlog=0/{:X}\n\
             error=None\n\
             server_name=cloud\n\
             status=DONE\n\
             systemid=7715541354393170512\n\
             timeline={timeline}\n\
             version=150018\n\
             xlog_segment_size=16777216\n",
            segment(timeline, begin),
            begin * 0x100_0000 + 0x28,
            segment(timeline, end),
            end * 0x100_0000 + 0x138,
        );
        let backup_id = id(backup_id);
        let info = BackupInfo::parse(&backup_id, &text).unwrap();
        (backup_id, info)
    }

    /// Segments 3 to 10 on timeline 1, segment n uploaded at 10:0n (10:10 for segment 10).
    fn contiguous_wal() -> Vec<WalObject> {
        (3..=10)
            .map(|number| wal_object(1, number, ".gz", &format!("2026-12-04T10:{number:02}:00Z")))
            .collect()
    }

    /// Backup b1 (WAL segment 3, ends 10:02:30) and backup b2 (segment 6, ends 10:05:40).
    fn two_backups() -> Vec<(BackupId, BackupInfo)> {
        vec![
            done_backup(
                "20261204T100530",
                1,
                6,
                6,
                "2026-12-04 10:05:30+00:00",
                "2026-12-04 10:05:40+00:00",
            ),
            done_backup(
                "20261204T100200",
                1,
                3,
                3,
                "2026-12-04 10:02:00+00:00",
                "2026-12-04 10:02:30+00:00",
            ),
        ]
    }

    fn now() -> DateTime<Utc> {
        time("2026-12-04T11:00:00Z")
    }

    #[test]
    fn backup_info_parses_barman_output() {
        let backup_id = id("20261204T200152");
        let info = BackupInfo::parse(&backup_id, BARMAN_BACKUP_INFO).unwrap();
        assert_eq!(info.status, BackupStatus::Done);
        assert_eq!(info.backup_name.as_deref(), Some("base1"));
        assert_eq!(info.error, None);
        assert_eq!(info.begin_time, Some(time("2026-12-04T20:01:52.881420Z")));
        assert_eq!(info.end_time, Some(time("2026-12-04T20:01:53.375500Z")));
        assert_eq!(info.begin_wal, Some(WalSegment::new(1, 0, 3)));
        assert_eq!(info.end_wal, Some(WalSegment::new(1, 0, 3)));
        assert_eq!(info.begin_lsn, Some(Lsn(0x300_0028)));
        assert_eq!(info.end_lsn, Some(Lsn(0x300_0138)));
        assert_eq!(info.timeline, Some(1));
        assert_eq!(info.systemid, Some(7_715_541_354_393_170_512));
        assert_eq!(info.version, Some(150_018));
        assert_eq!(info.segment_size, Some(SegmentSize::DEFAULT));

        let base = BaseBackup::from_info(backup_id.clone(), &info).unwrap();
        assert_eq!(base.id, backup_id);
        assert_eq!(base.segment_size, SegmentSize::DEFAULT);
    }

    #[test]
    fn backup_info_parses_failed_backup() {
        let backup_id = id("20261204T210000");
        let info = BackupInfo::parse(&backup_id, FAILED_BACKUP_INFO).unwrap();
        assert_eq!(info.status, BackupStatus::Failed);
        assert_eq!(
            info.error.as_deref(),
            Some("failure uploading data (connection reset by peer)\nretry later")
        );
        assert_eq!(info.backup_name, None);
        assert_eq!(info.end_time, None);
        assert_eq!(info.end_wal, None);
        assert_eq!(info.begin_wal, Some(WalSegment::new(1, 0, 9)));
    }

    #[test]
    fn backup_info_done_missing_key() {
        let backup_id = id("20261204T200152");
        for key in [
            "begin_time",
            "end_time",
            "begin_wal",
            "end_wal",
            "begin_xlog",
            "end_xlog",
            "timeline",
        ] {
            let text: String = BARMAN_BACKUP_INFO
                .lines()
                .filter(|line| !line.starts_with(&format!("{key}=")))
                .map(|line| format!("{line}\n"))
                .collect();
            let error = BackupInfo::parse(&backup_id, &text).unwrap_err();
            assert_eq!(
                error,
                BackupInfoError::MissingKey {
                    backup_id: backup_id.clone(),
                    status: BackupStatus::Done,
                    key,
                },
                "without {key}"
            );
            let message = error.to_string();
            assert!(message.contains("20261204T200152"), "{message}");
            assert!(message.contains(&format!("no {key}")), "{message}");
        }
    }

    #[test]
    fn backup_info_none_value_missing() {
        let backup_id = id("20261204T200152");
        let text = BARMAN_BACKUP_INFO
            .replace("end_time=2026-12-04 20:01:53.375500+00:00", "end_time=None");
        let error = BackupInfo::parse(&backup_id, &text).unwrap_err();
        assert!(
            matches!(
                error,
                BackupInfoError::MissingKey {
                    key: "end_time",
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn backup_info_invalid_values() {
        let backup_id = id("b");
        let cases = [
            (
                "begin_wal=000000010000000000000003",
                "begin_wal=3",
                "begin_wal",
            ),
            (
                "end_time=2026-12-04 20:01:53.375500+00:00",
                "end_time=2026-12-04 20:01:53",
                "end_time",
            ),
            ("timeline=1", "timeline=0", "timeline"),
            ("begin_xlog=0/3000028", "begin_xlog=0-3000028", "begin_xlog"),
            (
                "xlog_segment_size=16777216",
                "xlog_segment_size=1000",
                "xlog_segment_size",
            ),
        ];
        for (original, replacement, key) in cases {
            let text = BARMAN_BACKUP_INFO.replace(original, replacement);
            let error = BackupInfo::parse(&backup_id, &text).unwrap_err();
            let message = error.to_string();
            assert!(
                matches!(&error, BackupInfoError::InvalidValue { key: k, .. } if *k == key),
                "{replacement}: {error:?}"
            );
            let value = replacement.split_once('=').unwrap().1;
            assert!(
                message.contains(&format!("{value:?}")),
                "{message} quotes the value"
            );
        }
        let error =
            BackupInfo::parse(&backup_id, "status=DONE\nthis line has no separator\n").unwrap_err();
        assert!(
            matches!(error, BackupInfoError::InvalidLine { line_number: 2, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn backup_info_python_values() {
        let cases = [
            ("None", None),
            ("base1", Some("base1")),
            ("'quoted'", Some("quoted")),
            ("\"it's\"", Some("it's")),
            ("'a\\nb\\tc\\\\d\\'e'", Some("a\nb\tc\\d'e")),
            ("'caf\\xe9 \\u00e9'", Some("café é")),
            ("'unknown \\q escape'", Some("unknown \\q escape")),
            ("'not closed", Some("'not closed")),
            ("'quoted' then text", Some("'quoted' then text")),
            ("{'total_time': 1.5}", Some("{'total_time': 1.5}")),
        ];
        for (raw, expected) in cases {
            assert_eq!(decode_python_value(raw).as_deref(), expected, "{raw}");
        }
    }

    #[test]
    fn history_parse() {
        let history =
            TimelineHistory::parse(2, "1\t0/50000B0\tbefore 2026-12-04 20:02:03.356005+00\n\n")
                .unwrap();
        assert_eq!(history.timeline, 2);
        assert_eq!(
            history.switches,
            vec![TimelineSwitch {
                parent_timeline: 1,
                switch_lsn: Lsn(0x500_00B0),
                reason: "before 2026-12-04 20:02:03.356005+00".to_string(),
            }]
        );
        assert_eq!(history.begin_lsn(), Lsn(0x500_00B0));

        let three = TimelineHistory::parse(
            3,
            "# comment\n1\t0/50000B0\tno recovery target specified\n2\t0/7000000\tx\n",
        )
        .unwrap();
        assert_eq!(three.switches.len(), 2);
        assert_eq!(three.begin_lsn(), Lsn(0x700_0000));

        let cases = [
            ("", "lists no parent timeline"),
            ("2\t0/50000B0\tx\n", "lower than the file's timeline"),
            ("1\tnot-an-lsn\tx\n", "switch LSN"),
            ("one\t0/1\tx\n", "parent timeline number"),
        ];
        for (text, fragment) in cases {
            let error = TimelineHistory::parse(2, text).unwrap_err();
            let message = error.to_string();
            assert!(message.contains(fragment), "{text:?}: {message}");
            assert!(message.contains("00000002.history"), "{message}");
        }
        let error = TimelineHistory::parse(4, "2\t0/5000000\tx\n1\t0/6000000\tx\n").unwrap_err();
        assert!(error.to_string().contains("must increase"), "{error}");
    }

    #[test]
    fn catalogue_two_backups_contiguous_wal() {
        let catalogue = Catalogue::build("pg-main", two_backups(), contiguous_wal());

        let ids: Vec<&str> = catalogue
            .backups
            .iter()
            .map(|backup| backup.backup.id.as_str())
            .collect();
        assert_eq!(
            ids,
            ["20261204T100200", "20261204T100530"],
            "sorted by end time"
        );
        assert!(catalogue.backups.iter().all(|backup| backup.usable));
        assert!(catalogue.gaps.is_empty(), "{:?}", catalogue.gaps);
        assert!(catalogue.skipped_backups.is_empty());
        assert!(catalogue.ignored_objects.is_empty());
        assert!(catalogue.warnings.is_empty(), "{:?}", catalogue.warnings);

        let last = catalogue.last_wal.unwrap();
        assert_eq!(last.segment, segment(1, 10));
        assert_eq!(last.estimated_time, time("2026-12-04T10:10:00Z"));
        assert_eq!(
            catalogue.window,
            Some(RecoverableWindow {
                after: time("2026-12-04T10:02:30Z"),
                until: time("2026-12-04T10:10:00Z"),
            })
        );
        assert_eq!(catalogue.recoverable_ranges.len(), 1);
        let range = &catalogue.recoverable_ranges[0];
        assert_eq!(range.after, time("2026-12-04T10:02:30Z"));
        assert_eq!(range.until, time("2026-12-04T10:10:00Z"));
        assert_eq!(
            range.backups,
            vec![id("20261204T100200"), id("20261204T100530")]
        );
        assert_eq!(range.end, RunEnd::EndOfArchive);

        // (target, selected backup)
        let cases = [
            ("2026-12-04T10:04:00Z", "20261204T100200"),
            ("2026-12-04T10:02:30.000001Z", "20261204T100200"),
            ("2026-12-04T10:07:00Z", "20261204T100530"),
            ("2026-12-04T10:10:00Z", "20261204T100530"),
        ];
        for (target, expected) in cases {
            let plan = catalogue
                .select_base_backup(time(target), now(), false)
                .unwrap();
            assert_eq!(plan.backup.id.as_str(), expected, "target {target}");
            assert_eq!(plan.wal_first, plan.backup.begin_wal, "target {target}");
            assert_eq!(plan.wal_last, segment(1, 10), "target {target}");
            assert_eq!(plan.timeline, 1, "target {target}");
            assert!(!plan.stops_at_end_of_archive, "target {target}");
        }
    }

    #[test]
    fn select_target_equal_to_backup_end() {
        let catalogue = Catalogue::build("pg-main", two_backups(), contiguous_wal());

        let plan = catalogue
            .select_base_backup(time("2026-12-04T10:05:40Z"), now(), false)
            .unwrap();
        assert_eq!(
            plan.backup.id.as_str(),
            "20261204T100200",
            "b2 ends exactly at the target"
        );

        let error = catalogue
            .select_base_backup(time("2026-12-04T10:02:30Z"), now(), false)
            .unwrap_err();
        assert_eq!(
            error,
            PlanError::TargetBeforeFirstBackup {
                target: time("2026-12-04T10:02:30Z"),
                backup: id("20261204T100200"),
                end_time: time("2026-12-04T10:02:30Z"),
            }
        );
    }

    #[test]
    fn select_target_before_first_backup() {
        let catalogue = Catalogue::build("pg-main", two_backups(), contiguous_wal());
        let error = catalogue
            .select_base_backup(time("2026-12-04T10:01:00Z"), now(), false)
            .unwrap_err();
        assert!(
            matches!(error, PlanError::TargetBeforeFirstBackup { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        for fragment in [
            "target time 2026-12-04T10:01:00Z",
            "20261204T100200",
            "ended at 2026-12-04T10:02:30Z",
            "choose a target later than 2026-12-04T10:02:30Z",
        ] {
            assert!(
                message.contains(fragment),
                "{message} should contain {fragment:?}"
            );
        }
    }

    #[test]
    fn select_target_in_future() {
        let catalogue = Catalogue::build("pg-main", two_backups(), contiguous_wal());
        let error = catalogue
            .select_base_backup(time("2026-12-04T11:00:00.5Z"), now(), true)
            .unwrap_err();
        assert_eq!(
            error,
            PlanError::TargetInFuture {
                target: time("2026-12-04T11:00:00.5Z"),
                now: now(),
            }
        );
        let message = error.to_string();
        assert!(message.contains("2026-12-04T11:00:00.500Z"), "{message}");
        assert!(
            message.contains("current time 2026-12-04T11:00:00Z"),
            "{message}"
        );
    }

    #[test]
    fn select_target_after_last_wal() {
        let catalogue = Catalogue::build("pg-main", two_backups(), contiguous_wal());
        let target = time("2026-12-04T10:15:00Z");

        let error = catalogue
            .select_base_backup(target, now(), false)
            .unwrap_err();
        assert_eq!(
            error,
            PlanError::TargetAfterArchiveEnd {
                target,
                backup: id("20261204T100530"),
                last_segment: segment(1, 10),
                reachable_until: time("2026-12-04T10:10:00Z"),
            }
        );
        let message = error.to_string();
        for fragment in [
            "target time 2026-12-04T10:15:00Z",
            "00000001000000000000000A",
            "2026-12-04T10:10:00Z",
            "allow recovery to stop at the end of the archive",
        ] {
            assert!(
                message.contains(fragment),
                "{message} should contain {fragment:?}"
            );
        }

        let plan = catalogue.select_base_backup(target, now(), true).unwrap();
        assert_eq!(plan.backup.id.as_str(), "20261204T100530");
        assert!(plan.stops_at_end_of_archive);
        assert_eq!(plan.wal_first, segment(1, 6));
        assert_eq!(plan.wal_last, segment(1, 10));
        assert_eq!(plan.wal_last_estimated_time, time("2026-12-04T10:10:00Z"));
    }

    #[test]
    fn deleted_segment_makes_gap() {
        // Segments 3..=12 without 7; b1 starts in 3, b2 in 9.
        let wal: Vec<WalObject> = (3..=12)
            .filter(|number| *number != 7)
            .map(|number| wal_object(1, number, "", &format!("2026-12-04T10:{number:02}:00Z")))
            .collect();
        let backups = vec![
            done_backup(
                "b1",
                1,
                3,
                3,
                "2026-12-04 10:02:00+00:00",
                "2026-12-04 10:02:30+00:00",
            ),
            done_backup(
                "b2",
                1,
                9,
                9,
                "2026-12-04 10:08:10+00:00",
                "2026-12-04 10:08:40+00:00",
            ),
        ];
        let catalogue = Catalogue::build("pg-main", backups, wal);

        assert_eq!(
            catalogue.gaps,
            vec![WalGap {
                timeline: 1,
                first_missing: segment(1, 7),
                last_missing: segment(1, 7),
                missing_count: 1,
                previous_archived: Some(segment(1, 6)),
                next_archived: segment(1, 8),
            }]
        );
        let ranges: Vec<(DateTime<Utc>, DateTime<Utc>, WalSegment)> = catalogue
            .recoverable_ranges
            .iter()
            .map(|range| (range.after, range.until, range.last_segment))
            .collect();
        assert_eq!(
            ranges,
            vec![
                (
                    time("2026-12-04T10:02:30Z"),
                    time("2026-12-04T10:06:00Z"),
                    segment(1, 6)
                ),
                (
                    time("2026-12-04T10:08:40Z"),
                    time("2026-12-04T10:12:00Z"),
                    segment(1, 12)
                ),
            ]
        );
        assert_eq!(
            catalogue.recoverable_ranges[0].end,
            RunEnd::Gap {
                missing: segment(1, 7),
                next_archived: segment(1, 8),
            }
        );

        let plan = catalogue
            .select_base_backup(time("2026-12-04T10:05:00Z"), now(), false)
            .unwrap();
        assert_eq!(plan.backup.id.as_str(), "b1");
        assert_eq!(plan.wal_last, segment(1, 6));

        let plan = catalogue
            .select_base_backup(time("2026-12-04T10:09:00Z"), now(), false)
            .unwrap();
        assert_eq!(plan.backup.id.as_str(), "b2");

        let target = time("2026-12-04T10:07:00Z");
        let error = catalogue
            .select_base_backup(target, now(), true)
            .unwrap_err();
        assert_eq!(
            error,
            PlanError::TargetBeyondGap {
                target,
                backup: id("b1"),
                last_segment: segment(1, 6),
                reachable_until: time("2026-12-04T10:06:00Z"),
                missing: segment(1, 7),
                next_backup: Some((id("b2"), time("2026-12-04T10:08:40Z"))),
            }
        );
        let message = error.to_string();
        for fragment in [
            "target time 2026-12-04T10:07:00Z",
            "base backup b1",
            "WAL segment 000000010000000000000007 is missing",
            "at or before 2026-12-04T10:06:00Z",
            "after 2026-12-04T10:08:40Z when base backup b2 ended",
        ] {
            assert!(
                message.contains(fragment),
                "{message} should contain {fragment:?}"
            );
        }
    }

    #[test]
    fn missing_begin_wal_makes_backup_unusable() {
        // The archive starts at segment 5 but the only backup begins in segment 3.
        let wal: Vec<WalObject> = (5..=8)
            .map(|number| wal_object(1, number, ".zst", &format!("2026-12-04T10:{number:02}:00Z")))
            .collect();
        let backups = vec![done_backup(
            "b1",
            1,
            3,
            3,
            "2026-12-04 10:02:00+00:00",
            "2026-12-04 10:02:30+00:00",
        )];
        let catalogue = Catalogue::build("pg-main", backups, wal);

        assert!(!catalogue.backups[0].usable);
        assert_eq!(catalogue.backups[0].wal.last, None);
        assert!(catalogue.recoverable_ranges.is_empty());
        assert_eq!(catalogue.window, None);
        assert_eq!(catalogue.gaps.len(), 1);
        assert_eq!(catalogue.gaps[0].first_missing, segment(1, 3));
        assert_eq!(catalogue.gaps[0].last_missing, segment(1, 4));
        assert_eq!(catalogue.gaps[0].previous_archived, None);

        let error = catalogue
            .select_base_backup(time("2026-12-04T10:06:00Z"), now(), false)
            .unwrap_err();
        assert_eq!(
            error,
            PlanError::NoUsableBackup {
                target: time("2026-12-04T10:06:00Z"),
                backup: id("b1"),
                missing: Some(segment(1, 3)),
            }
        );
        assert!(
            error
                .to_string()
                .contains("needs WAL segment 000000010000000000000003"),
            "{error}"
        );
    }

    #[test]
    fn select_without_backups() {
        let catalogue = Catalogue::build("pg-main", Vec::new(), contiguous_wal());
        let error = catalogue
            .select_base_backup(time("2026-12-04T10:06:00Z"), now(), false)
            .unwrap_err();
        assert!(matches!(error, PlanError::NoBackups { .. }), "{error:?}");
        assert!(error.to_string().contains("\"pg-main\""), "{error}");
        assert_eq!(catalogue.window, None);
    }

    #[test]
    fn compressed_wal_names_are_contiguous() {
        let extensions = ["", ".gz", ".bz2", ".xz", ".snappy", ".zst", ".lz4", ".gz"];
        let mut wal: Vec<WalObject> = (3..=10)
            .zip(extensions)
            .map(|(number, extension)| {
                wal_object(
                    1,
                    number,
                    extension,
                    &format!("2026-12-04T10:{number:02}:00Z"),
                )
            })
            .collect();
        // Other barman-cloud objects that are not full segments.
        wal.push(WalObject {
            key:
                "s3prefix/pg-main/wals/0000000100000000/000000010000000000000003.00000028.backup.gz"
                    .to_string(),
            size: 300,
            last_modified: time("2026-12-04T10:03:00Z"),
        });
        wal.push(WalObject {
            key: "s3prefix/pg-main/wals/0000000100000000/notes.txt".to_string(),
            size: 5,
            last_modified: time("2026-12-04T10:03:00Z"),
        });
        // The same segment again without compression: not a gap, and not counted twice.
        wal.push(wal_object(1, 4, "", "2026-12-04T10:30:00Z"));

        let catalogue = Catalogue::build("pg-main", two_backups(), wal);
        assert!(catalogue.gaps.is_empty(), "{:?}", catalogue.gaps);
        assert_eq!(catalogue.timelines.len(), 1);
        assert_eq!(catalogue.timelines[0].segment_count, 8);
        assert_eq!(catalogue.timelines[0].backup_history_files, 1);
        assert_eq!(catalogue.ignored_objects.len(), 1);
        assert!(catalogue.ignored_objects[0].key.ends_with("notes.txt"));
        assert_eq!(
            catalogue.estimated_time(segment(1, 4)),
            Some(time("2026-12-04T10:04:00Z"))
        );
        assert_eq!(catalogue.warnings.len(), 1, "{:?}", catalogue.warnings);
        assert!(catalogue.warnings[0].contains("000000010000000000000004"));
        let plan = catalogue
            .select_base_backup(time("2026-12-04T10:09:00Z"), now(), false)
            .unwrap();
        assert_eq!(plan.wal_last, segment(1, 10));
    }

    /// Timeline 1 archived segments 3 and 4 and the partial segment 5; timeline 2 branched at
    /// 0/50000B0 and archived segments 5 to 8. Backup b1 was taken on timeline 1 in segment 3.
    fn promoted_timeline(
        include_segment_five: bool,
    ) -> (Vec<(BackupId, BackupInfo)>, Vec<WalObject>) {
        let mut wal = vec![
            wal_object(1, 3, ".gz", "2026-12-04T10:03:00Z"),
            wal_object(1, 4, ".gz", "2026-12-04T10:04:00Z"),
            wal_object(1, 5, ".partial.gz", "2026-12-04T10:05:10Z"),
            WalObject {
                key: "s3prefix/pg-main/wals/00000002.history.gz".to_string(),
                size: 60,
                last_modified: time("2026-12-04T10:05:05Z"),
            },
        ];
        for number in 5..=8 {
            if number == 5 && !include_segment_five {
                continue;
            }
            wal.push(wal_object(
                2,
                number,
                ".gz",
                &format!("2026-12-04T10:{number:02}:30Z"),
            ));
        }
        let backups = vec![done_backup(
            "b1",
            1,
            3,
            3,
            "2026-12-04 10:02:00+00:00",
            "2026-12-04 10:02:30+00:00",
        )];
        (backups, wal)
    }

    fn timeline_two_history() -> TimelineHistory {
        TimelineHistory::parse(2, "1\t0/50000B0\tbefore 2026-12-04 10:05:00.356005+00\n\n").unwrap()
    }

    #[test]
    fn timeline_switch_is_not_a_gap() {
        let (backups, wal) = promoted_timeline(true);
        for catalogue in [
            Catalogue::build("pg-main", backups.clone(), wal.clone()),
            Catalogue::build_with_history(
                "pg-main",
                backups.clone(),
                wal.clone(),
                vec![timeline_two_history()],
            ),
        ] {
            assert!(catalogue.gaps.is_empty(), "{:?}", catalogue.gaps);
            assert_eq!(catalogue.timelines.len(), 2);
            assert_eq!(catalogue.timelines[0].partial_segments, vec![segment(1, 5)]);
            assert!(catalogue.timelines[1].history_file_archived);
            assert_eq!(catalogue.last_wal.unwrap().segment, segment(2, 8));
        }
    }

    #[test]
    fn timeline_without_history_stops_at_switch() {
        let (backups, wal) = promoted_timeline(true);
        let catalogue = Catalogue::build("pg-main", backups, wal);
        assert_eq!(
            catalogue.backups[0].wal.end,
            RunEnd::EndOfTimeline { later_timeline: 2 }
        );
        assert_eq!(catalogue.warnings.len(), 1, "{:?}", catalogue.warnings);
        assert!(catalogue.warnings[0].contains("timeline 2"));

        let plan = catalogue
            .select_base_backup(time("2026-12-04T10:03:30Z"), now(), false)
            .unwrap();
        assert_eq!(plan.wal_last, segment(1, 4));
        assert_eq!(plan.timeline, 1);

        let target = time("2026-12-04T10:07:00Z");
        let error = catalogue
            .select_base_backup(target, now(), true)
            .unwrap_err();
        assert_eq!(
            error,
            PlanError::TargetBeyondTimeline {
                target,
                backup: id("b1"),
                last_segment: segment(1, 4),
                reachable_until: time("2026-12-04T10:04:00Z"),
                later_timeline: 2,
                history_supplied: false,
            }
        );
        assert!(
            error
                .to_string()
                .contains("supply the history file of timeline 2"),
            "{error}"
        );
    }

    #[test]
    fn timeline_history_is_followed() {
        let (backups, wal) = promoted_timeline(true);
        let catalogue =
            Catalogue::build_with_history("pg-main", backups, wal, vec![timeline_two_history()]);
        assert!(catalogue.warnings.is_empty(), "{:?}", catalogue.warnings);
        let backup = &catalogue.backups[0];
        assert!(backup.usable);
        assert_eq!(
            backup.wal.timeline_path,
            vec![
                TimelineStep {
                    timeline: 1,
                    first_segment: segment(1, 3),
                },
                TimelineStep {
                    timeline: 2,
                    first_segment: segment(2, 5),
                },
            ]
        );
        assert_eq!(backup.wal.end, RunEnd::EndOfArchive);

        let plan = catalogue
            .select_base_backup(time("2026-12-04T10:07:00Z"), now(), false)
            .unwrap();
        assert_eq!(plan.backup.id.as_str(), "b1");
        assert_eq!(plan.wal_first, segment(1, 3));
        assert_eq!(plan.wal_last, segment(2, 8));
        assert_eq!(plan.timeline, 2);
        assert_eq!(plan.wal_last_estimated_time, time("2026-12-04T10:08:30Z"));
    }

    #[test]
    fn backup_after_branch_not_followed() {
        // The old primary went on writing timeline 1 after timeline 2 branched at 0/50000B0,
        // and a backup was taken there.
        let (_, mut wal) = promoted_timeline(true);
        wal.push(wal_object(1, 6, ".gz", "2026-12-04T10:06:00Z"));
        wal.push(wal_object(1, 7, ".gz", "2026-12-04T10:07:00Z"));
        let backups = vec![done_backup(
            "old-primary",
            1,
            6,
            6,
            "2026-12-04 10:05:50+00:00",
            "2026-12-04 10:05:55+00:00",
        )];
        let catalogue =
            Catalogue::build_with_history("pg-main", backups, wal, vec![timeline_two_history()]);
        let backup = &catalogue.backups[0];
        assert_eq!(backup.wal.timeline_path.len(), 1);
        assert_eq!(backup.wal.end, RunEnd::EndOfTimeline { later_timeline: 2 });

        let error = catalogue
            .select_base_backup(time("2026-12-04T10:08:00Z"), now(), false)
            .unwrap_err();
        assert!(
            matches!(
                error,
                PlanError::TargetBeyondTimeline {
                    history_supplied: true,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("ended after timeline 2 branched off"),
            "{error}"
        );
    }

    #[test]
    fn timeline_missing_first_segment_is_gap() {
        let (backups, wal) = promoted_timeline(false);
        let catalogue =
            Catalogue::build_with_history("pg-main", backups, wal, vec![timeline_two_history()]);
        assert_eq!(
            catalogue.gaps,
            vec![WalGap {
                timeline: 2,
                first_missing: segment(2, 5),
                last_missing: segment(2, 5),
                missing_count: 1,
                previous_archived: None,
                next_archived: segment(2, 6),
            }]
        );
        let error = catalogue
            .select_base_backup(time("2026-12-04T10:07:00Z"), now(), false)
            .unwrap_err();
        assert!(
            matches!(error, PlanError::TargetBeyondGap { missing, .. } if missing == segment(2, 5)),
            "{error:?}"
        );
    }

    #[test]
    fn skipped_backups_are_listed() {
        let failed = BackupInfo::parse(&id("failed"), FAILED_BACKUP_INFO).unwrap();
        let mut incomplete = two_backups().remove(0).1;
        incomplete.end_wal = None;
        let mut backups = two_backups();
        backups.push((id("failed"), failed));
        backups.push((id("incomplete"), incomplete));

        let catalogue = Catalogue::build("pg-main", backups, contiguous_wal());
        assert_eq!(catalogue.backups.len(), 2);
        let skipped: Vec<(&str, &str)> = catalogue
            .skipped_backups
            .iter()
            .map(|skipped| (skipped.id.as_str(), skipped.status.as_str()))
            .collect();
        assert_eq!(skipped, [("failed", "FAILED"), ("incomplete", "DONE")]);
        assert!(catalogue.skipped_backups[0]
            .reason
            .contains("connection reset by peer"));
        assert!(catalogue.skipped_backups[1].reason.contains("no end_wal"));
    }

    #[test]
    fn json_output() {
        let catalogue = Catalogue::build("pg-main", two_backups(), contiguous_wal());
        let json = serde_json::to_value(&catalogue).unwrap();
        assert_eq!(json["last_wal_time_source"], "object last-modified");
        assert_eq!(json["server"], "pg-main");
        assert_eq!(json["backups"][0]["id"], "20261204T100200");
        assert_eq!(json["backups"][0]["begin_wal"], "000000010000000000000003");
        assert_eq!(json["backups"][0]["systemid"], "7715541354393170512");
        assert_eq!(json["backups"][0]["wal"]["end"]["reason"], "end_of_archive");
        assert_eq!(json["last_wal"]["segment"], "00000001000000000000000A");
        assert_eq!(json["window"]["until"], "2026-12-04T10:10:00Z");

        let plan = catalogue
            .select_base_backup(time("2026-12-04T10:07:00Z"), now(), false)
            .unwrap();
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["backup"]["id"], "20261204T100530");
        assert_eq!(json["wal_first"], "000000010000000000000006");
        assert_eq!(json["wal_last"], "00000001000000000000000A");
        assert_eq!(json["last_wal_time_source"], "object last-modified");
        assert_eq!(json["stops_at_end_of_archive"], false);
    }
}
