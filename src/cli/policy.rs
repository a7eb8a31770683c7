//! `policy check` and `retention simulate`: commands that read policy files and contact no
//! server.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;
use serde::Serialize;

use super::repo::print_table;
use super::CliError;
use crate::policy::{
    parse_snapshot_list, upcoming_fires, Action, Diagnostic, ParsedPolicy, Policy, PolicyError,
    SimulatedSnapshot, SourceKind,
};

/// Directory searched by `policy check` when no path is given.
pub const DEFAULT_POLICY_DIR: &str = "policies";

/// Number of fire times `policy check` lists per schedule.
const FIRES_PER_SCHEDULE: usize = 3;

#[derive(Debug, Args)]
pub struct PolicyCheckArgs {
    /// Policy files to check. Without paths, every `*.yaml` file in `policies/` is checked.
    pub paths: Vec<PathBuf>,
    /// List fire times after this instant instead of after now (RFC 3339 with an offset, for example 2026-02-01T12:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Print a JSON array with one object per file: file, valid, errors, warnings, timezone, sources, schedules.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RetentionSimulateArgs {
    /// Policy file whose rules to apply.
    #[arg(long)]
    pub policy: PathBuf,
    /// Source identity, for example `s3:visage-uploads`, `cnpg:visage/visage-postgres-cluster` or `checkpoints:<job>`.
    #[arg(long)]
    pub source: String,
    /// File with one snapshot time per line (RFC 3339), optionally followed by `failed`, `final` or `verified`. Blank lines and `#` comments are ignored.
    #[arg(long, value_name = "FILE")]
    pub snapshots: PathBuf,
    /// Current time for the simulation (RFC 3339); snapshots after it are reported. Default: now.
    #[arg(long, value_name = "TIME")]
    pub now: Option<String>,
    /// Print a JSON array of {"time", "action", "reasons"} in input order.
    #[arg(long)]
    pub json: bool,
}

/// The result of checking one policy file, as printed by `policy check --json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileReport {
    pub file: String,
    pub valid: bool,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
    /// IANA name of the policy's time zone; `None` for an invalid file.
    pub timezone: Option<String>,
    pub sources: Vec<SourceReport>,
    pub schedules: Vec<ScheduleReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceReport {
    pub id: String,
    pub kind: SourceKind,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleReport {
    /// What the schedule starts, such as `bucket uploads` or `prune`.
    pub name: String,
    pub expr: String,
    pub next: Vec<FireReport>,
}

/// One fire time, RFC 3339 in UTC and in the policy's time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FireReport {
    pub utc: String,
    pub local: String,
}

/// Builds the report of one file from its parse result, with fire times after `after`.
pub fn file_report(
    file: &str,
    result: Result<ParsedPolicy, PolicyError>,
    after: DateTime<Utc>,
) -> FileReport {
    let parsed = match result {
        Ok(parsed) => parsed,
        Err(error) => {
            let errors = match &error {
                PolicyError::Read { .. } => vec![Diagnostic {
                    file: file.to_owned(),
                    line: 0,
                    column: 0,
                    message: error.to_string(),
                }],
                PolicyError::Invalid { problems } => problems.clone(),
            };
            return FileReport {
                file: file.to_owned(),
                valid: false,
                errors,
                warnings: Vec::new(),
                timezone: None,
                sources: Vec::new(),
                schedules: Vec::new(),
            };
        }
    };

    let policy = &parsed.policy;
    let sources = policy
        .sources()
        .into_iter()
        .map(|source| SourceReport {
            id: source.id,
            kind: source.kind,
            name: source.name.to_owned(),
        })
        .collect();
    let schedules = policy
        .schedules()
        .into_iter()
        .map(|named| ScheduleReport {
            name: named.name,
            expr: named.schedule.expr.to_string(),
            next: upcoming_fires(named.schedule, after, FIRES_PER_SCHEDULE)
                .into_iter()
                .map(|fire| FireReport {
                    utc: fire.utc.to_rfc3339_opts(SecondsFormat::Secs, true),
                    local: fire.local.to_rfc3339_opts(SecondsFormat::Secs, true),
                })
                .collect(),
        })
        .collect();
    FileReport {
        file: file.to_owned(),
        valid: true,
        errors: Vec::new(),
        warnings: parsed.warnings,
        timezone: Some(policy.timezone.name().to_owned()),
        sources,
        schedules,
    }
}

/// Returns the table rows of a valid file's schedules: one row per fire time, with the
/// schedule's name and expression on its first row only.
pub fn schedule_rows(report: &FileReport) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for schedule in &report.schedules {
        for (index, fire) in schedule.next.iter().enumerate() {
            let (name, expr) = if index == 0 {
                (schedule.name.clone(), schedule.expr.clone())
            } else {
                (String::new(), String::new())
            };
            rows.push(vec![name, expr, fire.utc.clone(), fire.local.clone()]);
        }
    }
    rows
}

/// Returns the table rows of a simulation: time, action and reasons.
pub fn simulation_rows(results: &[SimulatedSnapshot]) -> Vec<Vec<String>> {
    results
        .iter()
        .map(|result| {
            let action = match result.action {
                Action::Keep => "keep",
                Action::Remove => "remove",
            };
            vec![
                result.time.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                action.to_owned(),
                result.reasons.join(", "),
            ]
        })
        .collect()
}

fn print_json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("output serialises")
    );
}

/// Parses an RFC 3339 option value.
fn parse_time(option: &str, text: &str) -> Result<DateTime<Utc>, CliError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            CliError::usage(format!(
                "invalid {option} {text:?}: {e}; use RFC 3339 with an offset, for example \
                 2026-02-01T12:00:00Z"
            ))
        })
}

/// Lists the `*.yaml` files of `dir`, sorted by name.
fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        CliError::usage(format!(
            "cannot read the policy directory {}: {e}; pass policy files as arguments",
            dir.display()
        ))
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| CliError::failed(format!("cannot list {}: {e}", dir.display())))?
            .path();
        if path.extension().is_some_and(|ext| ext == "yaml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(CliError::usage(format!(
            "no *.yaml files in {}; pass policy files as arguments",
            dir.display()
        )));
    }
    Ok(files)
}

fn print_file_report(report: &FileReport) {
    for error in &report.errors {
        println!(
            "{}:{}:{}: error: {}",
            error.file, error.line, error.column, error.message
        );
    }
    for warning in &report.warnings {
        println!(
            "{}:{}:{}: warning: {}",
            warning.file, warning.line, warning.column, warning.message
        );
    }
    if !report.valid {
        return;
    }
    let timezone = report.timezone.as_deref().unwrap_or("UTC");
    println!("{}: valid, time zone {timezone}", report.file);
    let ids: Vec<&str> = report.sources.iter().map(|s| s.id.as_str()).collect();
    println!("sources: {}", ids.join(", "));
    if timezone == "UTC" {
        // The local column would repeat the UTC one.
        let rows: Vec<Vec<String>> = schedule_rows(report).into_iter().map(|mut r| {
            r.truncate(3);
            r
        }).collect();
        print_table(&["SCHEDULE", "EXPRESSION", "NEXT (UTC)"], &rows);
    } else {
        let local_header = format!("NEXT ({timezone})");
        print_table(
            &["SCHEDULE", "EXPRESSION", "NEXT (UTC)", &local_header],
            &schedule_rows(report),
        );
    }
}

/// `visage-dr policy check`: validates policy files and lists the next fire times of each
/// schedule. Exits with status 2 when any file is invalid.
pub async fn policy_check(args: PolicyCheckArgs) -> Result<ExitCode, CliError> {
    let after = match &args.at {
        Some(text) => parse_time("--at", text)?,
        None => Utc::now(),
    };
    let paths = if args.paths.is_empty() {
        policy_files(Path::new(DEFAULT_POLICY_DIR))?
    } else {
        args.paths
    };

    let reports: Vec<FileReport> = paths
        .iter()
        .map(|path| {
            let file = path.display().to_string();
            file_report(&file, Policy::load(path), after)
        })
        .collect();

    if args.json {
        print_json(&reports);
    } else {
        for (index, report) in reports.iter().enumerate() {
            if index > 0 {
                println!();
            }
            print_file_report(report);
        }
    }

    let invalid = reports.iter().filter(|report| !report.valid).count();
    if invalid > 0 {
        return Err(CliError::usage(format!(
            "{invalid} of {} policy files are invalid",
            reports.len()
        )));
    }
    Ok(ExitCode::SUCCESS)
}

/// `visage-dr retention simulate`: applies a source's retention rules to a list of snapshot
/// times and prints which are kept and why.
pub async fn retention_simulate(args: RetentionSimulateArgs) -> Result<ExitCode, CliError> {
    let now = match &args.now {
        Some(text) => parse_time("--now", text)?,
        None => Utc::now(),
    };
    let parsed = Policy::load(&args.policy).map_err(|e| match e {
        PolicyError::Read { .. } => CliError::failed(e.to_string()),
        PolicyError::Invalid { .. } => CliError::usage(e.to_string()),
    })?;
    let text = std::fs::read_to_string(&args.snapshots).map_err(|e| {
        CliError::failed(format!(
            "cannot read snapshot list {}: {e}",
            args.snapshots.display()
        ))
    })?;
    let entries = parse_snapshot_list(&text)
        .map_err(|e| CliError::usage(format!("{}: {e}", args.snapshots.display())))?;

    for entry in entries.iter().filter(|entry| entry.candidate.time > now) {
        eprintln!(
            "warning: {}: line {}: snapshot time is after --now; it counts as the newest snapshot",
            args.snapshots.display(),
            entry.line
        );
    }

    let results = parsed
        .policy
        .simulate_retention(&args.source, &entries)
        .map_err(|e| CliError::usage(e.to_string()))?;
    if args.json {
        print_json(&results);
    } else {
        print_table(&["TIME", "ACTION", "REASONS"], &simulation_rows(&results));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{parse_snapshot_list, simulate};
    use crate::retention::RetentionRules;

    const POLICY: &str = "\
repository: { url: file:///var/lib/visage-dr/repo }
timezone: Europe/Berlin
buckets:
  - name: uploads
    bucket: visage-uploads
    schedule: \"0 3 * * 1\"
    retention: { keep_daily: 2 }
";

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn report_lists_fires_in_both_zones() {
        let report = file_report(
            "p.yaml",
            Policy::parse(POLICY, "p.yaml"),
            utc("2026-02-01T12:00:00Z"),
        );
        assert!(report.valid);
        assert_eq!(report.timezone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(
            schedule_rows(&report),
            vec![
                vec![
                    "bucket uploads".to_owned(),
                    "0 3 * * 1".to_owned(),
                    "2026-02-02T02:00:00Z".to_owned(),
                    "2026-02-02T03:00:00+01:00".to_owned()
                ],
                vec![
                    String::new(),
                    String::new(),
                    "2026-02-09T02:00:00Z".to_owned(),
                    "2026-02-09T03:00:00+01:00".to_owned()
                ],
                vec![
                    String::new(),
                    String::new(),
                    "2026-02-16T02:00:00Z".to_owned(),
                    "2026-02-16T03:00:00+01:00".to_owned()
                ],
            ]
        );
    }

    #[test]
    fn report_of_invalid_file() {
        let text = POLICY.replace("keep_daily", "keep_dayly");
        let report = file_report("p.yaml", Policy::parse(&text, "p.yaml"), Utc::now());
        assert!(!report.valid);
        assert_eq!(report.errors.len(), 1);
        assert_eq!((report.errors[0].line, report.errors[0].column), (7, 18));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["valid"], false);
        assert_eq!(json["errors"][0]["line"], 7);
        assert_eq!(json["timezone"], serde_json::Value::Null);
    }

    #[test]
    fn report_json_shape() {
        let report = file_report(
            "p.yaml",
            Policy::parse(POLICY, "p.yaml"),
            utc("2026-02-01T12:00:00Z"),
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["sources"][0]["id"], "s3:visage-uploads");
        assert_eq!(json["sources"][0]["kind"], "bucket");
        assert_eq!(
            json["schedules"][0]["next"][0]["utc"],
            "2026-02-02T02:00:00Z"
        );
        assert_eq!(
            json["schedules"][0]["next"][0]["local"],
            "2026-02-02T03:00:00+01:00"
        );
    }

    #[test]
    fn simulation_rows_join_reasons() {
        let rules = RetentionRules {
            keep_daily: Some(2),
            ..RetentionRules::default()
        };
        let entries = parse_snapshot_list(
            "2026-06-14T03:43:00Z\n2026-06-15T03:43:00Z\n2026-06-13T03:43:00Z failed\n",
        )
        .unwrap();
        let rows = simulation_rows(&simulate(&rules, chrono_tz::Tz::UTC, &entries).unwrap());
        assert_eq!(
            rows,
            vec![
                vec!["2026-06-14T03:43:00Z", "keep", "daily 2026-06-14"],
                vec!["2026-06-15T03:43:00Z", "keep", "daily 2026-06-15, newest"],
                vec!["2026-06-13T03:43:00Z", "remove", "failed"],
            ]
        );
    }

    #[test]
    fn invalid_time_option_is_usage_error() {
        let error = parse_time("--at", "tomorrow").unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().starts_with("invalid --at \"tomorrow\""));
    }
}
