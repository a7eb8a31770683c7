//! Verification reports: what a `visage-dr verify` run restored, each check with its result,
//! the measured RTO and the achieved RPO.
//!
//! A report is stored three times in the repository, under `reports/<report id>/`:
//! `report.json` (the versioned schema below, [`REPORT_VERSION`]), `report.md` for a chat
//! message or an issue, and `report.html`, a self-contained page with an inline SVG chart of
//! the past runs. `docs/design.md` lists the layout and `docs/verification.md` the fields.

mod html;
mod markdown;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::id::{ReportId, SnapshotId};
use crate::repository::{RepoError, RepoUrl, Repository};

pub use html::render_html;
pub use markdown::render_markdown;

/// Value of the `schema` field, so that a reader can tell a report from other JSON.
pub const REPORT_SCHEMA: &str = "visage-dr/verification-report";

/// Version of the report format written by this code. A reader rejects a newer version.
pub const REPORT_VERSION: u32 = 1;

/// Key prefix of the stored reports.
pub const REPORTS_PREFIX: &str = "reports/";

/// Past reports drawn in the chart of a new report, the new one included. Twelve weekly runs
/// cover a quarter.
pub const CHART_RUNS: usize = 12;

/// The three files of a report, in the order they are written.
pub const REPORT_FILES: [&str; 3] = ["report.json", "report.md", "report.html"];

/// Errors of storing and reading reports.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("report {key} is not a verification report: {reason}")]
    Invalid { key: String, reason: String },
    #[error("report {key} has format version {version}, which this visage-dr does not know; upgrade visage-dr to read it")]
    UnknownVersion { key: String, version: u32 },
    #[error("cannot write {path}: {error}")]
    Write { path: PathBuf, error: std::io::Error },
}

/// Result of a check, of a component and of a whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Method that chose the target time of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetChoice {
    /// A random instant inside the recoverable window.
    Random,
    /// The newest recoverable state: recovery to the end of the archive, and the target is the
    /// instant recovery ended.
    Latest,
    /// Given with `--target-time`.
    Given,
}

/// The instants that every component of the policy could be restored to when the run started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub after: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

/// One check of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Unique within the run, such as `restore app` or `bucket uploads`.
    pub name: String,
    pub result: Outcome,
    pub seconds: f64,
    /// Findings, and for a failure the problem and the next step.
    pub details: String,
    /// The component the check is about, such as `postgres:app`, `bucket:uploads` or
    /// `checkpoints:lora-alice`.
    #[serde(default)]
    pub component: Option<String>,
}

/// The restore of one database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatabaseReport {
    pub name: String,
    pub driver: String,
    /// The barman backup id of the chosen base backup.
    pub backup_id: Option<String>,
    pub backup_end_time: Option<DateTime<Utc>>,
    /// First and last archived WAL segment that recovery may replay.
    pub wal_first: Option<String>,
    pub wal_last: Option<String>,
    pub timeline: Option<u32>,
    /// Whether recovery replays the whole archive instead of stopping at the target.
    pub to_end_of_archive: bool,
    /// Seconds from the start of the run until the scratch instance accepted connections.
    pub ready_seconds: Option<f64>,
    /// Commit time of the last transaction that recovery replayed
    /// (`pg_last_xact_replay_timestamp()`).
    pub newest_change: Option<DateTime<Utc>>,
    /// Loopback port and postmaster PID of the scratch instance.
    pub port: Option<u16>,
    pub pid: Option<u32>,
    /// Whether the check connection used TLS; `None` when no TCP connection was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
}

/// The bucket snapshot chosen for the target time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketReport {
    pub name: String,
    pub source: String,
    pub snapshot: Option<SnapshotId>,
    pub snapshot_time: Option<DateTime<Utc>>,
    /// Seconds from the snapshot's completion to the target time.
    pub skew_seconds: Option<f64>,
    pub objects: u64,
    /// Objects restored and hashed.
    pub sampled: u64,
}

/// The checkpoint chosen for the target time, per job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointReport {
    pub job: String,
    pub step: String,
    pub snapshot: SnapshotId,
    pub time: DateTime<Utc>,
    /// Seconds from the push to the target time.
    pub skew_seconds: f64,
    pub size: u64,
}

/// The outcome of one component, which the verification metrics are computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentReport {
    /// `postgres:<name>`, `bucket:<name>` or `checkpoints:<job>`.
    pub component: String,
    pub result: Outcome,
    /// The instant the component was shown to be restorable to: the target time for a
    /// database, the snapshot's completion for a bucket, the push for a checkpoint.
    pub restorable_time: Option<DateTime<Utc>>,
}

/// Scratch resources of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScratchReport {
    pub path: PathBuf,
    /// Whether they were left in place (`--keep`).
    pub kept: bool,
    /// When a later run may remove them.
    pub expires: DateTime<Utc>,
}

/// A verification report, as stored in `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`REPORT_SCHEMA`].
    pub schema: String,
    pub version: u32,
    pub id: ReportId,
    /// The repository the backups were read from.
    pub repository: String,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub target_time: DateTime<Utc>,
    pub target_choice: TargetChoice,
    pub window: Option<Window>,
    pub result: Outcome,
    /// One sentence that names every failed check, or `None` for a pass.
    pub failure: Option<String>,
    /// Seconds from the start of the run until every scratch database accepted connections.
    pub rto_seconds: Option<f64>,
    /// Seconds from the start of the run until every check was done.
    pub rto_checks_seconds: f64,
    /// Seconds from the newest change that the restore contains to the target time.
    pub rpo_seconds: Option<f64>,
    pub newest_change: Option<DateTime<Utc>>,
    pub databases: Vec<DatabaseReport>,
    pub buckets: Vec<BucketReport>,
    pub checkpoints: Vec<CheckpointReport>,
    pub checks: Vec<CheckReport>,
    pub components: Vec<ComponentReport>,
    pub scratch: ScratchReport,
}

impl Report {
    /// Returns the checks that failed.
    pub fn failed_checks(&self) -> impl Iterator<Item = &CheckReport> {
        self.checks.iter().filter(|c| c.result == Outcome::Fail)
    }

    /// Parses a stored `report.json`; `key` names it in errors.
    pub fn from_json(key: &str, data: &[u8]) -> Result<Report, ReportError> {
        let value: serde_json::Value = serde_json::from_slice(data)
            .map_err(|e| ReportError::Invalid { key: key.to_owned(), reason: e.to_string() })?;
        if value.get("schema").and_then(|s| s.as_str()) != Some(REPORT_SCHEMA) {
            return Err(ReportError::Invalid { key: key.to_owned(), reason: format!("its schema is not {REPORT_SCHEMA:?}") });
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if version != REPORT_VERSION {
            return Err(ReportError::UnknownVersion { key: key.to_owned(), version });
        }
        serde_json::from_value(value).map_err(|e| ReportError::Invalid { key: key.to_owned(), reason: e.to_string() })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serialises")
    }
}

/// Key of one file of a stored report.
pub fn report_key(id: &ReportId, file: &str) -> String {
    format!("{REPORTS_PREFIX}{id}/{file}")
}

/// Returns where the file `key` of a repository is, as a path or URL a person can open.
pub fn repository_location(url: &RepoUrl, key: &str) -> String {
    match url {
        RepoUrl::Local(root) => root.join(key).display().to_string(),
        RepoUrl::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}/{key}"),
        RepoUrl::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}/{key}"),
    }
}

/// Renders the three files of `report`. `history` contains earlier reports, oldest first, for
/// the chart.
pub fn render(report: &Report, history: &[Report]) -> [(&'static str, String); 3] {
    [
        (REPORT_FILES[0], report.to_json()),
        (REPORT_FILES[1], render_markdown(report, history)),
        (REPORT_FILES[2], render_html(report, history)),
    ]
}

/// Stores the rendered files in the repository, JSON last so that a listing never finds a
/// report whose other files are missing. Returns their locations.
pub async fn store(repo: &Repository, report: &Report, files: &[(&'static str, String)]) -> Result<Vec<String>, ReportError> {
    let mut ordered: Vec<&(&'static str, String)> = files.iter().filter(|(name, _)| *name != REPORT_FILES[0]).collect();
    ordered.extend(files.iter().filter(|(name, _)| *name == REPORT_FILES[0]));
    let mut locations = Vec::new();
    for (name, text) in ordered {
        let key = report_key(&report.id, name);
        repo.backend().put(&key, Bytes::from(text.clone())).await.map_err(RepoError::from)?;
        locations.push(repository_location(repo.url(), &key));
    }
    info!(report.id = %report.id, "verification report stored");
    Ok(locations)
}

/// Writes the rendered files into `dir`, creating it. Returns their paths.
pub fn write_dir(dir: &Path, files: &[(&'static str, String)]) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(dir).map_err(|error| ReportError::Write { path: dir.to_owned(), error })?;
    let mut paths = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|error| ReportError::Write { path: path.clone(), error })?;
        paths.push(path);
    }
    Ok(paths)
}

/// Ids of the stored reports, oldest first.
pub async fn list_ids(repo: &Repository) -> Result<Vec<ReportId>, ReportError> {
    let mut ids = Vec::new();
    for object in repo.backend().list(REPORTS_PREFIX).await.map_err(RepoError::from)? {
        let Some(rest) = object.key.strip_prefix(REPORTS_PREFIX) else { continue };
        let Some(id) = rest.strip_suffix(&format!("/{}", REPORT_FILES[0])) else { continue };
        match id.parse::<ReportId>() {
            Ok(id) => ids.push(id),
            Err(e) => warn!(s3.key = %object.key, error = %e, "ignoring an object in reports/ that is not a report"),
        }
    }
    ids.sort();
    Ok(ids)
}

/// Loads the newest `count` reports, oldest first. A report that cannot be read is skipped
/// with a warning, so that one damaged file does not hide the others.
pub async fn load_recent(repo: &Repository, count: usize) -> Result<Vec<Report>, ReportError> {
    let ids = list_ids(repo).await?;
    let start = ids.len().saturating_sub(count);
    let mut reports = Vec::new();
    for id in &ids[start..] {
        let key = report_key(id, REPORT_FILES[0]);
        let loaded = match repo.backend().get(&key).await {
            Ok(data) => Report::from_json(&key, &data),
            Err(e) => Err(ReportError::Repo(e.into())),
        };
        match loaded {
            Ok(report) => reports.push(report),
            Err(e) => warn!(s3.key = %key, error = %e, "ignoring an unreadable report"),
        }
    }
    Ok(reports)
}

/// Formats a time for reports: RFC 3339 in UTC to the millisecond.
pub fn time_text(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Formats a duration in seconds for people: `0.42 s`, `12.3 s`, `4 min 05 s`, `2 h 03 min`,
/// `3 d 04 h`.
pub fn duration_text(seconds: f64) -> String {
    let sign = if seconds < 0.0 { "-" } else { "" };
    let s = seconds.abs();
    let whole = s.round() as u64;
    let text = if s < 10.0 {
        format!("{s:.2} s")
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else if whole < 3600 {
        format!("{} min {:02} s", whole / 60, whole % 60)
    } else if whole < 86_400 {
        format!("{} h {:02} min", whole / 3600, whole % 3600 / 60)
    } else {
        format!("{} d {:02} h", whole / 86_400, whole % 86_400 / 3600)
    };
    format!("{sign}{text}")
}

/// Formats a byte count with a binary unit: `512 B`, `1.5 MiB`.
pub fn size_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Text of an optional duration, `-` when it is unknown.
pub(crate) fn optional_duration(seconds: Option<f64>) -> String {
    seconds.map(duration_text).unwrap_or_else(|| "-".to_owned())
}

/// Lists the facts every rendering shows at the top, as `(label, value)` rows.
pub(crate) fn summary_rows(report: &Report) -> Vec<(&'static str, String)> {
    let choice = match report.target_choice {
        TargetChoice::Random => "random instant in the recoverable window",
        TargetChoice::Latest => "latest: recovery to the end of the archive",
        TargetChoice::Given => "given with --target-time",
    };
    let mut rows = vec![
        ("Result", report.result.as_str().to_uppercase()),
        ("Target time", format!("{} ({choice})", time_text(report.target_time))),
    ];

    if let Some(window) = &report.window {
        rows.push(("Recoverable window", format!("{} to {}", time_text(window.after), time_text(window.until))));
    }
    rows.push(("RTO, start to ready", optional_duration(report.rto_seconds)));
    rows.push(("RTO, start to all checks done", duration_text(report.rto_checks_seconds)));
    let rpo = match (report.rpo_seconds, report.newest_change) {
        (Some(rpo), Some(newest)) => format!("{} (newest restored change {})", duration_text(rpo), time_text(newest)),
        _ if report.databases.is_empty() => "-".to_owned(),
        // PostgreSQL reports no replay time when recovery replayed no
        // transaction after the base backup.
        _ => "- (no transaction was replayed after the base backup)".to_owned(),
    };
    rows.push(("RPO achieved", rpo));

    rows.push(("Started", time_text(report.started)));
    rows.push(("Report id", report.id.to_string()));
    rows.push(("Repository", report.repository.clone()));
    let scratch = if report.scratch.kept {
        format!("{} (kept until {})", report.scratch.path.display(), time_text(report.scratch.expires))
    } else {
        format!("{} (removed)", report.scratch.path.display())
    };
    rows.push(("Scratch", scratch));

    if let Some(failure) = &report.failure {
        rows.push(("Failure", failure.clone()));
    }
    rows
}

/// Rows of the database table: name, base backup, WAL range, ready time, newest change.
pub(crate) fn database_rows(report: &Report) -> Vec<[String; 6]> {
    report
        .databases
        .iter()
        .map(|d| {
            let backup = match (&d.backup_id, d.backup_end_time) {
                (Some(id), Some(end)) => format!("{id} (ended {})", time_text(end)),
                (Some(id), None) => id.clone(),
                _ => "-".to_owned(),
            };
            let mut wal = match (&d.wal_first, &d.wal_last) {
                (Some(first), Some(last)) => format!("{first} to {last}"),
                _ => "-".to_owned(),
            };
            if let Some(timeline) = d.timeline {
                wal.push_str(&format!(" on timeline {timeline}"));
            }
            if d.to_end_of_archive {
                wal.push_str(", to the end of the archive");
            }
            let newest = d.newest_change.map(time_text).unwrap_or_else(|| "-".to_owned());
            let connection = match d.tls {
                Some(true) => "TLS",
                Some(false) => "plain",
                None => "-",
            };
            [d.name.clone(), backup, wal, optional_duration(d.ready_seconds), newest, connection.to_owned()]
        })
        .collect()
}

/// Rows of the snapshot table: component, snapshot id, its time, skew from the target.
pub(crate) fn snapshot_rows(report: &Report) -> Vec<[String; 4]> {
    let mut rows: Vec<[String; 4]> = report
        .buckets
        .iter()
        .map(|b| {
            let sample = format!("bucket {} ({} of {} objects restored)", b.name, b.sampled, b.objects);
            [
                sample,
                b.snapshot.as_ref().map(|s| s.to_string()).unwrap_or_else(|| "none".to_owned()),
                b.snapshot_time.map(time_text).unwrap_or_else(|| "-".to_owned()),
                optional_duration(b.skew_seconds),
            ]
        })
        .collect();
    rows.extend(report.checkpoints.iter().map(|c| {
        [
            format!("checkpoint {} step {}", c.job, c.step),
            c.snapshot.to_string(),
            time_text(c.time),
            duration_text(c.skew_seconds),
        ]
    }));
    rows
}

#[cfg(test)]
pub(crate) mod tests;
