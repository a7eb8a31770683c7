//! Restore verification (`visage-dr verify`): restore every component of a policy to one
//! target time in scratch resources, prove that the data is right, tear everything down, and
//! write a report.
//!
//! A run, in order:
//! 1. removes scratch directories and scratch Clusters of earlier runs whose time-to-live
//!    has passed ([`scratch::remove_expired`], [`crate::cnpg::scratch::remove_expired`]);
//! 2. reads each database's barman-cloud archive and the repository's manifests, and chooses
//!    the target time ([`target`]): by default a random instant inside the window that every
//!    component can be restored to;
//! 3. restores each database into a scratch instance, through the local driver or as a
//!    scratch CNPG Cluster ([`crate::cnpg::scratch`]), and runs the database checks on it
//!    ([`database`]). It restores a sample of each bucket's snapshot and the newest
//!    checkpoint of each job into scratch files ([`objects`]);
//! 4. tears down the scratch instances and directories, on success, failure, timeout and
//!    termination signal alike, unless `--keep` (steps 3 and 4 are in `phase.rs`);
//! 5. records the verified snapshots under `catalogue/verified/` and stores the report under
//!    `reports/` ([`crate::report`], assembled in `assemble.rs`).
//!
//! `docs/verification.md` describes the checks and the report.

mod assemble;
pub mod database;
mod metrics;
pub mod objects;
mod phase;
pub mod scratch;
pub mod target;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use tracing::{info, info_span, warn, Instrument};

use crate::id::ReportId;
use crate::cnpg::{self, CnpgError};
use crate::policy::{Bucket, Policy, Verification};
use crate::postgres::catalogue::{Catalogue, PlanError};
use crate::postgres::config::Driver;
use crate::postgres::store::{ArchiveStore, StoreError};
use crate::postgres::target_time::TargetTime;
use crate::report::{self, Outcome, Report, ReportError, ScratchReport, TargetChoice, Window};
use crate::repository::lock::LockKind;
use crate::repository::manifest::{Manifest, SnapshotKind};
use crate::repository::{RepoError, Repository};
use crate::sources::checkpoint::CheckpointRecord;

use assemble::{build_report, record_verified, store_report, BuildInput};
pub use metrics::{VerifyMetrics, METRICS_HISTORY};
use phase::{check_phase, teardown, Context, KubeScratch, RunState};
use scratch::{ScratchError, ScratchRun};

/// Errors that stop a run before it restores anything. A run that got as far as restoring
/// ends with a report instead, whatever failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the policy has no `verification` section; add one with a schedule, scratch_dir and timeout (docs/verification.md)")]
    NoVerification,
    #[error("`verification.scratch_dir` is not set, and verify restores local-driver databases, sample objects and checkpoints into it; set it to an absolute path with room for a copy of each local database")]
    NoScratchDir,
    #[error("cannot read the barman-cloud archive of database {database:?}: {error}")]
    Archive { database: String, error: Box<StoreError> },
    #[error("--target-time cannot be used for database {database:?}: {error}")]
    InvalidTarget { database: String, error: Box<PlanError> },
    #[error("database {database:?} uses driver cnpg, but `verification.scratch_namespace` is not set; set it to a namespace where visage-dr may create and delete CNPG Clusters")]
    NoScratchNamespace { database: String },
    #[error(transparent)]
    Kubernetes(#[from] CnpgError),
    #[error(transparent)]
    Window(#[from] target::WindowError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Scratch(#[from] ScratchError),
    #[error(transparent)]
    Report(#[from] ReportError),
}

/// How to choose the target time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetRequest {
    /// A random instant inside the window that every component can be restored to.
    Random,
    /// The newest state: the databases recover to the end of their archives.
    Latest,
    /// This instant.
    At(TargetTime),
}

/// Settings of one run, shared by `visage-dr verify` and the controller's verification job.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub target: TargetRequest,
    /// Leave the scratch instances and directories in place for inspection.
    pub keep: bool,
    /// A directory that receives a copy of the report files.
    pub report_dir: Option<PathBuf>,
    /// Kubeconfig for the scratch Clusters of cnpg databases; `None` uses `KUBECONFIG`,
    /// `~/.kube/config` or the pod's service account.
    pub kubeconfig: Option<PathBuf>,
}

/// A scratch instance left running by `--keep`.
#[derive(Debug, Clone)]
pub struct KeptInstance {
    pub database: String,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    /// The command that stops it.
    pub stop_command: String,
}

/// A scratch Cluster left in place by `--keep`.
#[derive(Debug, Clone)]
pub struct KeptCluster {
    pub database: String,
    pub namespace: String,
    pub name: String,
}

/// The result of a run that produced a report.
#[derive(Debug, Clone)]
pub struct VerifyOutcome {
    pub report: Report,
    /// Locations of the report files: the repository's, then `report_dir`'s.
    pub files: Vec<String>,
    pub kept: Vec<KeptInstance>,
    pub kept_clusters: Vec<KeptCluster>,
}

/// Formats a time as RFC 3339 in UTC to the millisecond.
pub(crate) fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Waits for SIGTERM or SIGINT and returns the signal's name. A caller passes it to
/// [`verify`] so that a Kubernetes Job deadline or a Ctrl-C still tears the run down.
///
/// NOTE: once this has been called, the process no longer exits on these signals by itself.
pub async fn termination_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        std::future::pending::<()>().await;
        unreachable!("a pending future never completes");
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

/// Reason the check phase stopped early.
enum Interruption {
    Timeout(Duration),
    Signal(&'static str),
}

/// The policy databases' archives, by database name.
struct Archive {
    store: ArchiveStore,
    catalogue: Catalogue,
}

/// Runs one verification of `policy` against `repo`. `interrupted` completes when the run
/// must stop, such as on SIGTERM ([`termination_signal`]); the run then tears down and
/// reports a failure.
pub async fn verify(
    policy: &Policy,
    repo: Arc<Repository>,
    options: &VerifyOptions,
    interrupted: impl Future<Output = &'static str>,
) -> Result<VerifyOutcome, VerifyError> {
    let started = Utc::now();
    let id = ReportId::new(started);
    let span = info_span!("verify", verify.report_id = %id, verify.target_time = tracing::field::Empty);
    run(policy, repo, options, interrupted, started, id).instrument(span).await
}

async fn run(
    policy: &Policy,
    repo: Arc<Repository>,
    options: &VerifyOptions,
    interrupted: impl Future<Output = &'static str>,
    started: DateTime<Utc>,
    id: ReportId,
) -> Result<VerifyOutcome, VerifyError> {
    let clock = Instant::now();
    let verification = policy.verification.as_ref().ok_or(VerifyError::NoVerification)?;
    let scratch_dir = verification.scratch_dir.as_ref().ok_or(VerifyError::NoScratchDir)?;
    info!("verification started");

    let leftovers = scratch::remove_expired(scratch_dir, started).await?;
    let removed = leftovers.iter().filter(|l| l.removed).count();
    if removed > 0 {
        info!(scratch.removed = removed, "expired scratch directories of earlier runs removed");
    }

    let kube = connect_kube(policy, verification, options, started).await?;
    let archives = read_archives(policy).await?;
    let lock = repo.lock(LockKind::Shared, "verify").await?;
    let prepared = Prepared { archives: &archives, kube: kube.as_ref() };
    let result = run_locked(policy, &repo, options, interrupted, prepared, clock, started).await;
    if let Err(e) = lock.release().await {
        warn!(error = %e, "could not remove the repository lock; it turns stale by itself");
    }
    let Locked { choice, state, run_dir, bucket_snapshots, checkpoints, checks_done, kept, kept_clusters } = result?;

    let finished = Utc::now();
    let report = build_report(BuildInput {
        id,
        policy,
        repo: &repo,
        started,
        finished,
        choice: &choice,
        checks_done,
        state,
        bucket_snapshots: &bucket_snapshots,
        checkpoints: &checkpoints,
        scratch: ScratchReport { path: run_dir.path, kept: options.keep, expires: run_dir.marker.expires },
    });
    record_verified(&repo, &report, &bucket_snapshots, &checkpoints).await;
    let files = store_report(&repo, &report, options.report_dir.as_deref()).await?;
    match report.result {
        Outcome::Pass => info!(verify.result = "pass", "verification passed"),
        Outcome::Fail => warn!(verify.result = "fail", verify.failure = report.failure.as_deref().unwrap_or(""), "verification failed"),
    }
    Ok(VerifyOutcome { report, files, kept, kept_clusters })
}

/// Results of the part of a run under the repository lock, for the report.
struct Locked {
    choice: Choice,
    state: RunState,
    run_dir: ScratchRun,
    bucket_snapshots: HashMap<String, Manifest>,
    checkpoints: Vec<CheckpointRecord>,
    /// Seconds from the start of the run until the check phase ended.
    checks_done: f64,
    kept: Vec<KeptInstance>,
    kept_clusters: Vec<KeptCluster>,
}

/// Archives and the Kubernetes client, read and connected before the repository lock.
struct Prepared<'a> {
    archives: &'a HashMap<String, Archive>,
    kube: Option<&'a KubeScratch>,
}

/// Connects to Kubernetes when a database uses driver cnpg, and deletes the scratch Clusters
/// of earlier runs whose time-to-live has passed.
async fn connect_kube(
    policy: &Policy,
    verification: &Verification,
    options: &VerifyOptions,
    started: DateTime<Utc>,
) -> Result<Option<KubeScratch>, VerifyError> {
    let Some(first) = policy.postgres.iter().find(|d| d.spec.driver == Driver::Cnpg) else {
        return Ok(None);
    };
    let namespace = verification
        .scratch_namespace
        .clone()
        .ok_or_else(|| VerifyError::NoScratchNamespace { database: first.spec.name.clone() })?;
    let client = cnpg::client(options.kubeconfig.as_deref()).await?;
    let removed = cnpg::scratch::remove_expired(&client, &namespace, started).await?;
    if !removed.is_empty() {
        info!(k8s.namespace = %namespace, scratch.removed = removed.len(), "expired scratch Clusters of earlier runs deleted: {}", removed.join(", "));
    }
    Ok(Some(KubeScratch { client, namespace }))
}

/// Chooses the target, restores, checks and tears down. The caller holds a shared repository
/// lock, so that no prune deletes data that the run reads.
async fn run_locked(
    policy: &Policy,
    repo: &Arc<Repository>,
    options: &VerifyOptions,
    interrupted: impl Future<Output = &'static str>,
    prepared: Prepared<'_>,
    clock: Instant,
    started: DateTime<Utc>,
) -> Result<Locked, VerifyError> {
    let Prepared { archives, kube } = prepared;
    let verification = policy.verification.as_ref().ok_or(VerifyError::NoVerification)?;
    let scratch_dir = verification.scratch_dir.as_ref().ok_or(VerifyError::NoScratchDir)?;
    // A prune may have run since the repository was opened; the lock keeps the next one out.
    repo.reload_index().await?;
    let manifests: Vec<Manifest> = repo.load_manifests().await?.into_iter().filter(|m| m.is_complete()).collect();

    let choice = choose_target(policy, options.target, archives, &manifests)?;
    tracing::Span::current().record("verify.target_time", tracing::field::display(&choice.target));
    let window_text = choice
        .window
        .map(|w| format!(" in the recoverable window {} to {}", rfc3339(w.after), rfc3339(w.until)))
        .unwrap_or_default();
    if choice.to_end_of_archive {
        info!(verify.choice = ?choice.choice, "target: the end of the archive{window_text}; the report's target time is the instant recovery finishes");
    } else {
        info!(verify.choice = ?choice.choice, "target time {}{window_text}", choice.target);
    }

    let target_time = choice.target.as_datetime();
    let bucket_snapshots = choose_bucket_snapshots(&policy.buckets, &manifests, target_time);
    let checkpoints = if policy.checkpoints.is_some() { choose_checkpoints(&manifests, target_time) } else { Vec::new() };
    drop(manifests);

    let ttl = verification.timeout + scratch::TEARDOWN_GRACE;
    let mut run_dir = ScratchRun::create(scratch_dir, started, ttl)?;
    let deadline = clock + verification.timeout;
    let context = Context {
        policy,
        verification,
        repo,
        run_dir: run_dir.path.clone(),
        target: choice.target,
        to_end_of_archive: choice.to_end_of_archive,
        clock,
        deadline,
        archives,
        bucket_snapshots: &bucket_snapshots,
        checkpoints: &checkpoints,
        keep: options.keep,
        started,
        expires: run_dir.marker.expires,
        kube,
    };

    let mut state = RunState::default();
    let interruption = {
        let work = check_phase(&context, &mut state);
        tokio::pin!(work);
        tokio::pin!(interrupted);
        tokio::select! {
            () = &mut work => None,
            () = tokio::time::sleep_until(deadline.into()) => Some(Interruption::Timeout(verification.timeout)),
            name = &mut interrupted => Some(Interruption::Signal(name)),
        }
    };
    let checks_done = clock.elapsed().as_secs_f64();
    let phase_start = Instant::now();
    match interruption {
        Some(Interruption::Timeout(limit)) => {
            let limit = report::duration_text(limit.as_secs_f64());
            state.record(
                "run".into(),
                "run",
                phase_start,
                Err(format!("the run did not finish within verification.timeout ({limit}) and was stopped; raise the timeout or look at the slowest check above")),
            );
        }
        Some(Interruption::Signal(name)) => {
            warn!(signal = name, "verification interrupted; tearing down");
            state.record("run".into(), "run", phase_start, Err(format!("interrupted by {name} after {}", report::duration_text(checks_done))));
        }
        None => {}
    }

    let (kept, kept_clusters) = teardown(&mut state, &mut run_dir, kube, options.keep).await;
    Ok(Locked { choice, state, run_dir, bucket_snapshots, checkpoints, checks_done, kept, kept_clusters })
}

/// Reads the archive catalogue of every database. A cnpg database's archive is read with the
/// policy's `object_store` credentials, to choose the base backup that the scratch Cluster pins.
async fn read_archives(policy: &Policy) -> Result<HashMap<String, Archive>, VerifyError> {
    let mut archives = HashMap::new();
    for database in &policy.postgres {
        let name = &database.spec.name;
        let archive_error = |error| VerifyError::Archive { database: name.clone(), error: Box::new(error) };
        let store = ArchiveStore::open(&database.spec.object_store).map_err(archive_error)?;
        let catalogue = store.read_catalogue().await.map_err(archive_error)?;
        archives.insert(name.clone(), Archive { store, catalogue });
    }
    Ok(archives)
}

/// The chosen target time.
struct Choice {
    target: TargetTime,
    choice: TargetChoice,
    window: Option<Window>,
    to_end_of_archive: bool,
}

fn target_from(time: DateTime<Utc>, now: DateTime<Utc>) -> TargetTime {
    let text = time.to_rfc3339_opts(SecondsFormat::Micros, true);
    TargetTime::parse(&text, now.max(time)).expect("an RFC 3339 time in UTC parses as a target time")
}

fn choose_target(
    policy: &Policy,
    request: TargetRequest,
    archives: &HashMap<String, Archive>,
    manifests: &[Manifest],
) -> Result<Choice, VerifyError> {
    let now = Utc::now();
    let mut components = Vec::new();
    for database in &policy.postgres {
        if let Some(archive) = archives.get(&database.spec.name) {
            components.push(target::database_window(&database.spec.name, &archive.catalogue));
        }
    }
    for bucket in &policy.buckets {
        let oldest = manifests
            .iter()
            .filter(|m| m.kind == SnapshotKind::Bucket && m.source == bucket.source_id)
            .map(|m| m.time)
            .min();
        components.push(target::bucket_window(&bucket.name, oldest, now));
    }

    match request {
        TargetRequest::At(target) => {
            // Checked now, so that a mistyped target is rejected before anything is created.
            for (name, archive) in archives {
                archive
                    .catalogue
                    .select_base_backup(target.as_datetime(), now, false)
                    .map_err(|error| VerifyError::InvalidTarget { database: name.clone(), error: Box::new(error) })?;
            }
            let window = target::common_window(&components).ok().flatten().map(|i| window_of(&i));
            Ok(Choice { target, choice: TargetChoice::Given, window, to_end_of_archive: false })
        }
        TargetRequest::Latest => {
            let window = target::common_window(&components).ok().flatten().map(|i| window_of(&i));
            Ok(Choice { target: target_from(now, now), choice: TargetChoice::Latest, window, to_end_of_archive: true })
        }
        TargetRequest::Random => {
            let Some(intervals) = target::common_window(&components)? else {
                // Nothing restricts the window: checkpoints alone are checked at their newest.
                return Ok(Choice { target: target_from(now, now), choice: TargetChoice::Latest, window: None, to_end_of_archive: true });
            };
            let picked = target::random_instant(&intervals, &mut rand::thread_rng()).expect("the common window is not empty");
            Ok(Choice {
                target: target_from(picked, now),
                choice: TargetChoice::Random,
                window: Some(window_of(&intervals)),
                to_end_of_archive: false,
            })
        }
    }
}

fn window_of(intervals: &[target::Interval]) -> Window {
    Window {
        after: intervals.first().map(|i| i.start).unwrap_or_default(),
        until: intervals.last().map(|i| i.end).unwrap_or_default(),
    }
}

/// Chooses, per bucket, the newest complete snapshot whose completion is at or before `target`.
fn choose_bucket_snapshots(buckets: &[Bucket], manifests: &[Manifest], target: DateTime<Utc>) -> HashMap<String, Manifest> {
    let mut chosen = HashMap::new();
    for bucket in buckets {
        let newest = manifests
            .iter()
            .filter(|m| m.kind == SnapshotKind::Bucket && m.source == bucket.source_id && m.time <= target)
            .max_by_key(|m| (m.time, m.id.clone()));
        if let Some(manifest) = newest {
            chosen.insert(bucket.name.clone(), manifest.clone());
        }
    }
    chosen
}

/// Chooses, per checkpoint job, the newest checkpoint pushed at or before `target`.
fn choose_checkpoints(manifests: &[Manifest], target: DateTime<Utc>) -> Vec<CheckpointRecord> {
    let mut newest: BTreeMap<String, CheckpointRecord> = BTreeMap::new();
    for record in manifests.iter().filter_map(CheckpointRecord::from_manifest).filter(|r| r.time <= target) {
        match newest.get(&record.job) {
            Some(current) if (current.time, &current.snapshot) >= (record.time, &record.snapshot) => {}
            _ => {
                newest.insert(record.job.clone(), record);
            }
        }
    }
    newest.into_values().collect()
}
