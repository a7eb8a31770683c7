//! Restore verification (`visage-dr verify`): restore every component of a policy to one
//! target time in scratch resources, prove that the data is right, tear everything down, and
//! write a report.
//!
//! A run, in order:
//! 1. removes scratch directories of earlier runs whose time-to-live has passed
//!    ([`scratch::remove_expired`]);
//! 2. reads each database's barman-cloud archive and the repository's manifests, and chooses
//!    the target time ([`target`]): by default a random instant inside the window that every
//!    component can be restored to;
//! 3. restores each database with the local driver into a scratch instance and runs the
//!    database checks on it ([`database`]), restores a sample of each bucket's snapshot and
//!    the newest checkpoint of each job into scratch files ([`objects`]);
//! 4. tears down the scratch instances and directories, on success, failure, timeout and
//!    termination signal alike, unless `--keep`;
//! 5. records the verified snapshots under `catalogue/verified/` and stores the report under
//!    `reports/` ([`crate::report`]).
//!
//! `docs/verification.md` describes the checks and the report.

pub mod database;
mod metrics;
pub mod objects;
pub mod scratch;
pub mod target;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use tokio_postgres::Client;
use tracing::{info, info_span, warn, Instrument};

use crate::id::{ReportId, SnapshotId};
use crate::policy::{Bucket, Database, Policy, Verification};
use crate::postgres::catalogue::{Catalogue, PlanError};
use crate::postgres::config::Driver;
use crate::postgres::local::{self, LocalError, RestoreRequest, RestoredInstance, Tools};
use crate::postgres::store::{ArchiveStore, StoreError};
use crate::postgres::target_time::TargetTime;
use crate::report::{
    self, BucketReport, CheckReport, CheckpointReport, ComponentReport, DatabaseReport, Outcome, Report, ReportError,
    ScratchReport, TargetChoice, Window, REPORT_SCHEMA, REPORT_VERSION,
};
use crate::repository::lock::LockKind;
use crate::repository::manifest::{Manifest, SnapshotKind};
use crate::repository::{RepoError, Repository};
use crate::sources::checkpoint::CheckpointRecord;

pub use metrics::{VerifyMetrics, METRICS_HISTORY};
use scratch::{ScratchError, ScratchRun};

/// Errors that stop a run before it restores anything. A run that got as far as restoring
/// ends with a report instead, whatever failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the policy has no `verification` section; add one with a schedule, scratch_dir and timeout (docs/verification.md)")]
    NoVerification,
    #[error("`verification.scratch_dir` is not set, and verify restores into a local directory; set it to an absolute path with room for a copy of each database")]
    NoScratchDir,
    #[error("cannot read the barman-cloud archive of database {database:?}: {error}")]
    Archive { database: String, error: Box<StoreError> },
    #[error("--target-time cannot be used for database {database:?}: {error}")]
    InvalidTarget { database: String, error: Box<PlanError> },
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

/// The result of a run that produced a report.
#[derive(Debug, Clone)]
pub struct VerifyOutcome {
    pub report: Report,
    /// Locations of the report files: the repository's, then `report_dir`'s.
    pub files: Vec<String>,
    pub kept: Vec<KeptInstance>,
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

/// Inputs of the check phase.
struct Context<'a> {
    policy: &'a Policy,
    verification: &'a Verification,
    repo: &'a Arc<Repository>,
    run_dir: PathBuf,
    target: TargetTime,
    to_end_of_archive: bool,
    clock: Instant,
    deadline: Instant,
    archives: &'a HashMap<String, Archive>,
    /// The bucket snapshot chosen for the target, by bucket name.
    bucket_snapshots: &'a HashMap<String, Manifest>,
    /// The checkpoint chosen for the target, per job.
    checkpoints: &'a [CheckpointRecord],
    keep: bool,
}

/// Results of the check phase. They live outside the phase's future, so that a timeout or
/// a signal that drops the future leaves it to the teardown.
#[derive(Default)]
struct RunState {
    checks: Vec<CheckReport>,
    databases: Vec<DatabaseReport>,
    instances: Vec<(String, RestoredInstance)>,
    clients: HashMap<String, Arc<Client>>,
    /// Objects restored per bucket name.
    sampled: HashMap<String, u64>,
    ready_seconds: Option<f64>,
    /// With recovery to the end of the archive, the instant every database finished
    /// recovery: the data can be as new as that, so it replaces the target time.
    latest_target: Option<DateTime<Utc>>,
}

impl RunState {
    fn record(&mut self, name: String, component: &str, started: Instant, outcome: Result<String, String>) {
        let seconds = started.elapsed().as_secs_f64();
        let (result, details) = match outcome {
            Ok(details) => {
                info!(check.name = %name, check.seconds = seconds, "check passed");
                (Outcome::Pass, details)
            }
            Err(details) => {
                warn!(check.name = %name, check.seconds = seconds, check.details = %details, "check failed");
                (Outcome::Fail, details)
            }
        };
        self.checks.push(CheckReport { name, result, seconds, details, component: Some(component.to_owned()) });
    }
}

fn database_component(name: &str) -> String {
    format!("postgres:{name}")
}

fn bucket_component(name: &str) -> String {
    format!("bucket:{name}")
}

fn checkpoint_component(job: &str) -> String {
    format!("checkpoints:{job}")
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

    let archives = read_archives(policy).await?;
    let lock = repo.lock(LockKind::Shared, "verify").await?;
    let result = run_locked(policy, &repo, options, interrupted, &archives, clock, started).await;
    if let Err(e) = lock.release().await {
        warn!(error = %e, "could not remove the repository lock; it turns stale by itself");
    }
    let Locked { choice, state, run_dir, bucket_snapshots, checkpoints, checks_done, kept } = result?;

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
    Ok(VerifyOutcome { report, files, kept })
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
}

/// Chooses the target, restores, checks and tears down. The caller holds a shared repository
/// lock, so that no prune deletes data that the run reads.
async fn run_locked(
    policy: &Policy,
    repo: &Arc<Repository>,
    options: &VerifyOptions,
    interrupted: impl Future<Output = &'static str>,
    archives: &HashMap<String, Archive>,
    clock: Instant,
    started: DateTime<Utc>,
) -> Result<Locked, VerifyError> {
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
    info!(verify.choice = ?choice.choice, "target time {}{window_text}", choice.target);

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

    let kept = teardown(&mut state, &mut run_dir, options.keep).await;
    Ok(Locked { choice, state, run_dir, bucket_snapshots, checkpoints, checks_done, kept })
}

/// Reads the archive catalogue of every local-driver database.
async fn read_archives(policy: &Policy) -> Result<HashMap<String, Archive>, VerifyError> {
    let mut archives = HashMap::new();
    for database in policy.postgres.iter().filter(|d| d.spec.driver == Driver::Local) {
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

/// Restores, checks every component, and leaves what it created in `state`.
async fn check_phase(context: &Context<'_>, state: &mut RunState) {
    let databases = &context.policy.postgres;
    for database in databases {
        restore_database(context, database, state).await;
    }
    let all_ready = !databases.is_empty() && state.clients.len() == databases.len();
    if all_ready {
        state.ready_seconds = Some(context.clock.elapsed().as_secs_f64());
    }
    if context.to_end_of_archive {
        state.latest_target = Some(Utc::now());
    }
    for database in databases {
        check_database(context, &database.spec.name, state).await;
    }
    for bucket in &context.policy.buckets {
        check_bucket(context, bucket, state).await;
    }
    for checkpoint in context.checkpoints {
        check_checkpoint(context, checkpoint, state).await;
    }
}

/// Restores one database into the run's scratch directory and connects to it.
async fn restore_database(context: &Context<'_>, database: &Database, state: &mut RunState) {
    let name = &database.spec.name;
    let component = database_component(name);
    let check = format!("restore {name}");
    let started = Instant::now();
    let span = info_span!("verify.restore", pg.database = %name);
    let outcome = async {
        if database.spec.driver != Driver::Local {
            // TODO: restore cnpg databases into a scratch Cluster in scratch_namespace.
            return Err(format!(
                "database {name} uses driver cnpg, which verify cannot restore yet; only driver local databases are verified"
            ));
        }
        let archive = context.archives.get(name).expect("every local database's archive was read");
        let remaining = context.deadline.saturating_duration_since(Instant::now());
        let request = RestoreRequest {
            target: context.target,
            to_end_of_archive: context.to_end_of_archive,
            into: context.run_dir.join(format!("pg-{}", scratch::file_name(name))),
            port: None,
            timeout: remaining,
        };
        let plan = local::plan_restore(&database.spec, &Tools::from_env(), &archive.store, &archive.catalogue, &request, Utc::now())
            .map_err(|e| match e {
                // The local driver's advice names --into, which verify does not have.
                LocalError::SocketPathTooLong { path } => format!(
                    "the Unix socket path under {} would be longer than PostgreSQL accepts (107 bytes); choose a shorter verification.scratch_dir",
                    path.display()
                ),
                other => other.to_string(),
            })?;
        let mut report = DatabaseReport {
            name: name.clone(),
            driver: "local".into(),
            backup_id: Some(plan.plan.backup.id.to_string()),
            backup_end_time: Some(plan.plan.backup.end_time),
            wal_first: Some(plan.plan.wal_first.to_string()),
            wal_last: Some(plan.plan.wal_last.to_string()),
            timeline: Some(plan.plan.timeline),
            to_end_of_archive: plan.recover_to_end_of_archive,
            ready_seconds: None,
            newest_change: None,
            port: Some(plan.port),
            pid: None,
        };
        let restored = local::restore(&plan, &archive.store).await;
        let instance = match restored {
            Ok(instance) => instance,
            Err(e) => {
                state.databases.push(report);
                let note = if context.keep { "" } else { " (teardown removes the log; run with --keep to inspect it)" };
                return Err(format!("the restore did not become ready: {e}{note}"));
            }
        };
        report.ready_seconds = Some(context.clock.elapsed().as_secs_f64());
        report.pid = Some(instance.pid);
        let password = match database.spec.connection.as_ref().and_then(|c| c.password_file.as_ref()) {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the password file {}: {e}", path.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
            ),
            None => None,
        };
        let connected =
            database::connect(&instance.socket_dir, instance.port, &instance.user, &instance.dbname, password.as_deref()).await;
        let details = format!(
            "base backup {} restored and recovered to {} in {}; the instance listens on 127.0.0.1:{}",
            plan.plan.backup.id,
            if plan.recover_to_end_of_archive { "the end of the archive".to_owned() } else { context.target.to_string() },
            report::duration_text(started.elapsed().as_secs_f64()),
            instance.port
        );
        state.databases.push(report);
        state.instances.push((name.clone(), instance));
        state.clients.insert(name.clone(), Arc::new(connected?));
        Ok(details)
    }
    .instrument(span)
    .await;
    state.record(check, &component, started, outcome);
}

/// Runs the checks of the policy on one restored database. Checks of a database that was not
/// restored fail with that reason, so that the report lists every check of the policy.
async fn check_database(context: &Context<'_>, name: &str, state: &mut RunState) {
    let verification = context.verification;
    let component = database_component(name);
    let target = state.latest_target.unwrap_or(context.target.as_datetime());
    let client = state.clients.get(name).cloned();
    let not_restored = || Err(format!("not run, because database {name} was not restored"));

    let started = Instant::now();
    let recovery = match &client {
        Some(client) => {
            let (outcome, recovery) = database::check_recovery(client).await;
            if let Some(report) = state.databases.iter_mut().find(|d| d.name == name) {
                report.newest_change = recovery.last_replayed;
            }
            outcome
        }
        None => not_restored(),
    };
    state.record(format!("recovery {name}"), &component, started, recovery);

    if let Some(boundary) = verification.data_boundary.as_ref().filter(|b| b.database == name) {
        let started = Instant::now();
        let outcome = match &client {
            Some(client) => database::check_data_boundary(client, boundary, target).await,
            None => not_restored(),
        };
        state.record(format!("data boundary {name}"), &component, started, outcome);
    }
    if let Some(schema) = verification.schema.as_ref().filter(|s| s.database == name) {
        let started = Instant::now();
        let outcome = match &client {
            Some(client) => database::check_schema(client, schema).await,
            None => not_restored(),
        };
        state.record(format!("schema {name}"), &component, started, outcome);
    }
    for check in verification.checks.iter().filter(|c| c.database == name) {
        let started = Instant::now();
        let outcome = match &client {
            Some(client) => database::check_assertion(client, check).await,
            None => not_restored(),
        };
        state.record(format!("check {}", check.name), &component, started, outcome);
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for reference in verification.references.iter().filter(|r| r.database == name) {
        let started = Instant::now();
        let base = format!("references {name} to {}", reference.bucket);
        let count = seen.entry(base.clone()).or_insert(0);
        *count += 1;
        let check = if *count > 1 { format!("{base} #{count}") } else { base };
        let outcome = match (&client, context.bucket_snapshots.get(&reference.bucket)) {
            (Some(client), Some(manifest)) => database::check_references(client, reference, manifest).await,
            (Some(_), None) => Err(format!(
                "bucket {} has no complete snapshot at or before the target {}, so the references cannot be checked",
                reference.bucket, context.target
            )),
            (None, _) => not_restored(),
        };
        state.record(check, &bucket_component(&reference.bucket), started, outcome);
    }
}

/// Restores a sample of the bucket snapshot chosen for the target and checks every object.
async fn check_bucket(context: &Context<'_>, bucket: &Bucket, state: &mut RunState) {
    let started = Instant::now();
    let component = bucket_component(&bucket.name);
    let check = format!("bucket {}", bucket.name);
    let Some(manifest) = context.bucket_snapshots.get(&bucket.name) else {
        let outcome = Err(format!(
            "no complete snapshot of {} at or before the target {}; take a snapshot with `visage-dr run --job bucket:{}`",
            bucket.source_id, context.target, bucket.name
        ));
        state.record(check, &component, started, outcome);
        return;
    };
    let entries = objects::choose_sample(manifest, context.verification.sample_objects as usize, &mut rand::thread_rng());
    let dir = match context_subdir(context, &format!("objects/{}", scratch::file_name(&bucket.name))) {
        Ok(dir) => dir,
        Err(e) => {
            state.record(check, &component, started, Err(e));
            return;
        }
    };
    let result = objects::restore_sample(context.repo, manifest, &entries, &dir).await;
    state.sampled.insert(bucket.name.clone(), result.restored);
    let outcome = if result.problems.is_empty() {
        Ok(format!(
            "{} of {} object(s) of snapshot {} restored into {} ({}); each size and SHA-256 matches the manifest",
            result.restored,
            manifest.entries.len(),
            manifest.id,
            dir.display(),
            report::size_text(result.bytes)
        ))
    } else {
        Err(format!(
            "{} of {} restored object(s) do not match snapshot {}: {}; run `visage-dr check --read-data` to record the damage, so that the next snapshot stores the objects again",
            result.problems.len(),
            entries.len(),
            manifest.id,
            objects::list_problems(&result.problems)
        ))
    };
    state.record(check, &component, started, outcome);
}

fn context_subdir(context: &Context<'_>, name: &str) -> Result<PathBuf, String> {
    let path = context.run_dir.join(name);
    std::fs::create_dir_all(&path).map_err(|e| format!("cannot create the scratch directory {}: {e}", path.display()))?;
    Ok(path)
}

/// Restores a job's checkpoint into a scratch file and checks its hash.
async fn check_checkpoint(context: &Context<'_>, checkpoint: &CheckpointRecord, state: &mut RunState) {
    let started = Instant::now();
    let component = checkpoint_component(&checkpoint.job);
    let check = format!("checkpoint {}", checkpoint.job);
    let outcome = async {
        let dir = context_subdir(context, "checkpoints")?;
        let manifest = context.repo.load_manifest(&checkpoint.snapshot).await.map_err(|e| e.to_string())?;
        let entry = manifest
            .entries
            .iter()
            .find(|e| e.key == checkpoint.step)
            .ok_or_else(|| format!("snapshot {} has no entry for step {}", checkpoint.snapshot, checkpoint.step))?;
        let cache = crate::repository::pack_cache::PackCache::new(context.repo.clone(), 4);
        let path = dir.join(scratch::file_name(&checkpoint.job));
        objects::restore_entry(&cache, &checkpoint.snapshot, entry, &path).await.map_err(|p| p.to_string())?;
        Ok(format!(
            "step {} of snapshot {} restored ({}); its SHA-256 {} matches",
            checkpoint.step,
            checkpoint.snapshot,
            report::size_text(checkpoint.size),
            checkpoint.sha256
        ))
    }
    .await;
    state.record(check, &component, started, outcome);
}

/// Stops the scratch instances and removes the run directory, unless `keep`. Returns the
/// instances left running.
async fn teardown(state: &mut RunState, run_dir: &mut ScratchRun, keep: bool) -> Vec<KeptInstance> {
    let started = Instant::now();
    state.clients.clear();
    if keep {
        let kept: Vec<KeptInstance> = state
            .instances
            .drain(..)
            .map(|(database, instance)| KeptInstance {
                database,
                socket_dir: instance.socket_dir.clone(),
                port: instance.port,
                user: instance.user.clone(),
                dbname: instance.dbname.clone(),
                stop_command: instance.stop_command.clone(),
            })
            .collect();
        if let Err(e) = run_dir.keep(Utc::now()) {
            warn!(error = %e, "could not extend the time-to-live of the kept scratch directory");
        }
        info!(scratch.path = %run_dir.path.display(), scratch.expires = %run_dir.marker.expires, "scratch resources kept");
        return kept;
    }
    let mut problems = Vec::new();
    for (database, instance) in state.instances.drain(..) {
        if let Err(e) = instance.stop().await {
            // The directory removal below signals the postmaster directly.
            warn!(pg.database = %database, error = %e, "pg_ctl stop failed; stopping the instance by signal");
        }
    }
    let path = run_dir.path.clone();
    if let Err(e) = run_dir.remove().await {
        problems.push(e.to_string());
    }
    let outcome = if problems.is_empty() {
        Ok(format!("scratch instances stopped and {} removed", path.display()))
    } else {
        Err(format!("teardown incomplete: {}; a later run removes the directory after its time-to-live", problems.join("; ")))
    };
    state.record("teardown".into(), "run", started, outcome);
    Vec::new()
}

struct BuildInput<'a> {
    id: ReportId,
    policy: &'a Policy,
    repo: &'a Repository,
    started: DateTime<Utc>,
    finished: DateTime<Utc>,
    choice: &'a Choice,
    checks_done: f64,
    state: RunState,
    bucket_snapshots: &'a HashMap<String, Manifest>,
    checkpoints: &'a [CheckpointRecord],
    scratch: ScratchReport,
}

fn seconds_between(later: DateTime<Utc>, earlier: DateTime<Utc>) -> f64 {
    (later - earlier).num_milliseconds() as f64 / 1000.0
}

fn build_report(input: BuildInput<'_>) -> Report {
    let state = input.state;
    let target = state.latest_target.unwrap_or(input.choice.target.as_datetime());
    let failed = |component: &str| state.checks.iter().any(|c| c.result == Outcome::Fail && c.component.as_deref() == Some(component));
    let outcome_of = |component: &str, present: bool| if present && !failed(component) { Outcome::Pass } else { Outcome::Fail };

    let mut components = Vec::new();
    for database in &input.policy.postgres {
        let component = database_component(&database.spec.name);
        let restored = state.databases.iter().any(|d| d.name == database.spec.name && d.ready_seconds.is_some());
        let result = outcome_of(&component, restored);
        components.push(ComponentReport { restorable_time: (result == Outcome::Pass).then_some(target), component, result });
    }
    let mut buckets = Vec::new();
    for bucket in &input.policy.buckets {
        let component = bucket_component(&bucket.name);
        let manifest = input.bucket_snapshots.get(&bucket.name);
        let result = outcome_of(&component, manifest.is_some());
        components.push(ComponentReport {
            component,
            result,
            restorable_time: manifest.filter(|_| result == Outcome::Pass).map(|m| m.time),
        });
        buckets.push(BucketReport {
            name: bucket.name.clone(),
            source: bucket.source_id.clone(),
            snapshot: manifest.map(|m| m.id.clone()),
            snapshot_time: manifest.map(|m| m.time),
            skew_seconds: manifest.map(|m| seconds_between(target, m.time)),
            objects: manifest.map(|m| m.entries.len() as u64).unwrap_or(0),
            sampled: state.sampled.get(&bucket.name).copied().unwrap_or(0),
        });
    }
    let mut checkpoints = Vec::new();
    for record in input.checkpoints {
        let component = checkpoint_component(&record.job);
        let result = outcome_of(&component, true);
        components.push(ComponentReport { restorable_time: (result == Outcome::Pass).then_some(record.time), component, result });
        checkpoints.push(CheckpointReport {
            job: record.job.clone(),
            step: record.step.clone(),
            snapshot: record.snapshot.clone(),
            time: record.time,
            skew_seconds: seconds_between(target, record.time),
            size: record.size,
        });
    }

    let failed_checks: Vec<&CheckReport> = state.checks.iter().filter(|c| c.result == Outcome::Fail).collect();
    let failed_components = components.iter().filter(|c| c.result == Outcome::Fail).count();
    let result = if failed_checks.is_empty() && failed_components == 0 { Outcome::Pass } else { Outcome::Fail };
    let failure = (result == Outcome::Fail).then(|| {
        let named: Vec<String> = failed_checks.iter().map(|c| format!("check \"{}\" failed: {}", c.name, c.details)).collect();
        if named.is_empty() {
            "a component was not verified".to_owned()
        } else {
            named.join("; ")
        }
    });
    // The newest change that every restored database contains is the oldest of their newest
    // changes, and the RPO is measured from there to the target.
    let newest_change = if state.databases.is_empty() || state.databases.iter().any(|d| d.newest_change.is_none()) {
        None
    } else {
        state.databases.iter().filter_map(|d| d.newest_change).min()
    };
    Report {
        schema: REPORT_SCHEMA.to_owned(),
        version: REPORT_VERSION,
        id: input.id,
        repository: input.repo.url().to_string(),
        started: input.started,
        finished: input.finished,
        target_time: target,
        target_choice: input.choice.choice,
        window: input.choice.window,
        result,
        failure,
        rto_seconds: state.ready_seconds,
        rto_checks_seconds: input.checks_done,
        rpo_seconds: newest_change.map(|newest| seconds_between(target, newest)),
        newest_change,
        databases: state.databases,
        buckets,
        checkpoints,
        checks: state.checks,
        components,
        scratch: input.scratch,
    }
}

/// Records each bucket and checkpoint snapshot that passed under `catalogue/verified/`, which
/// prune keeps as the newest verified snapshot of its source.
async fn record_verified(repo: &Repository, report: &Report, buckets: &HashMap<String, Manifest>, checkpoints: &[CheckpointRecord]) {
    let passed = |component: String| report.components.iter().any(|c| c.component == component && c.result == Outcome::Pass);
    let mut verified: Vec<&SnapshotId> = Vec::new();
    for (name, manifest) in buckets {
        if passed(bucket_component(name)) {
            verified.push(&manifest.id);
        }
    }
    for record in checkpoints {
        if passed(checkpoint_component(&record.job)) {
            verified.push(&record.snapshot);
        }
    }
    for id in verified {
        let body = serde_json::json!({ "snapshot": id, "report": report.id, "verified": rfc3339(report.finished) });
        let key = crate::prune::verified_key(id);
        match repo.backend().put(&key, Bytes::from(body.to_string())).await {
            Ok(()) => info!(snapshot.id = %id, "snapshot recorded as verified"),
            Err(e) => warn!(snapshot.id = %id, error = %e, "could not record the snapshot as verified; prune treats it as unverified"),
        }
    }
}

/// Renders the report, writes it into `report_dir` when given, and stores it in the
/// repository. Returns the file locations.
async fn store_report(repo: &Repository, report: &Report, report_dir: Option<&std::path::Path>) -> Result<Vec<String>, ReportError> {
    let history = match report::load_recent(repo, report::CHART_RUNS - 1).await {
        Ok(history) => history,
        Err(e) => {
            warn!(error = %e, "could not read earlier reports; the chart shows this run only");
            Vec::new()
        }
    };
    let files = report::render(report, &history);
    let mut locations = Vec::new();
    if let Some(dir) = report_dir {
        locations.extend(report::write_dir(dir, &files)?.into_iter().map(|p| p.display().to_string()));
    }
    let mut stored = report::store(repo, report, &files).await?;
    stored.append(&mut locations);
    Ok(stored)
}
