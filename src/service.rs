//! The long-running controller of `visage-dr serve`: fires the policy's jobs
//! at their slots through the [`scheduler`](crate::scheduler), reloads the
//! policy file when it changes, keeps the job metrics, and shuts down
//! cleanly on a signal.
//!
//! A job that never ran runs its most recent slot at start, so a new
//! deployment takes its first backups at once. After downtime each job
//! catches up with at most one run, within the starting deadline.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::controller::{self, JobResult};
use crate::policy::Policy;
use crate::repository::{lock, RepoError, Repository};
use crate::scheduler::{self, FirstStart, JobListError, RunReport, Scheduler, SystemClock};
use crate::report::{self, ReportError};
use crate::server::metrics::{Metrics, ReloadResult, VerificationFigures};
use crate::verify::{VerifyMetrics, METRICS_HISTORY};

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Policy file, reread every `reload_interval`.
    pub policy_path: PathBuf,
    /// Maximum age of a missed slot that still runs late.
    pub starting_deadline: Duration,
    pub reload_interval: Duration,
    /// Time that runs in flight get to finish after the shutdown signal.
    pub shutdown_grace: Duration,
}

/// Failure to start the controller.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot read the run records of the repository: {0}")]
    Repository(#[from] RepoError),
    #[error(transparent)]
    Jobs(#[from] JobListError),
}

/// A running controller, stopped by [`Service::shutdown`].
pub struct Service {
    shutdown: watch::Sender<bool>,
    scheduler: JoinHandle<Result<RunReport, JobListError>>,
    watcher: JoinHandle<()>,
    repo: Arc<Repository>,
}

/// Components whose restorable instant the verification reports, for a
/// policy: `postgres:<db>` and `bucket:<name>`. Checkpoint jobs appear once a
/// report names them.
pub fn components(policy: &Policy) -> Vec<String> {
    let databases = policy.postgres.iter().map(|d| format!("postgres:{}", d.spec.name));
    databases.chain(policy.buckets.iter().map(|b| format!("bucket:{}", b.name))).collect()
}

/// Reads the figures of the verification metrics from the repository's
/// stored reports; `None` before the first verification.
pub async fn verification_figures(repo: &Repository) -> Result<Option<VerificationFigures>, ReportError> {
    let reports = report::load_recent(repo, METRICS_HISTORY).await?;
    let Some(v) = VerifyMetrics::from_reports(&reports) else { return Ok(None) };
    let newest = reports.iter().max_by_key(|r| (r.started, r.id.clone()));
    Ok(Some(VerificationFigures {
        passed: v.last_status_value() == 1,
        rto_seconds: newest.and_then(|r| r.rto_seconds).unwrap_or(0.0),
        restorable: v.restorable_timestamp_seconds().map(|(c, t)| (c.to_owned(), t)).collect(),
    }))
}

/// Sets the verification series from the stored reports, logging a failure to read them.
async fn refresh_verification(repo: &Repository, metrics: &Metrics) {
    match verification_figures(repo).await {
        Ok(Some(figures)) => metrics.set_verification(&figures),
        Ok(None) => {}
        Err(e) => warn!(error = %e, "cannot read the verification reports; their metrics keep their values"),
    }
}

/// Builds the scheduler's job list of `policy`, with each job's last
/// successful slot read from the repository, and declares the job metrics.
async fn jobs_for(policy: &Policy, repo: &Repository, metrics: &Metrics, deadline: Duration) -> Result<Vec<scheduler::Job>, RepoError> {
    let now = Utc::now();
    let mut jobs = Vec::new();
    for (name, schedule) in controller::job_schedules(policy) {
        let last = controller::last_success(repo, &name).await?;
        let interval = schedule.as_ref().and_then(|s| controller::schedule_interval(s, now)).map_or(0.0, |d| d.as_secs_f64());
        metrics.declare_job(&name, interval, last.as_ref().map(|r| unix(r.finished)));
        let Some(schedule) = schedule else { continue };
        jobs.push(scheduler::Job {
            name,
            schedule,
            starting_deadline: Some(deadline),
            first_start: FirstStart::RunLatestSlot,
            last_slot: last.map(|r| r.slot),
        });
    }
    metrics.declare_components(&components(policy));
    Ok(jobs)
}

fn unix(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

impl Service {
    /// Starts firing the jobs of `policy`, read from `settings.policy_path`.
    pub async fn start(policy: Policy, repo: Arc<Repository>, metrics: Arc<Metrics>, settings: ServiceSettings) -> Result<Service, ServiceError> {
        let jobs = jobs_for(&policy, &repo, &metrics, settings.starting_deadline).await?;
        refresh_verification(&repo, &metrics).await;
        metrics.set_policy_loaded(true);
        let names: BTreeSet<String> = controller::job_names(&policy).into_iter().collect();
        let current = Arc::new(RwLock::new(Arc::new(policy)));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (reload_tx, reload_rx) = mpsc::channel(4);

        let executor = {
            let current = current.clone();
            let repo = repo.clone();
            let metrics = metrics.clone();
            move |name: String, slot: DateTime<Utc>| -> scheduler::BoxFuture<'static, Result<(), String>> {
                let policy = current.read().expect("policy lock").clone();
                let repo = repo.clone();
                let metrics = metrics.clone();
                Box::pin(async move {
                    let report = controller::run_scheduled(&policy, repo.clone(), &name, slot).await.map_err(|e| e.to_string())?;
                    metrics.record_job(&report, unix(Utc::now()));
                    if name == controller::VERIFICATION_JOB {
                        refresh_verification(&repo, &metrics).await;
                    }
                    match report.result {
                        JobResult::Failed => Err(report.detail.unwrap_or_else(|| "failed".into())),
                        JobResult::Succeeded | JobResult::Skipped => Ok(()),
                    }
                })
            }
        };
        let scheduler = tokio::spawn(
            Scheduler::new()
                .reload(reload_rx)
                .shutdown_grace(settings.shutdown_grace)
                .run(jobs, SystemClock, executor, shutdown_rx.clone()),
        );
        let watcher = tokio::spawn(watch_policy(
            settings.clone(),
            current,
            names,
            repo.clone(),
            metrics,
            reload_tx,
            shutdown_rx,
        ));
        info!(policy.path = %settings.policy_path.display(), "controller started");
        Ok(Service { shutdown, scheduler, watcher, repo })
    }

    /// Stops firing jobs, waits for runs in flight for the shutdown grace,
    /// and releases the repository locks of runs it had to abandon. A run
    /// abandoned part-way leaves no snapshot: only blobs that the next
    /// garbage collection removes.
    pub async fn shutdown(self) -> Result<RunReport, ServiceError> {
        let _ = self.shutdown.send(true);
        let report = self.scheduler.await.unwrap_or_else(|e| panic!("the scheduler task panicked: {e}"))?;
        let _ = self.watcher.await;
        for run in &report.finished_after_shutdown {
            info!(job.name = %run.job, "run finished after the shutdown signal");
        }
        if !report.abandoned.is_empty() {
            match lock::remove_own_locks(self.repo.backend()).await {
                Ok(removed) => info!(locks = removed.len(), "released the repository locks of abandoned runs"),
                Err(e) => error!(error = %e, "cannot release the repository locks of abandoned runs; `visage-dr unlock` removes them once stale"),
            }
        }
        Ok(report)
    }
}

/// Rereads the policy file every interval and applies a valid change. An
/// invalid file, or one naming another repository, is rejected with the
/// reason logged, and the policy in force stays.
async fn watch_policy(
    settings: ServiceSettings,
    current: Arc<RwLock<Arc<Policy>>>,
    mut names: BTreeSet<String>,
    repo: Arc<Repository>,
    metrics: Arc<Metrics>,
    reload: mpsc::Sender<Vec<scheduler::Job>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let path = settings.policy_path.clone();
    let mut last = tokio::fs::read(&path).await.ok();
    let mut unreadable_reported = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(settings.reload_interval) => {}
            _ = shutdown.changed() => return,
        }
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => {
                unreadable_reported = false;
                b
            }
            Err(e) => {
                if !unreadable_reported {
                    warn!(policy.path = %path.display(), error = %e, "cannot read the policy file; the policy in force stays");
                    unreadable_reported = true;
                }
                continue;
            }
        };
        if last.as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        last = Some(bytes.clone());
        let text = String::from_utf8_lossy(&bytes);
        let parsed = match Policy::parse(&text, &path.display().to_string()) {
            Ok(p) => p,
            Err(e) => {
                error!(policy.path = %path.display(), error = %e, "policy reload rejected; the previous policy stays in force");
                metrics.count_reload(ReloadResult::Rejected);
                continue;
            }
        };
        let policy = parsed.policy;
        let in_force = current.read().expect("policy lock").repository.url.clone();
        if policy.repository.url != in_force {
            error!(
                policy.path = %path.display(),
                repo.url = %in_force,
                "policy reload rejected: it names the repository {}, and serve switches repositories only at a restart; the previous policy stays in force",
                policy.repository.url
            );
            metrics.count_reload(ReloadResult::Rejected);
            continue;
        }
        for w in &parsed.warnings {
            warn!("{w}");
        }
        let jobs = match jobs_for(&policy, &repo, &metrics, settings.starting_deadline).await {
            Ok(jobs) => jobs,
            Err(e) => {
                error!(error = %e, "policy reload postponed: cannot read the run records; the previous policy stays in force");
                // Retried at the next interval.
                last = None;
                continue;
            }
        };
        let new_names: BTreeSet<String> = controller::job_names(&policy).into_iter().collect();
        for removed in names.difference(&new_names) {
            metrics.forget_job(removed);
        }
        names = new_names;
        *current.write().expect("policy lock") = Arc::new(policy);
        metrics.count_reload(ReloadResult::Applied);
        info!(policy.path = %path.display(), jobs = names.len(), "policy reloaded");
        if reload.send(jobs).await.is_err() {
            return;
        }
    }
}
