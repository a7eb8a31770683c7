//! Policy files: what to back up, when, and how long to keep it.
//!
//! A policy is one YAML file, usually under `policies/`. [`Policy::load`] and [`Policy::parse`]
//! read it strictly: an unknown field, a wrong type or an impossible value is an error that
//! names the file, line and column, with a suggestion for a misspelt field. `docs/policies.md`
//! describes every field.
//!
//! Each thing that is backed up has a *source identity*, the name its snapshots are filed under:
//!
//! | Source | Identity |
//! |---|---|
//! | bucket | `s3:<bucket>` |
//! | database, `driver: cnpg` | `cnpg:<namespace>/<cluster>` |
//! | database, `driver: local` | `postgres:<name>` |
//! | worker checkpoints of job `<job>` | `checkpoints:<job>` |
//!
//! Policy files never contain credentials. Fields that would hold one are rejected, and S3 and
//! PostgreSQL credentials come from the environment or from the `*_file` fields.

mod diagnostics;
mod document;
mod simulate;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::postgres::config::{DatabaseSpec, Driver};
use crate::retention::RetentionRules;
use crate::schedule::Schedule;
use crate::units::{ByteSize, Duration};

pub use diagnostics::{Diagnostic, PolicyError};
pub use simulate::{
    parse_snapshot_list, simulate, Action, SimulateError, SimulatedSnapshot, SnapshotEntry,
    SnapshotListError,
};

/// Name used in diagnostics for the embedded copy of `policies/local.yaml`.
pub const LOCAL_POLICY_NAME: &str = "<embedded local.yaml>";

/// The text of `policies/local.yaml`, compiled in as the default policy for a machine without
/// Kubernetes.
pub const LOCAL_POLICY_YAML: &str = include_str!("../../policies/local.yaml");

/// Prefix of checkpoint source identities. Every `checkpoints:<job>` shares one retention.
pub const CHECKPOINTS_PREFIX: &str = "checkpoints:";

/// The identity that [`Policy::sources`] lists for all checkpoint jobs.
pub const CHECKPOINTS_PATTERN: &str = "checkpoints:*";

/// Default of `prune.gc_grace`.
pub const DEFAULT_GC_GRACE: Duration = Duration {
    years: 0,
    months: 0,
    weeks: 0,
    days: 0,
    hours: 1,
    minutes: 0,
    seconds: 0,
};

/// Default of `verification.sample_objects`.
pub const DEFAULT_SAMPLE_OBJECTS: u32 = 50;

/// A validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub repository: Repository,
    /// Time zone of every schedule and of the retention periods (days, weeks, months, years).
    pub timezone: Tz,
    pub postgres: Vec<Database>,
    pub buckets: Vec<Bucket>,
    /// How to reach the S3 server of the buckets. Unset fields fall back to the AWS environment.
    pub source_s3: Option<S3Options>,
    pub checkpoints: Option<Checkpoints>,
    pub prune: Option<Prune>,
    pub verification: Option<Verification>,
}

/// A policy with the warnings found while checking it.
#[derive(Debug, Clone)]
pub struct ParsedPolicy {
    pub policy: Policy,
    /// Advice that does not make the policy invalid, such as a schedule that fires every minute
    /// of an hour.
    pub warnings: Vec<Diagnostic>,
}

/// The snapshot repository and how to reach it.
#[derive(Debug, Clone, PartialEq)]
pub struct Repository {
    /// `s3://bucket/prefix` or `file:///absolute/path`.
    pub url: String,
    /// How to reach the repository's S3 server. Only allowed with an `s3://` URL.
    pub s3: Option<S3Options>,
}

/// Settings that override the AWS environment for one S3 server: the same
/// type the S3 client takes.
pub use crate::s3::S3Overrides as S3Options;

/// One entry of the `postgres:` list.
#[derive(Debug, Clone, PartialEq)]
pub struct Database {
    pub spec: DatabaseSpec,
    /// `cnpg:<namespace>/<cluster>` or `postgres:<name>`.
    pub source_id: String,
    /// `spec.schedule` parsed in the policy's time zone.
    pub schedule: Option<Schedule>,
}

/// One entry of the `buckets:` list.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// Name used in reports and in `verification.references`.
    pub name: String,
    /// S3 bucket name.
    pub bucket: String,
    /// Only objects whose key starts with this prefix. Empty for the whole bucket.
    pub prefix: String,
    pub schedule: Option<Schedule>,
    pub retention: RetentionRules,
    /// How to reach this bucket's server, already merged over the policy's `source_s3`.
    pub s3: S3Options,
    /// `s3:<bucket>`.
    pub source_id: String,
}

/// Worker checkpoints pushed to visage-dr over HTTP, one source `checkpoints:<job>` per job.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoints {
    /// Rules applied to the checkpoints of each job. Final checkpoints are always kept.
    pub retention: RetentionRules,
    /// Largest checkpoint accepted. Unset means no limit.
    pub max_size: Option<ByteSize>,
    /// When workers are expected to push. visage-dr does not start pushes, so `policy check`
    /// only lists the fire times.
    pub schedule: Option<Schedule>,
}

/// When old snapshots are removed and their data garbage-collected.
#[derive(Debug, Clone, PartialEq)]
pub struct Prune {
    pub schedule: Schedule,
    /// Prune skips a source whose newest successful snapshot is older than this, so that a
    /// source whose backups stopped keeps its last snapshots.
    pub max_snapshot_age: Option<Duration>,
    /// Time a blob stays after its last reference goes, so a backup running during the prune
    /// can still reuse it.
    pub gc_grace: Duration,
}

/// The restore test: restore into scratch space and check the result.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    pub schedule: Schedule,
    /// Kubernetes namespace for scratch CNPG clusters. Required when a database uses
    /// `driver: cnpg`.
    pub scratch_namespace: Option<String>,
    /// Directory for scratch PostgreSQL data and restored objects on a machine without
    /// Kubernetes. Required when a database uses `driver: local`.
    pub scratch_dir: Option<PathBuf>,
    /// Time after which a verification run is stopped and reported as failed.
    pub timeout: std::time::Duration,
    /// Number of objects per bucket that are restored and checked against the SHA-256 of the
    /// manifest; all of them when the snapshot has no more.
    pub sample_objects: u32,
    pub data_boundary: Option<DataBoundary>,
    pub references: Vec<ReferenceCheck>,
    pub schema: Option<SchemaCheck>,
    pub checks: Vec<QueryCheck>,
}

/// A query that returns the time of the newest row of the restored database, which must be at
/// or before the target time of the verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataBoundary {
    /// Name of an entry of the `postgres:` list.
    pub database: String,
    pub query: String,
}

/// A query that returns object keys, each of which must exist in the bucket snapshot chosen for
/// the target time. An optional second column is the size in bytes, which must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceCheck {
    /// Name of an entry of the `postgres:` list.
    pub database: String,
    /// Name of an entry of the `buckets:` list.
    pub bucket: String,
    pub query: String,
}

/// Tables and extensions that must exist in the restored database.
#[derive(Debug, Clone, PartialEq)]
pub struct SchemaCheck {
    /// Name of an entry of the `postgres:` list.
    pub database: String,
    pub tables: Vec<String>,
    pub extensions: Vec<String>,
}

/// A query on the restored database whose single value must meet `expect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryCheck {
    pub name: String,
    /// Name of an entry of the `postgres:` list.
    pub database: String,
    pub query: String,
    pub expect: Expectation,
}

/// Condition on the single value of a check query: a comparison such as `>= 1`, a range such
/// as `between 10 and 20`, or a regular expression such as `matches ^v[0-9]+$`.
#[derive(Debug, Clone, PartialEq)]
pub enum Expectation {
    /// A number compared with `value`.
    Compare { operator: Comparison, value: f64 },
    /// A number in the closed range from `low` to `high`.
    Between { low: f64, high: f64 },
    /// Text that the regular expression matches (anywhere, unless it is anchored).
    Matches(TextPattern),
}

/// A regular expression of an [`Expectation`], in the syntax of the `regex-lite` crate.
#[derive(Debug, Clone)]
pub struct TextPattern(regex_lite::Regex);

impl TextPattern {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// Returns whether the expression matches somewhere in `text`.
    pub fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

impl PartialEq for TextPattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// The operator of [`Expectation::Compare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl Comparison {
    /// Operators in the order they are tried when parsing, two-character ones first.
    const ALL: [(&'static str, Comparison); 7] = [
        ("==", Comparison::Equal),
        ("!=", Comparison::NotEqual),
        ("<=", Comparison::LessOrEqual),
        (">=", Comparison::GreaterOrEqual),
        ("=", Comparison::Equal),
        ("<", Comparison::Less),
        (">", Comparison::Greater),
    ];

    fn symbol(self) -> &'static str {
        match self {
            Comparison::Equal => "==",
            Comparison::NotEqual => "!=",
            Comparison::Less => "<",
            Comparison::LessOrEqual => "<=",
            Comparison::Greater => ">",
            Comparison::GreaterOrEqual => ">=",
        }
    }
}

impl Expectation {
    /// Returns whether the number `actual` meets the expectation. A regular expression never
    /// accepts a number; [`Expectation::accepts_text`] tests text.
    pub fn accepts(&self, actual: f64) -> bool {
        match self {
            Expectation::Compare { operator, value } => match operator {
                Comparison::Equal => actual == *value,
                Comparison::NotEqual => actual != *value,
                Comparison::Less => actual < *value,
                Comparison::LessOrEqual => actual <= *value,
                Comparison::Greater => actual > *value,
                Comparison::GreaterOrEqual => actual >= *value,
            },
            Expectation::Between { low, high } => *low <= actual && actual <= *high,
            Expectation::Matches(_) => false,
        }
    }

    /// Returns whether a query result, as PostgreSQL's text output, meets the expectation.
    /// Comparisons and ranges parse the text as a number first, and text that is not a number
    /// never meets them.
    pub fn accepts_text(&self, actual: &str) -> bool {
        match self {
            Expectation::Matches(pattern) => pattern.is_match(actual),
            _ => actual.trim().parse::<f64>().is_ok_and(|number| self.accepts(number)),
        }
    }

    /// Returns whether the expectation compares numbers (and not text).
    pub fn is_numeric(&self) -> bool {
        !matches!(self, Expectation::Matches(_))
    }
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expectation::Compare { operator, value } => write!(f, "{} {value}", operator.symbol()),
            Expectation::Between { low, high } => write!(f, "between {low} and {high}"),
            Expectation::Matches(pattern) => write!(f, "matches {}", pattern.as_str()),
        }
    }
}

/// An invalid `expect` value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseExpectationError {
    #[error("invalid expectation {0:?}: write an operator (==, !=, <, <=, >, >=) and a number such as \">= 1\", \"between 10 and 20\", or \"matches\" and a regular expression such as \"matches ^v[0-9]+$\"")]
    Syntax(String),
    #[error("invalid expectation {input:?}: the range is empty because {low} is greater than {high}; write the lower bound first")]
    EmptyRange { input: String, low: f64, high: f64 },
    #[error("invalid expectation {input:?}: the regular expression is invalid: {reason}")]
    InvalidPattern { input: String, reason: String },
}

/// Splits `text` after a leading keyword, compared without case: `between 1 and 2` with the
/// keyword `between` returns `1 and 2`.
fn strip_keyword<'a>(text: &'a str, keyword: &str) -> Option<&'a str> {
    let head = text.get(..keyword.len())?;
    let rest = &text[keyword.len()..];
    let separated = rest.starts_with(char::is_whitespace);
    (head.eq_ignore_ascii_case(keyword) && separated).then(|| rest.trim())
}

fn parse_number(text: &str, input: &str) -> Result<f64, ParseExpectationError> {
    let value: f64 = text.trim().parse().map_err(|_| ParseExpectationError::Syntax(input.to_owned()))?;
    if !value.is_finite() {
        return Err(ParseExpectationError::Syntax(input.to_owned()));
    }
    Ok(value)
}

impl FromStr for Expectation {
    type Err = ParseExpectationError;

    /// Parses `<operator> <number>` (a number alone means `==`), `between <low> and <high>`,
    /// or `matches <regular expression>`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        if let Some(pattern) = strip_keyword(trimmed, "matches") {
            let regex = regex_lite::Regex::new(pattern).map_err(|e| ParseExpectationError::InvalidPattern {
                input: text.to_owned(),
                reason: e.to_string(),
            })?;
            return Ok(Expectation::Matches(TextPattern(regex)));
        }
        if let Some(range) = strip_keyword(trimmed, "between") {
            let lowered = range.to_ascii_lowercase();
            let Some(at) = lowered.find(" and ") else {
                return Err(ParseExpectationError::Syntax(text.to_owned()));
            };
            let low = parse_number(&range[..at], text)?;
            let high = parse_number(&range[at + " and ".len()..], text)?;
            if low > high {
                return Err(ParseExpectationError::EmptyRange { input: text.to_owned(), low, high });
            }
            return Ok(Expectation::Between { low, high });
        }
        let (operator, rest) = Comparison::ALL
            .iter()
            .find_map(|(symbol, operator)| {
                trimmed.strip_prefix(symbol).map(|rest| (*operator, rest))
            })
            .unwrap_or((Comparison::Equal, trimmed));
        let value = parse_number(rest, text)?;
        Ok(Expectation::Compare { operator, value })
    }
}

impl Serialize for Expectation {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Expectation {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The kind of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Postgres,
    Bucket,
    Checkpoints,
}

/// A source of snapshots with the rules that apply to it.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRef<'a> {
    /// Source identity, such as `s3:visage-uploads`, or [`CHECKPOINTS_PATTERN`] for all
    /// checkpoint jobs.
    pub id: String,
    pub kind: SourceKind,
    /// Entry name in the policy, or `checkpoints`.
    pub name: &'a str,
    /// `None` for a database without a `retention` block, whose snapshots are never pruned.
    pub retention: Option<&'a RetentionRules>,
    pub schedule: Option<&'a Schedule>,
}

/// A schedule of the policy and what it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedSchedule<'a> {
    /// Such as `postgres visage-db`, `bucket uploads`, `checkpoints`, `prune`, `verification`.
    pub name: String,
    pub schedule: &'a Schedule,
}

/// One fire time in UTC and in the policy's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FireTime {
    pub utc: DateTime<Utc>,
    pub local: DateTime<Tz>,
}

impl Policy {
    /// Reads and checks the policy file at `path`.
    pub fn load(path: &Path) -> Result<ParsedPolicy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Policy::parse(&text, &path.display().to_string())
    }

    /// Checks the policy text `text`. `file` names it in diagnostics.
    pub fn parse(text: &str, file: &str) -> Result<ParsedPolicy, PolicyError> {
        validate::parse(text, file)
    }

    /// Parses the embedded `policies/local.yaml`.
    pub fn local_default() -> Result<ParsedPolicy, PolicyError> {
        Policy::parse(LOCAL_POLICY_YAML, LOCAL_POLICY_NAME)
    }

    /// Lists every source with its retention rules and schedule: databases, then buckets, then
    /// one [`CHECKPOINTS_PATTERN`] entry for all checkpoint jobs.
    pub fn sources(&self) -> Vec<SourceRef<'_>> {
        let mut sources = Vec::new();
        for database in &self.postgres {
            sources.push(SourceRef {
                id: database.source_id.clone(),
                kind: SourceKind::Postgres,
                name: &database.spec.name,
                retention: database.spec.retention.as_ref(),
                schedule: database.schedule.as_ref(),
            });
        }
        for bucket in &self.buckets {
            sources.push(SourceRef {
                id: bucket.source_id.clone(),
                kind: SourceKind::Bucket,
                name: &bucket.name,
                retention: Some(&bucket.retention),
                schedule: bucket.schedule.as_ref(),
            });
        }
        if let Some(checkpoints) = &self.checkpoints {
            sources.push(SourceRef {
                id: CHECKPOINTS_PATTERN.to_owned(),
                kind: SourceKind::Checkpoints,
                name: "checkpoints",
                retention: Some(&checkpoints.retention),
                schedule: checkpoints.schedule.as_ref(),
            });
        }
        sources
    }

    /// Finds the source with identity `source_id`. Any `checkpoints:<job>` with a non-empty job
    /// matches the checkpoints entry.
    pub fn source(&self, source_id: &str) -> Option<SourceRef<'_>> {
        let is_checkpoint_job = source_id
            .strip_prefix(CHECKPOINTS_PREFIX)
            .is_some_and(|job| !job.is_empty());
        self.sources().into_iter().find(|source| {
            source.id == source_id || (source.kind == SourceKind::Checkpoints && is_checkpoint_job)
        })
    }

    /// Returns the retention rules of the source with identity `source_id`, or `None` for an
    /// unknown source or a database without a `retention` block.
    pub fn retention_for(&self, source_id: &str) -> Option<&RetentionRules> {
        if let Some(job) = source_id.strip_prefix(CHECKPOINTS_PREFIX) {
            if !job.is_empty() {
                return self.checkpoints.as_ref().map(|c| &c.retention);
            }
        }
        if let Some(bucket) = self.buckets.iter().find(|b| b.source_id == source_id) {
            return Some(&bucket.retention);
        }
        self.postgres
            .iter()
            .find(|database| database.source_id == source_id)
            .and_then(|database| database.spec.retention.as_ref())
    }

    /// Lists every schedule of the policy: databases, buckets, checkpoints, prune, verification.
    pub fn schedules(&self) -> Vec<NamedSchedule<'_>> {
        let mut schedules = Vec::new();
        for database in &self.postgres {
            if let Some(schedule) = &database.schedule {
                schedules.push(NamedSchedule {
                    name: format!("postgres {}", database.spec.name),
                    schedule,
                });
            }
        }
        for bucket in &self.buckets {
            if let Some(schedule) = &bucket.schedule {
                schedules.push(NamedSchedule {
                    name: format!("bucket {}", bucket.name),
                    schedule,
                });
            }
        }
        if let Some(schedule) = self.checkpoints.as_ref().and_then(|c| c.schedule.as_ref()) {
            schedules.push(NamedSchedule {
                name: "checkpoints".to_owned(),
                schedule,
            });
        }
        if let Some(prune) = &self.prune {
            schedules.push(NamedSchedule {
                name: "prune".to_owned(),
                schedule: &prune.schedule,
            });
        }
        if let Some(verification) = &self.verification {
            schedules.push(NamedSchedule {
                name: "verification".to_owned(),
                schedule: &verification.schedule,
            });
        }
        schedules
    }

    /// Returns whether any database uses `driver`.
    pub fn uses_driver(&self, driver: Driver) -> bool {
        self.postgres.iter().any(|d| d.spec.driver == driver)
    }
}

/// Returns the first `count` fire times of `schedule` strictly after `after`.
pub fn upcoming_fires(schedule: &Schedule, after: DateTime<Utc>, count: usize) -> Vec<FireTime> {
    schedule
        .upcoming(after, count)
        .into_iter()
        .map(|utc| FireTime {
            utc,
            local: utc.with_timezone(&schedule.tz),
        })
        .collect()
}

#[cfg(test)]
mod tests;
