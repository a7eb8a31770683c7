//! One controller cycle: the policy's jobs (database backups, bucket
//! snapshots, prune with garbage collection) run in a fixed order, each
//! recorded per schedule slot so that a retried CronJob does not run a slot
//! twice.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, info_span, warn, Instrument};

use crate::cnpg::{self, backup::BackupOutcome};
use crate::policy::Policy;
use crate::postgres::config::{DatabaseSpec, Driver};
use crate::postgres::{local, records};
use crate::prune::{self, PruneSettings};
use crate::repository::{RepoError, Repository};
use crate::schedule::Schedule;
use crate::scheduler::{check_due, DueCheck};
use crate::sources::bucket::{self, SnapshotOptions};
use crate::verify;

/// Selection of the jobs a cycle runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// The jobs whose most recent slot has not completed yet.
    Due,
    /// One job by name, now, whatever its schedule.
    Job(String),
    /// Every job, now.
    All,
}

/// Outcome of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobResult {
    Succeeded,
    Failed,
    Skipped,
}

impl std::fmt::Display for JobResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobResult::Succeeded => "succeeded",
            JobResult::Failed => "failed",
            JobResult::Skipped => "skipped",
        })
    }
}

/// One row of a cycle's summary.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub job: String,
    pub result: JobResult,
    /// The schedule slot the run belongs to; the start instant for `--job` and `--all`.
    pub slot: Option<DateTime<Utc>>,
    pub seconds: f64,
    /// Bytes the job wrote to the repository (freed, for prune).
    pub bytes: u64,
    /// Objects the job read or recorded: a snapshot's objects.
    pub objects: u64,
    /// Snapshot, backup or record ids the job produced.
    pub ids: Vec<String>,
    /// Reason the job failed or was skipped.
    pub detail: Option<String>,
}

/// Name of the restore verification job.
pub const VERIFICATION_JOB: &str = "verification";

/// A job of the policy, in cycle order.
#[derive(Debug, Clone)]
enum JobKind {
    Postgres(usize),
    Bucket(usize),
    Prune,
    Verification,
}

struct PlannedJob {
    name: String,
    kind: JobKind,
    schedule: Option<Schedule>,
}

/// Lists the policy's jobs in the fixed cycle order: database backups first, then
/// bucket snapshots, prune (which also applies checkpoint retention), and
/// verification.
fn planned_jobs(policy: &Policy) -> Vec<PlannedJob> {
    let mut jobs = Vec::new();
    for (i, db) in policy.postgres.iter().enumerate() {
        jobs.push(PlannedJob { name: format!("postgres:{}", db.spec.name), kind: JobKind::Postgres(i), schedule: db.schedule.clone() });
    }
    for (i, b) in policy.buckets.iter().enumerate() {
        jobs.push(PlannedJob { name: format!("bucket:{}", b.name), kind: JobKind::Bucket(i), schedule: b.schedule.clone() });
    }
    if let Some(p) = &policy.prune {
        jobs.push(PlannedJob { name: "prune".into(), kind: JobKind::Prune, schedule: Some(p.schedule.clone()) });
    }
    if let Some(v) = &policy.verification {
        jobs.push(PlannedJob { name: VERIFICATION_JOB.into(), kind: JobKind::Verification, schedule: Some(v.schedule.clone()) });
    }
    jobs
}

/// Names of the policy's jobs, in cycle order.
pub fn job_names(policy: &Policy) -> Vec<String> {
    planned_jobs(policy).into_iter().map(|j| j.name).collect()
}

/// Returns the policy's jobs with their schedules, in cycle order, and `None`
/// for a job that runs only when asked for.
pub fn job_schedules(policy: &Policy) -> Vec<(String, Option<Schedule>)> {
    planned_jobs(policy).into_iter().map(|j| (j.name, j.schedule)).collect()
}

/// Typical time between two slots of `schedule` after `now`: the gap between
/// its next two fire times.
pub fn schedule_interval(schedule: &Schedule, now: DateTime<Utc>) -> Option<Duration> {
    match schedule.upcoming(now, 2).as_slice() {
        [a, b] => (*b - *a).to_std().ok(),
        _ => None,
    }
}

/// A completed run of a job, stored under `catalogue/runs/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub job: String,
    pub slot: DateTime<Utc>,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub result: JobResult,
    pub ids: Vec<String>,
}

fn runs_prefix(job: &str) -> String {
    format!("catalogue/runs/{}/", job.replace([':', '/'], "_"))
}

/// Returns the record of the newest slot of `job` that completed successfully.
pub async fn last_success(repo: &Repository, job: &str) -> Result<Option<RunRecord>, RepoError> {
    let mut newest: Option<RunRecord> = None;
    for obj in repo.backend().list(&runs_prefix(job)).await? {
        let data = repo.backend().get(&obj.key).await?;
        match serde_json::from_slice::<RunRecord>(&data) {
            Ok(r) if r.result == JobResult::Succeeded && newest.as_ref().is_none_or(|n| r.slot > n.slot) => {
                newest = Some(r)
            }
            Ok(_) => {}
            Err(e) => warn!(s3.key = %obj.key, error = %e, "ignoring an unreadable run record"),
        }
    }
    Ok(newest)
}

async fn write_run_record(repo: &Repository, record: &RunRecord) -> Result<(), RepoError> {
    let key = format!(
        "{}{}",
        runs_prefix(&record.job),
        record.slot.format("%Y%m%dT%H%M%S%.3fZ")
    );
    repo.backend()
        .put(&key, bytes::Bytes::from(serde_json::to_vec_pretty(record).expect("record serialises")))
        .await?;
    Ok(())
}

/// Settings of a cycle.
pub struct CycleOptions {
    pub selection: Selection,
    /// Jobs left out of the cycle.
    pub except: Vec<String>,
    pub now: DateTime<Utc>,
    /// How late a slot may still start (a CronJob's starting deadline).
    pub starting_deadline: Duration,
    pub progress: bool,
}

/// Runs one cycle and returns a report per job, in cycle order.
pub async fn run_cycle(policy: &Policy, repo: Arc<Repository>, opts: &CycleOptions) -> Result<Vec<JobReport>, RepoError> {
    let jobs = planned_jobs(policy);
    let mut reports = Vec::new();
    for job in &jobs {
        if opts.except.contains(&job.name) {
            continue;
        }
        let slot = match &opts.selection {
            Selection::Job(name) if name != &job.name => continue,
            Selection::Job(_) | Selection::All => opts.now,
            Selection::Due => {
                let Some(schedule) = &job.schedule else {
                    reports.push(skipped(job, None, "the job has no schedule".into()));
                    continue;
                };
                let last = last_success(&repo, &job.name).await?.map(|r| r.slot);
                match check_due(schedule, opts.now, last, Some(opts.starting_deadline)) {
                    DueCheck::Due { slot } => slot,
                    DueCheck::AlreadyDone { slot } => {
                        reports.push(skipped(job, Some(slot), format!("slot {} already completed", rfc3339(slot))));
                        continue;
                    }
                    DueCheck::NotDue { next } => {
                        let when = next.map(rfc3339).unwrap_or_else(|| "never".into());
                        reports.push(skipped(job, None, format!("not due; next slot {when}")));
                        continue;
                    }
                }
            }
        };
        reports.push(run_and_record(policy, &repo, job, slot, opts.progress).await?);
    }
    Ok(reports)
}

/// Runs the job named `name` for `slot`, as `visage-dr serve` does when a
/// slot fires, and records a successful run under the slot.
///
/// # Errors
///
/// [`RepoError`] when the run record cannot be written. A job that fails is
/// not an error: its report has the result `failed` and the reason.
pub async fn run_scheduled(policy: &Policy, repo: Arc<Repository>, name: &str, slot: DateTime<Utc>) -> Result<JobReport, RepoError> {
    let jobs = planned_jobs(policy);
    let Some(job) = jobs.iter().find(|j| j.name == name) else {
        let detail = format!("the policy in force has no job {name:?}");
        warn!(job.name = %name, "{detail}");
        return Ok(JobReport { job: name.to_owned(), result: JobResult::Failed, slot: Some(slot), seconds: 0.0, bytes: 0, objects: 0, ids: Vec::new(), detail: Some(detail) });
    };
    run_and_record(policy, &repo, job, slot, false).await
}

async fn run_and_record(policy: &Policy, repo: &Arc<Repository>, job: &PlannedJob, slot: DateTime<Utc>, progress: bool) -> Result<JobReport, RepoError> {
    let started = Utc::now();
    let span = info_span!("job", job.name = %job.name, job.slot = %rfc3339(slot));
    let report = run_job(policy, repo, job, slot, progress).instrument(span).await;
    if report.result == JobResult::Succeeded {
        let record = RunRecord { job: job.name.clone(), slot, started, finished: Utc::now(), result: report.result, ids: report.ids.clone() };
        write_run_record(repo, &record).await?;
    }
    Ok(report)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn skipped(job: &PlannedJob, slot: Option<DateTime<Utc>>, detail: String) -> JobReport {
    info!(job.name = %job.name, reason = %detail, "job skipped");
    JobReport { job: job.name.clone(), result: JobResult::Skipped, slot, seconds: 0.0, bytes: 0, objects: 0, ids: Vec::new(), detail: Some(detail) }
}

async fn run_job(policy: &Policy, repo: &Arc<Repository>, job: &PlannedJob, slot: DateTime<Utc>, progress: bool) -> JobReport {
    let clock = std::time::Instant::now();
    let mut report = JobReport {
        job: job.name.clone(),
        result: JobResult::Succeeded,
        slot: Some(slot),
        seconds: 0.0,
        bytes: 0,
        objects: 0,
        ids: Vec::new(),
        detail: None,
    };
    info!("job started");
    let outcome: Result<(), String> = match &job.kind {
        JobKind::Postgres(i) => {
            let db = &policy.postgres[*i];
            match db.spec.driver {
                Driver::Local => {
                    let tools = local::Tools::from_env();
                    let (record, error) = match local::backup(&db.spec, &tools).await {
                        Ok(r) => (r, None),
                        Err(f) => (f.record, Some(f.error.to_string())),
                    };
                    report.ids.extend(record.backup_id.clone());
                    let stored = records::write_record(repo, &record).await.map_err(|e| e.to_string());
                    match (error, stored) {
                        (Some(e), _) => Err(e),
                        (None, Err(e)) => Err(format!("the backup succeeded but its catalogue record was not stored: {e}")),
                        (None, Ok(_)) => Ok(()),
                    }
                }
                Driver::Cnpg => cnpg_job(&db.spec, repo, slot, &mut report).await,
            }
        }
        JobKind::Bucket(i) => {
            let b = &policy.buckets[*i];
            let snapshot = bucket::snapshot(
                repo.clone(),
                SnapshotOptions {
                    bucket: b.bucket.clone(),
                    prefix: b.prefix.clone(),
                    s3: b.s3.clone(),
                    concurrency: bucket::DEFAULT_SNAPSHOT_CONCURRENCY,
                    tags: true,
                    progress,
                },
            )
            .await;
            match snapshot {
                Ok(stats) => {
                    report.bytes = stats.bytes_new;
                    report.objects = stats.objects;
                    report.ids.push(stats.snapshot.to_string());
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        }
        JobKind::Prune => prune_job(policy, repo, &mut report).await,
        JobKind::Verification => verification_job(policy, repo, &mut report).await,
    };
    report.seconds = clock.elapsed().as_secs_f64();
    if let Err(e) = outcome {
        warn!(error = %e, "job failed");
        report.result = JobResult::Failed;
        report.detail = Some(e);
    } else if report.result == JobResult::Succeeded {
        info!(job.seconds = report.seconds, "job succeeded");
    }
    report
}

/// Runs a restore verification to a random instant of the recoverable window and stores its
/// report; a failed verification fails the job.
async fn verification_job(policy: &Policy, repo: &Arc<Repository>, report: &mut JobReport) -> Result<(), String> {
    let options =
        verify::VerifyOptions { target: verify::TargetRequest::Random, keep: false, report_dir: None, kubeconfig: None };
    let outcome = verify::verify(policy, repo.clone(), &options, verify::termination_signal()).await.map_err(|e| e.to_string())?;
    report.ids.push(outcome.report.id.to_string());
    match outcome.report.failure {
        None => Ok(()),
        Some(failure) => Err(format!("verification failed: {failure}")),
    }
}

/// Takes one backup through a CNPG Backup resource. A slot skipped because an earlier
/// Backup still runs is reported as skipped, so the slot is tried again by the next cycle.
async fn cnpg_job(spec: &DatabaseSpec, repo: &Arc<Repository>, slot: DateTime<Utc>, report: &mut JobReport) -> Result<(), String> {
    let client = cnpg::client(None).await.map_err(|e| e.to_string())?;
    let outcome = cnpg::backup::run(client, spec, Some(repo), slot, &cnpg::backup::BackupOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    match outcome {
        BackupOutcome::Completed { record, warnings } => {
            report.ids.extend(record.record.backup_id.clone());
            if !warnings.is_empty() {
                report.detail = Some(warnings.join("; "));
            }
            Ok(())
        }
        BackupOutcome::Skipped { reason } => {
            report.result = JobResult::Skipped;
            report.detail = Some(format!("skipped: {reason}"));
            Ok(())
        }
        BackupOutcome::Failed { record, error } => {
            report.ids.extend(record.and_then(|r| r.record.backup_id));
            Err(error)
        }
    }
}

async fn prune_job(policy: &Policy, repo: &Arc<Repository>, report: &mut JobReport) -> Result<(), String> {
    let summaries: Vec<_> = repo.load_manifests().await.map_err(|e| e.to_string())?.iter().map(|m| m.summary()).collect();
    let verified = prune::verified_snapshots(repo).await.map_err(|e| e.to_string())?;
    let p = policy.prune.as_ref().expect("the prune job exists only with a prune section");
    // The settings borrow a closure that is not Sync, so they end before the
    // next await and the job's future stays Send.
    let plan = {
        let rules_for = |source: &str| policy.retention_for(source).cloned();
        let settings = PruneSettings {
            rules_for: &rules_for,
            tz: policy.timezone,
            now: Utc::now(),
            max_snapshot_age: p.max_snapshot_age.and_then(|d| d.to_std()).and_then(|d| chrono::Duration::from_std(d).ok()),
            force: false,
        };
        prune::plan(&summaries, &verified, &settings).map_err(|e| e.to_string())?
    };
    let grace = p.gc_grace.to_std().unwrap_or(crate::repository::gc::DEFAULT_GRACE);
    let done = prune::execute(repo, &plan, grace).await.map_err(|e| e.to_string())?;
    report.bytes = done.gc.bytes_freed;
    report.ids = done.snapshots_removed.iter().map(|s| s.to_string()).collect();
    let skipped: Vec<String> = plan.sources.iter().filter_map(|s| s.skipped.as_ref().map(|r| format!("{}: {r}", s.source))).collect();
    if !skipped.is_empty() {
        report.detail = Some(skipped.join("; "));
    }
    Ok(())
}
