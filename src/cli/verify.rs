//! `visage-dr verify` (one restore verification) and `visage-dr reports` (past runs).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::Utc;
use clap::Args;
use serde::Serialize;

use super::prune::{load_policy, open_policy_repo};
use super::repo::print_table;
use super::CliError;
use crate::postgres::target_time::TargetTime;
use crate::report::{self, duration_text, optional_duration, time_text, Outcome, Report, ReportError};
use crate::repository::{RepoOptions, RepoUrl, Repository};
use crate::s3::S3Overrides;
use crate::verify::{self, TargetRequest, VerifyError, VerifyOptions};

/// Restore every component of a policy to one point in time in scratch resources, check the
/// result, tear everything down and write a report.
///
/// By default the target is a random instant inside the window that every component can be
/// restored to, so that over the weeks the whole window gets exercised. The report is stored
/// in the repository under reports/ and its paths are printed.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Policy file (YAML) with a `verification` section.
    #[arg(long, value_name = "PATH")]
    pub policy: PathBuf,
    /// Restore to this instant: an absolute time with a UTC offset, such as 2026-05-28T12:00:00Z.
    #[arg(long, conflicts_with_all = ["latest", "random_in_window"])]
    pub target_time: Option<String>,
    /// Restore the newest state: databases recover to the end of their WAL archives.
    #[arg(long, conflicts_with = "random_in_window")]
    pub latest: bool,
    /// Restore to a random instant inside the recoverable window (the default).
    #[arg(long)]
    pub random_in_window: bool,
    /// Leave the scratch instances and directories in place for inspection; a run after 24 hours removes them.
    #[arg(long)]
    pub keep: bool,
    /// Also write report.json, report.md and report.html into this directory.
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    /// Print the report and the file locations as JSON.
    #[arg(long)]
    pub json: bool,
    /// Kubeconfig for the scratch Clusters of cnpg databases; defaults to KUBECONFIG,
    /// ~/.kube/config or the pod's service account.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
}

/// List past verification runs with their outcome, newest first.
#[derive(Debug, Args)]
pub struct ReportsArgs {
    /// Policy file whose repository contains the reports.
    #[arg(long, value_name = "PATH", required_unless_present = "repo")]
    pub policy: Option<PathBuf>,
    /// Repository URL instead of a policy: `s3://bucket/prefix` or `file:///absolute/path`.
    #[arg(long, env = "VISAGE_DR_REPO", conflicts_with = "policy")]
    pub repo: Option<String>,
    /// S3 endpoint of the repository; overrides AWS_ENDPOINT_URL for the repository only.
    #[arg(long, env = "VISAGE_DR_REPO_S3_ENDPOINT")]
    pub repo_s3_endpoint: Option<String>,
    /// Number of runs to list.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub last: usize,
    /// Print a JSON array, newest run first.
    #[arg(long)]
    pub json: bool,
}

impl From<VerifyError> for CliError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::NoVerification
            | VerifyError::NoScratchDir
            | VerifyError::NoScratchNamespace { .. }
            | VerifyError::InvalidTarget { .. } => {
                CliError::usage(e.to_string())
            }
            VerifyError::Repo(r) => r.into(),
            other => CliError::failed(other.to_string()),
        }
    }
}

impl From<ReportError> for CliError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Repo(r) => r.into(),
            other => CliError::failed(other.to_string()),
        }
    }
}

fn target_request(a: &VerifyArgs) -> Result<TargetRequest, CliError> {
    if let Some(text) = &a.target_time {
        let target = TargetTime::parse(text, Utc::now()).map_err(|e| CliError::usage(e.to_string()))?;
        return Ok(TargetRequest::At(target));
    }
    Ok(if a.latest { TargetRequest::Latest } else { TargetRequest::Random })
}

/// `visage-dr verify --json` output.
#[derive(Serialize)]
struct VerifyJson<'a> {
    report: &'a Report,
    files: &'a [String],
}

pub async fn verify(a: VerifyArgs) -> Result<ExitCode, CliError> {
    let request = target_request(&a)?;
    let policy = load_policy(&a.policy)?;
    if policy.verification.is_none() {
        return Err(VerifyError::NoVerification.into());
    }
    let repo: Arc<Repository> = open_policy_repo(&policy).await?;
    let options =
        VerifyOptions { target: request, keep: a.keep, report_dir: a.report_dir.clone(), kubeconfig: a.kubeconfig.clone() };
    let outcome = verify::verify(&policy, repo, &options, verify::termination_signal()).await?;
    let report = &outcome.report;

    if a.json {
        let text = serde_json::to_string_pretty(&VerifyJson { report, files: &outcome.files }).expect("the report serialises");
        println!("{text}");
    } else {
        print_report(report);
        for kept in &outcome.kept {
            println!(
                "kept {}: psql -h {} -p {} -U {} -d {}; stop it with: {}",
                kept.database,
                kept.socket_dir.display(),
                kept.port,
                kept.user,
                kept.dbname,
                kept.stop_command
            );
        }
        for kept in &outcome.kept_clusters {
            println!(
                "kept {}: Cluster {}/{}; delete it with: kubectl delete cluster -n {} {}",
                kept.database, kept.namespace, kept.name, kept.namespace, kept.name
            );
        }
        for file in &outcome.files {
            println!("report: {file}");
        }
    }
    match report.result {
        Outcome::Pass => Ok(ExitCode::SUCCESS),
        Outcome::Fail => Err(CliError::failed(format!(
            "verification failed: {}",
            report.failure.as_deref().unwrap_or("see the report")
        ))),
    }
}

fn print_report(report: &Report) {
    for (label, value) in report::summary_rows(report) {
        println!("{label}: {value}");
    }
    println!();
    let rows: Vec<Vec<String>> = report
        .checks
        .iter()
        .map(|c| vec![c.name.clone(), c.result.as_str().to_uppercase(), format!("{:.2} s", c.seconds), c.details.clone()])
        .collect();
    print_table(&["CHECK", "RESULT", "TIME", "DETAILS"], &rows);
    println!();
}

/// One run in `visage-dr reports --json`.
#[derive(Serialize)]
struct RunSummary<'a> {
    id: String,
    started: &'a chrono::DateTime<Utc>,
    target_time: &'a chrono::DateTime<Utc>,
    result: Outcome,
    rto_seconds: Option<f64>,
    rto_checks_seconds: f64,
    rpo_seconds: Option<f64>,
    checks: usize,
    failed_checks: Vec<&'a str>,
    failure: Option<&'a str>,
}

pub async fn reports(a: ReportsArgs) -> Result<ExitCode, CliError> {
    if a.last == 0 {
        return Err(CliError::usage("--last 0 lists nothing; give a number of runs of 1 or more"));
    }
    let repo = match (&a.policy, &a.repo) {
        (Some(path), _) => open_policy_repo(&load_policy(path)?).await?,
        (None, Some(url)) => {
            let url: RepoUrl = url.parse()?;
            let options = RepoOptions {
                s3: S3Overrides { endpoint: a.repo_s3_endpoint.clone(), ..S3Overrides::default() },
                ..RepoOptions::default()
            };
            Arc::new(Repository::open(&url, options).await?)
        }
        (None, None) => return Err(CliError::usage("give --policy PATH or --repo URL to name the repository")),
    };
    let reports = report::load_recent(&repo, a.last).await?;
    let summaries: Vec<RunSummary> = reports
        .iter()
        .rev()
        .map(|r| RunSummary {
            id: r.id.to_string(),
            started: &r.started,
            target_time: &r.target_time,
            result: r.result,
            rto_seconds: r.rto_seconds,
            rto_checks_seconds: r.rto_checks_seconds,
            rpo_seconds: r.rpo_seconds,
            checks: r.checks.len(),
            failed_checks: r.failed_checks().map(|c| c.name.as_str()).collect(),
            failure: r.failure.as_deref(),
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summaries).expect("summaries serialise"));
        return Ok(ExitCode::SUCCESS);
    }
    if summaries.is_empty() {
        println!("no verification reports in {}", repo.url());
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                time_text(*s.target_time),
                s.result.as_str().to_uppercase(),
                optional_duration(s.rto_seconds),
                duration_text(s.rto_checks_seconds),
                optional_duration(s.rpo_seconds),
                if s.failed_checks.is_empty() { "-".to_owned() } else { s.failed_checks.join(", ") },
            ]
        })
        .collect();
    print_table(&["REPORT", "TARGET", "RESULT", "RTO READY", "RTO CHECKS", "RPO", "FAILED CHECKS"], &rows);
    Ok(ExitCode::SUCCESS)
}
