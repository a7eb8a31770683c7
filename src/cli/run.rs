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
    /// Seconds after a slot during which it still starts; older missed slots are skipped.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub starting_deadline: u64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
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
    // The first run against a new repository initialises it.
    let url: RepoUrl = policy.repository.url.parse()?;
    let options = RepoOptions {
        s3: policy.repository.s3.clone().unwrap_or_default(),
        ..RepoOptions::default()
    };
    let repo = std::sync::Arc::new(Repository::open_or_init(&url, options).await?);
    let opts = CycleOptions {
        selection,
        now: Utc::now(),
        starting_deadline: Duration::from_secs(a.starting_deadline),
        progress: !a.json,
    };
    let reports = controller::run_cycle(&policy, repo, &opts).await?;
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
    let failed = reports.iter().filter(|r| r.result == JobResult::Failed).count();
    if failed > 0 {
        return Err(CliError::failed(format!("{failed} job(s) failed; see the summary above")));
    }
    Ok(ExitCode::SUCCESS)
}
