//! `visage-dr run`: one controller cycle, as the CronJob runs it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;
use clap::Args;

use super::prune::load_policy;
use super::repo::{human_bytes, print_table};
use super::CliError;
use crate::controller::{self, CycleOptions, JobResult, Selection};
use crate::repository::{RepoOptions, RepoUrl, Repository};
use crate::server::metrics;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Policy file whose jobs to run.
    #[arg(long)]
    pub policy: PathBuf,
    /// Run the jobs whose most recent schedule slot has not completed (the default). A retry for a completed slot runs nothing.
    #[arg(long, conflicts_with_all = ["job", "all"])]
    pub due: bool,
    /// Run one job now, whatever its schedule, for example `bucket:uploads`, `postgres:visage-db` or `prune`.
    #[arg(long, conflicts_with = "all")]
    pub job: Option<String>,
    /// Run every job now, whatever its schedule.
    #[arg(long)]
    pub all: bool,
    /// Leave this job out of a --due or --all cycle, for example `verification` when a CronJob of its own runs it. Repeatable.
    #[arg(long, value_name = "JOB", conflicts_with = "job")]
    pub except: Vec<String>,
    /// Seconds after a slot during which it still starts; older missed slots are skipped.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub starting_deadline: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Pushgateway to push each run job's figures to (last success, status, duration, bytes, objects), since a CronJob ends before Prometheus could scrape it.
    #[arg(long, env = "VISAGE_DR_PUSHGATEWAY", value_name = "URL")]
    pub pushgateway: Option<String>,
}

pub async fn run(a: RunArgs) -> Result<ExitCode, CliError> {
    let policy = load_policy(&a.policy)?;
    let selection = match (&a.job, a.all) {
        (Some(name), _) => {
            let names = controller::job_names(&policy);
            if !names.contains(name) {
                return Err(CliError::usage(format!(
                    "--job {name:?} is not a job of {}; its jobs are: {}",
                    a.policy.display(),
                    names.join(", ")
                )));
            }
            Selection::Job(name.clone())
        }
        (None, true) => Selection::All,
        (None, false) => Selection::Due,
    };
    let names = controller::job_names(&policy);
    if let Some(unknown) = a.except.iter().find(|e| !names.contains(e)) {
        return Err(CliError::usage(format!(
            "--except {unknown:?} is not a job of {}; its jobs are: {}",
            a.policy.display(),
            names.join(", ")
        )));
    }
    // The first run against a new repository initialises it.
    let url: RepoUrl = policy.repository.url.parse()?;
    let options = RepoOptions {
        s3: policy.repository.s3.clone().unwrap_or_default(),
        ..RepoOptions::default()
    };
    let repo = std::sync::Arc::new(Repository::open_or_init(&url, options).await?);
    let opts = CycleOptions {
        selection,
        except: a.except.clone(),
        now: Utc::now(),
        starting_deadline: Duration::from_secs(a.starting_deadline),
        progress: !a.json,
    };
    let reports = controller::run_cycle(&policy, repo.clone(), &opts).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports).expect("reports serialise"));
    } else {
        let rows: Vec<Vec<String>> = reports
            .iter()
            .map(|r| {
                vec![
                    r.job.clone(),
                    r.result.to_string(),
                    format!("{:.1} s", r.seconds),
                    human_bytes(r.bytes),
                    r.ids.join(" "),
                    r.detail.clone().unwrap_or_default(),
                ]
            })
            .collect();
        print_table(&["JOB", "RESULT", "DURATION", "BYTES", "IDS", "DETAIL"], &rows);
    }
    if let Some(gateway) = &a.pushgateway {
        push_reports(gateway, &policy, &repo, &reports).await?;
    }
    let failed = reports.iter().filter(|r| r.result == JobResult::Failed).count();
    if failed > 0 {
        return Err(CliError::failed(format!("{failed} job(s) failed; see the summary above")));
    }
    Ok(ExitCode::SUCCESS)
}

/// Pushes the figures of every job that ran (skipped jobs keep what an
/// earlier run pushed).
async fn push_reports(gateway: &str, policy: &crate::policy::Policy, repo: &Repository, reports: &[controller::JobReport]) -> Result<(), CliError> {
    let schedules: std::collections::HashMap<String, Option<crate::schedule::Schedule>> =
        controller::job_schedules(policy).into_iter().collect();
    for report in reports.iter().filter(|r| r.result != JobResult::Skipped) {
        let interval = schedules
            .get(&report.job)
            .and_then(|s| s.as_ref())
            .and_then(|s| controller::schedule_interval(s, Utc::now()))
            .map_or(0.0, |d| d.as_secs_f64());
        let last = controller::last_success(repo, &report.job).await?.map(|r| r.finished.timestamp_millis() as f64 / 1000.0);
        let verification = if report.job == controller::VERIFICATION_JOB {
            crate::service::verification_figures(repo).await.map_err(|e| CliError::failed(e.to_string()))?
        } else {
            None
        };
        metrics::push_job(gateway, report, interval, last, verification.as_ref()).await.map_err(|e| CliError::failed(e.to_string()))?;
    }
    Ok(())
}
