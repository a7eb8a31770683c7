//! Whole-stack restore: the policy's databases, buckets and checkpoints
//! brought back to one instant.
//!
//! [`plan`] chooses, per component, what is restored and where, and creates
//! nothing. [`execute`] carries a plan out: databases first (so the
//! cross-component reference check can query them), then buckets, then
//! checkpoints. Everything goes beside the original by default. A database
//! goes into a new local instance or, with the cnpg driver, into a new CNPG
//! Cluster `<cluster>-<suffix>`. A bucket goes into `<bucket>-<suffix>`, and
//! checkpoints into a directory. A restore run again with the same arguments resumes: objects
//! and checkpoint files already written with the right content are skipped,
//! and a database restored by an earlier run is reused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::cnpg::resources::Cluster;
use crate::cnpg::restore::{self as cnpg_restore, RestoreSettings, MAX_CLUSTER_NAME};
use crate::cnpg::{self, CnpgError};
use crate::id::SnapshotId;
use crate::policy::Policy;
use crate::postgres::config::{DatabaseSpec, Driver};
use crate::postgres::local::{self, RestoreRequest, Tools};
use crate::postgres::store::ArchiveStore;
use crate::postgres::target_time::TargetTime;
use crate::repository::manifest::Manifest;
use crate::repository::{RepoError, Repository};
use crate::sources::bucket::{self, RestoreOptions};
use crate::sources::checkpoint::{self, Catalogue, CheckpointRecord, FileRestore};

/// Name of the file that marks a database directory as completely restored.
pub const DONE_MARKER: &str = "visage-dr-restore.json";

/// Storage size of a restored CNPG Cluster's instance when neither `--storage-size` nor
/// a readable source Cluster gives one.
pub const CNPG_STORAGE_SIZE: &str = "10Gi";

/// Number of missing referenced keys listed by name.
const MISSING_LISTED: usize = 20;

/// The components a restore covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Components {
    pub postgres: bool,
    pub buckets: bool,
    pub checkpoints: bool,
}

impl Components {
    pub const ALL: Components = Components { postgres: true, buckets: true, checkpoints: true };

    /// Parses a comma-separated list such as `postgres,buckets`.
    pub fn parse(list: &str) -> Result<Components, String> {
        let mut c = Components { postgres: false, buckets: false, checkpoints: false };
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "postgres" => c.postgres = true,
                "buckets" => c.buckets = true,
                "checkpoints" => c.checkpoints = true,
                other => {
                    return Err(format!(
                        "unknown component {other:?} in --only {list:?}; use a comma-separated list of postgres, buckets and checkpoints"
                    ))
                }
            }
        }
        if c == (Components { postgres: false, buckets: false, checkpoints: false }) {
            return Err(format!("--only {list:?} names no component; use postgres, buckets or checkpoints"));
        }
        Ok(c)
    }
}

/// The operator's request: target, components and destinations.
#[derive(Debug, Clone)]
pub struct StackRequest {
    pub target: TargetTime,
    pub only: Components,
    /// Appended to bucket names and database directories: `<name>-<suffix>`.
    pub suffix: String,
    /// Buckets are restored into themselves instead of `<bucket>-<suffix>`.
    pub in_place: bool,
    /// Objects with other content in a target bucket are replaced.
    pub overwrite: bool,
    pub checkpoints_to: PathBuf,
    /// Directory that receives one `<database>-<suffix>` directory per restored database.
    pub databases_to: PathBuf,
    pub recovery_timeout: Duration,
    pub progress: bool,
    /// Storage of each recovery Cluster; `None` copies the source Cluster's.
    pub storage_size: Option<String>,
    /// PostgreSQL image of each recovery Cluster; `None` copies the source Cluster's.
    pub image_name: Option<String>,
}

/// Checks a suffix: it becomes part of bucket names, so lowercase letters,
/// digits and `-` only.
pub fn check_suffix(suffix: &str) -> Result<(), String> {
    let ok = !suffix.is_empty()
        && suffix.len() <= 40
        && suffix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !suffix.starts_with('-')
        && !suffix.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid --suffix {suffix:?}: it becomes part of bucket names, so use 1 to 40 lowercase letters, digits and inner '-'"
        ))
    }
}

/// Default suffix for a target: `restored-<YYYYMMDDHHMMSS>`.
pub fn default_suffix(target: &TargetTime) -> String {
    format!("restored-{}", target.as_datetime().format("%Y%m%d%H%M%S"))
}

/// The restore of one database.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseStep {
    pub name: String,
    pub base_backup: String,
    #[serde(serialize_with = "crate::repository::manifest::rfc3339_utc")]
    pub base_backup_end: DateTime<Utc>,
    pub wal_first: String,
    pub wal_last: String,
    /// Target of the restore: a local instance or a CNPG Cluster.
    pub into: DatabaseTarget,
    /// An earlier run restored this target there: the local directory contains a completed
    /// restore, or the CNPG Cluster carries the same target and base backup.
    pub already_restored: bool,
    #[serde(skip)]
    work: DatabaseWork,
    #[serde(skip)]
    spec: DatabaseSpec,
}

/// The new instance a database is restored into.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "driver", rename_all = "snake_case")]
pub enum DatabaseTarget {
    /// A local PostgreSQL instance in this directory.
    Local { directory: PathBuf },
    /// A CNPG Cluster, reached through its `<name>-rw` Service.
    Cnpg {
        namespace: String,
        cluster: String,
        service: String,
        storage_size: String,
        /// `None`: the operator's default image.
        #[serde(skip_serializing_if = "Option::is_none")]
        image_name: Option<String>,
    },
}

impl std::fmt::Display for DatabaseTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseTarget::Local { directory } => write!(f, "a new instance in {}", directory.display()),
            DatabaseTarget::Cnpg { namespace, cluster, storage_size, image_name, .. } => {
                let image = image_name.as_deref().unwrap_or("the operator's default image");
                write!(f, "the new Cluster {namespace}/{cluster} ({storage_size} of storage, {image})")
            }
        }
    }
}

/// Input of [`execute`] for one database.
#[derive(Debug, Clone, Default)]
enum DatabaseWork {
    /// Nothing: an earlier run restored it into a local directory.
    #[default]
    Done,
    Local(Box<local::RestorePlan>),
    /// The recovery Cluster to apply, or to wait for when an earlier run applied it.
    Cnpg(Box<Cluster>),
}

/// The restore of one bucket.
#[derive(Debug, Clone, Serialize)]
pub struct BucketStep {
    pub name: String,
    pub bucket: String,
    pub snapshot: SnapshotId,
    #[serde(serialize_with = "crate::repository::manifest::rfc3339_utc")]
    pub snapshot_time: DateTime<Utc>,
    /// Seconds between the snapshot and the target: objects written in between are not restored.
    pub skew_seconds: i64,
    pub to_bucket: String,
    pub objects: u64,
    pub bytes: u64,
    /// With --in-place, the keys whose other content would be replaced.
    pub would_overwrite: Vec<String>,
    #[serde(skip)]
    manifest: Manifest,
    #[serde(skip)]
    s3: crate::s3::S3Overrides,
}

/// The restore of one training job's checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointStep {
    pub job: String,
    pub step: String,
    #[serde(serialize_with = "crate::repository::manifest::rfc3339_utc")]
    pub time: DateTime<Utc>,
    pub skew_seconds: i64,
    pub size: u64,
    pub sha256: String,
    pub to_file: PathBuf,
    #[serde(skip)]
    record: CheckpointRecord,
}

/// Everything a restore will do, and what it will not.
#[derive(Debug, Clone, Serialize)]
pub struct StackPlan {
    #[serde(serialize_with = "crate::repository::manifest::rfc3339_utc")]
    pub target_time: DateTime<Utc>,
    pub databases: Vec<DatabaseStep>,
    pub buckets: Vec<BucketStep>,
    pub checkpoints: Vec<CheckpointStep>,
    /// Statements of what the restore will not do, printed with the plan.
    pub refusals: Vec<String>,
    /// Components that cannot be restored to the target; a plan with problems is not executed.
    pub problems: Vec<String>,
}

/// Failure of a restore that stops it before or between components.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Repository(#[from] RepoError),
    #[error("the restore cannot start: {}", .0.join("; "))]
    Problems(Vec<String>),
    #[error("the policy has a cnpg database, but no Kubernetes client was given to the restore")]
    NoKubeClient,
}

/// Returns whether `policy` has a database restored through the Kubernetes API.
pub fn needs_kubernetes(policy: &Policy, only: Components) -> bool {
    only.postgres && policy.postgres.iter().any(|db| db.spec.driver == Driver::Cnpg)
}

/// Completion record written into a restored database's directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DoneMarker {
    target_time: String,
    backup_id: String,
    port: u16,
    socket_dir: PathBuf,
    user: String,
    dbname: String,
    pid: u32,
    stop_command: String,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Formats a skew as `3 h 59 m`, `12 m 5 s` or `40 s`.
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec} s"),
        (0, 0, _) => format!("{m} m {sec} s"),
        (0, _, _) => format!("{h} h {m} m"),
        _ => format!("{d} d {h} h"),
    }
}

fn read_marker(dir: &Path) -> Option<DoneMarker> {
    let text = std::fs::read_to_string(dir.join(DONE_MARKER)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Plans the restore of `policy` to `req.target`. Creates nothing.
///
/// `kube` reaches the API server of the cnpg databases. With `None` (a dry run) no API is
/// contacted, so the plan cannot tell whether an earlier run created a recovery Cluster.
pub async fn plan(
    policy: &Policy,
    repo: &Arc<Repository>,
    req: &StackRequest,
    kube: Option<&kube::Client>,
) -> Result<StackPlan, RepoError> {
    let target = req.target.as_datetime();
    let now = Utc::now();
    let mut plan = StackPlan {
        target_time: target,
        databases: Vec::new(),
        buckets: Vec::new(),
        checkpoints: Vec::new(),
        refusals: Vec::new(),
        problems: Vec::new(),
    };
    if req.only.postgres {
        plan.refusals.push("a database is never restored over its source: each one goes into a new instance or Cluster".into());
        let tools = Tools::from_env();
        for db in &policy.postgres {
            let spec = &db.spec;
            let planned = match spec.driver {
                Driver::Local => {
                    let into = req.databases_to.join(format!("{}-{}", spec.name, req.suffix));
                    plan_database(spec, &tools, &into, req, now).await
                }
                Driver::Cnpg => plan_cnpg_database(spec, req, now, kube).await,
            };
            match planned {
                Ok(step) => plan.databases.push(step),
                Err(e) => plan.problems.push(format!("postgres {}: {e}", spec.name)),
            }
        }
    }
    if req.only.buckets {
        if !req.overwrite {
            plan.refusals.push("objects with other content in a target bucket are not replaced without --overwrite".into());
        }
        for b in &policy.buckets {
            let manifest = match bucket::snapshot_at(repo, Some(&b.source_id), target).await {
                Ok(m) => m,
                Err(e) => {
                    plan.problems.push(format!("bucket {}: {e}", b.name));
                    continue;
                }
            };
            let to_bucket = if req.in_place { b.bucket.clone() } else { format!("{}-{}", b.bucket, req.suffix) };
            let mut step = BucketStep {
                name: b.name.clone(),
                bucket: b.bucket.clone(),
                snapshot: manifest.id.clone(),
                snapshot_time: manifest.time,
                skew_seconds: (target - manifest.time).num_seconds(),
                to_bucket,
                objects: manifest.entries.len() as u64,
                bytes: manifest.entries.iter().map(|e| e.size).sum(),
                would_overwrite: Vec::new(),
                manifest,
                s3: b.s3.clone(),
            };
            if req.in_place {
                // A dry run of the bucket restore lists what would be replaced.
                let probe = bucket::restore(repo.clone(), &step.manifest, restore_options(&step, req, true)).await;
                match probe {
                    Ok(report) => step.would_overwrite = report.overwritten,
                    Err(e) => plan.problems.push(format!("bucket {}: {e}", b.name)),
                }
                if !step.would_overwrite.is_empty() && !req.overwrite {
                    plan.problems.push(format!(
                        "bucket {}: --in-place would replace {} object(s) with other content (first: {:?}); add --overwrite to replace them",
                        b.name,
                        step.would_overwrite.len(),
                        step.would_overwrite[0]
                    ));
                }
            }
            plan.buckets.push(step);
        }
    }
    if req.only.checkpoints {
        let catalogue = Catalogue::new();
        catalogue.refresh(repo).await?;
        for (job, record) in checkpoint::newest_at(&catalogue, target).await {
            plan.checkpoints.push(CheckpointStep {
                to_file: req.checkpoints_to.join(&job).join(&record.step),
                job,
                step: record.step.clone(),
                time: record.time,
                skew_seconds: (target - record.time).num_seconds(),
                size: record.size,
                sha256: record.sha256.to_hex(),
                record,
            });
        }
    }
    Ok(plan)
}

async fn plan_database(spec: &DatabaseSpec, tools: &Tools, into: &Path, req: &StackRequest, now: DateTime<Utc>) -> Result<DatabaseStep, String> {
    let store = ArchiveStore::open(&spec.object_store).map_err(|e| e.to_string())?;
    let catalogue = store.read_catalogue().await.map_err(|e| e.to_string())?;
    if let Some(marker) = read_marker(into) {
        if marker.target_time == rfc3339(req.target.as_datetime()) {
            let backup = catalogue.backups.iter().find(|b| b.backup.id.as_str() == marker.backup_id);
            return Ok(DatabaseStep {
                name: spec.name.clone(),
                base_backup: marker.backup_id.clone(),
                base_backup_end: backup.map_or(req.target.as_datetime(), |b| b.backup.end_time),
                wal_first: String::new(),
                wal_last: String::new(),
                into: DatabaseTarget::Local { directory: into.to_path_buf() },
                already_restored: true,
                work: DatabaseWork::Done,
                spec: spec.clone(),
            });
        }
        return Err(format!(
            "{} holds a restore to {}, not to this target; choose another --suffix or remove the directory",
            into.display(),
            marker.target_time
        ));
    }
    let request = RestoreRequest {
        target: req.target.clone(),
        to_end_of_archive: false,
        into: into.to_path_buf(),
        port: None,
        timeout: req.recovery_timeout,
    };
    let p = local::plan_restore(spec, tools, &store, &catalogue, &request, now).map_err(|e| e.to_string())?;
    Ok(DatabaseStep {
        name: spec.name.clone(),
        base_backup: p.plan.backup.id.to_string(),
        base_backup_end: p.plan.backup.end_time,
        wal_first: p.plan.wal_first.to_string(),
        wal_last: p.plan.wal_last.to_string(),
        into: DatabaseTarget::Local { directory: into.to_path_buf() },
        already_restored: false,
        work: DatabaseWork::Local(Box::new(p)),
        spec: spec.clone(),
    })
}

/// Plans a cnpg database: the base backup from the archive's catalogue, as `restore
/// postgres` chooses it, and the recovery Cluster `<cluster>-<suffix>` in the source's
/// namespace. With `kube`, an existing Cluster of that name is reused when it carries the
/// same restore target, and is a problem otherwise.
async fn plan_cnpg_database(
    spec: &DatabaseSpec,
    req: &StackRequest,
    now: DateTime<Utc>,
    kube: Option<&kube::Client>,
) -> Result<DatabaseStep, String> {
    let source = cnpg::backup::Target::of(spec).map_err(|e| e.to_string())?;
    let name = format!("{}-{}", source.cluster, req.suffix);
    if name.len() > MAX_CLUSTER_NAME {
        return Err(format!(
            "the new Cluster's name {name:?} has {} characters, more than the {MAX_CLUSTER_NAME} CNPG allows; pass a shorter --suffix",
            name.len()
        ));
    }
    let store = ArchiveStore::open(&spec.object_store).map_err(|e| e.to_string())?;
    let catalogue = store.read_catalogue().await.map_err(|e| e.to_string())?;
    let chosen = catalogue.select_base_backup(req.target.as_datetime(), now, false).map_err(|e| e.to_string())?;
    // The recovery Cluster gets the source Cluster's storage size and image
    // unless the request names them. A dry run reads no Cluster, so its plan
    // shows the fallback for what the request leaves open.
    let (source_size, source_image) = match kube {
        Some(client) if req.storage_size.is_none() || req.image_name.is_none() => {
            cnpg::scratch::source_settings_or(client, spec, CNPG_STORAGE_SIZE).await.map_err(|e| e.to_string())?
        }
        _ => (CNPG_STORAGE_SIZE.to_owned(), None),
    };
    let settings = RestoreSettings {
        name: name.clone(),
        namespace: source.namespace.clone(),
        target: req.target.clone(),
        recover_to_end_of_archive: chosen.stops_at_end_of_archive,
        backup_id: chosen.backup.id.to_string(),
        instances: 1,
        storage_size: req.storage_size.clone().unwrap_or(source_size),
        image_name: req.image_name.clone().or(source_image),
    };
    let manifest = cnpg_restore::cluster_manifest(spec, &settings).map_err(|e| e.to_string())?;

    let mut already_restored = false;
    if let Some(client) = kube {
        let existing = cnpg_restore::existing_restore_target(client, &settings.namespace, &name)
            .await
            .map_err(|e| e.to_string())?;
        match existing {
            None => {}
            Some(found) if found == settings.restore_target() => already_restored = true,
            Some(found) => {
                let holds = if found.is_empty() {
                    format!("has no {} annotation, so it is not a restore of this run", cnpg_restore::RESTORE_TARGET_ANNOTATION)
                } else {
                    format!("carries the restore target {found:?}, not {:?}", settings.restore_target())
                };
                return Err(format!(
                    "Cluster {}/{name} already exists and {holds}; choose another --suffix or delete that Cluster",
                    settings.namespace
                ));
            }
        }
    }
    Ok(DatabaseStep {
        name: spec.name.clone(),
        base_backup: settings.backup_id.clone(),
        base_backup_end: chosen.backup.end_time,
        wal_first: chosen.wal_first.to_string(),
        wal_last: chosen.wal_last.to_string(),
        into: DatabaseTarget::Cnpg {
            namespace: settings.namespace.clone(),
            service: format!("{name}-rw"),
            cluster: name,
            storage_size: settings.storage_size.clone(),
            image_name: settings.image_name.clone(),
        },
        already_restored,
        work: DatabaseWork::Cnpg(Box::new(manifest)),
        spec: spec.clone(),
    })
}

fn restore_options(step: &BucketStep, req: &StackRequest, dry_run: bool) -> RestoreOptions {
    RestoreOptions {
        to_bucket: step.to_bucket.clone(),
        prefix: String::new(),
        s3: step.s3.clone(),
        overwrite: req.overwrite,
        dry_run,
        concurrency: bucket::DEFAULT_RESTORE_CONCURRENCY,
        multipart_threshold: bucket::DEFAULT_MULTIPART_THRESHOLD,
        part_size: bucket::DEFAULT_PART_SIZE,
        create_bucket: true,
        progress: req.progress && !dry_run,
    }
}

/// Outcome of one component.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentResult {
    pub component: String,
    pub name: String,
    pub ok: bool,
    pub seconds: f64,
    pub detail: String,
}

/// Result of the cross-component reference check of one policy query.
#[derive(Debug, Clone, Serialize)]
pub struct ReferenceResult {
    pub database: String,
    pub bucket: String,
    pub query: String,
    pub keys_checked: u64,
    pub missing_count: u64,
    /// The first missing keys, at most 20.
    pub missing: Vec<String>,
    /// Reason the check could not run, if it could not.
    pub error: Option<String>,
}

/// Outcome of a restore: each component, the reference checks, the RTO and the switch-over steps.
#[derive(Debug, Clone, Serialize)]
pub struct StackOutcome {
    pub components: Vec<ComponentResult>,
    pub references: Vec<ReferenceResult>,
    /// Seconds from the start of the restore until every component was done: the measured RTO.
    pub rto_seconds: f64,
    /// Steps that move the application onto what was restored.
    pub switch_over: Vec<String>,
}

impl ComponentResult {
    fn new(component: &str, name: &str, started: Instant, (ok, detail): (bool, String)) -> ComponentResult {
        ComponentResult { component: component.into(), name: name.into(), ok, seconds: started.elapsed().as_secs_f64(), detail }
    }
}

impl StackOutcome {
    pub fn ok(&self) -> bool {
        self.components.iter().all(|c| c.ok) && self.references.iter().all(|r| r.missing_count == 0 && r.error.is_none())
    }
}

/// Carries out `plan`. Components fail one by one; the outcome lists each. `kube` must be
/// given when the plan has a cnpg database.
pub async fn execute(
    policy: &Policy,
    repo: Arc<Repository>,
    plan: &StackPlan,
    req: &StackRequest,
    kube: Option<&kube::Client>,
) -> Result<StackOutcome, RestoreError> {
    if !plan.problems.is_empty() {
        return Err(RestoreError::Problems(plan.problems.clone()));
    }
    if kube.is_none() && plan.databases.iter().any(|d| matches!(d.into, DatabaseTarget::Cnpg { .. })) {
        return Err(RestoreError::NoKubeClient);
    }
    let clock = Instant::now();
    let mut out = StackOutcome { components: Vec::new(), references: Vec::new(), rto_seconds: 0.0, switch_over: Vec::new() };
    let mut clients: HashMap<String, tokio_postgres::Client> = HashMap::new();

    for step in &plan.databases {
        let started = Instant::now();
        // The drivers' own spans name the database, the backup and the Cluster.
        let result = match (&step.work, kube) {
            (DatabaseWork::Cnpg(manifest), Some(kube)) => restore_cnpg_database(step, manifest, req, kube).await,
            _ => restore_local_database(step, plan.target_time).await,
        };
        let (ok, detail) = match result {
            Ok(restored) => {
                out.switch_over.push(restored.switch_over);
                match restored.client {
                    Ok(client) => {
                        clients.insert(step.name.clone(), client);
                    }
                    Err(e) => warn!(pg.database = %step.name, error = %e, "cannot connect to the restored database for the reference check"),
                }
                (true, restored.detail)
            }
            Err(e) => (false, e),
        };
        out.components.push(ComponentResult::new("postgres", &step.name, started, (ok, detail)));
    }

    for step in &plan.buckets {
        let started = Instant::now();
        info!(bucket.name = %step.name, snapshot.id = %step.snapshot, s3.bucket = %step.to_bucket, "restoring a bucket");
        let (ok, detail) = match bucket::restore(repo.clone(), &step.manifest, restore_options(step, req, false)).await {
            Ok(r) => {
                if !req.in_place {
                    out.switch_over.push(format!(
                        "bucket {}: point the application from {} to {}, or copy it back with `visage-dr restore --only buckets --in-place --overwrite`",
                        step.name, step.bucket, step.to_bucket
                    ));
                }
                (true, format!("{} object(s) written, {} already present", r.objects_written, r.identical))
            }
            Err(e) => (false, e.to_string()),
        };
        out.components.push(ComponentResult::new("buckets", &step.name, started, (ok, detail)));
    }

    for step in &plan.checkpoints {
        let started = Instant::now();
        let (ok, detail) = match checkpoint::restore_to_file(&repo, &step.record, &step.to_file).await {
            Ok(FileRestore::Written) => (true, format!("written to {}", step.to_file.display())),
            Ok(FileRestore::AlreadyPresent) => (true, format!("already present at {}", step.to_file.display())),
            Err(e) => (false, e.to_string()),
        };
        out.components.push(ComponentResult::new("checkpoints", &step.job, started, (ok, detail)));
    }
    if !plan.checkpoints.is_empty() {
        out.switch_over.push(format!("checkpoints: resume training from the files under {}", req.checkpoints_to.display()));
    }
    out.rto_seconds = clock.elapsed().as_secs_f64();

    if let Some(v) = &policy.verification {
        for r in &v.references {
            let (Some(client), Some(step)) = (clients.get(&r.database), plan.buckets.iter().find(|b| b.name == r.bucket)) else {
                continue;
            };
            out.references.push(check_references(client, r, &step.manifest).await);
        }
    }
    Ok(out)
}

/// A restored database: the summary detail, the switch-over step, and a connection for
/// the reference check.
struct RestoredDatabase {
    detail: String,
    switch_over: String,
    client: Result<tokio_postgres::Client, String>,
}

async fn restore_local_database(step: &DatabaseStep, target: DateTime<Utc>) -> Result<RestoredDatabase, String> {
    let DatabaseTarget::Local { directory } = &step.into else {
        return Err(format!("postgres {}: a local restore needs a directory", step.name));
    };
    let marker = restore_database(step, directory, target).await?;
    let switch_over = format!(
        "postgres {}: point the application at 127.0.0.1:{} (socket {}, user {}, database {}); stop this instance with: {}",
        step.name,
        marker.port,
        marker.socket_dir.display(),
        marker.user,
        marker.dbname,
        marker.stop_command
    );
    let connection = step.spec.connection.as_ref();
    let client = local::connect_socket(&marker.socket_dir, marker.port, &marker.user, &marker.dbname, connection)
        .await
        .map_err(|e| e.to_string());
    let how = if step.already_restored { "restored by an earlier run" } else { "restored" };
    Ok(RestoredDatabase {
        detail: format!("{how} into {}, port {}", directory.display(), marker.port),
        switch_over,
        client,
    })
}

/// Applies the recovery Cluster and waits until it is ready, or, when an earlier run
/// applied it, waits for that Cluster. Then connects with the `<name>-superuser` Secret.
async fn restore_cnpg_database(
    step: &DatabaseStep,
    manifest: &Cluster,
    req: &StackRequest,
    kube: &kube::Client,
) -> Result<RestoredDatabase, String> {
    let DatabaseTarget::Cnpg { namespace, cluster, service, .. } = &step.into else {
        return Err(format!("postgres {}: a cnpg restore needs a Cluster", step.name));
    };
    let show = req.progress;
    let mut progress = |line: &str| {
        if show {
            eprintln!("postgres {}: {line}", step.name);
        }
    };
    let connection = if step.already_restored {
        cnpg_restore::wait_existing(kube.clone(), namespace, cluster, req.recovery_timeout, &mut progress).await
    } else {
        cnpg_restore::apply_and_wait(kube.clone(), manifest, req.recovery_timeout, &mut progress).await
    }
    .map_err(|e: CnpgError| e.to_string())?;
    let client = connect_cnpg(&connection).await;
    let how = if step.already_restored { "restored by an earlier run" } else { "restored" };
    Ok(RestoredDatabase {
        detail: format!("{how} into Cluster {namespace}/{cluster}"),
        switch_over: format!(
            "postgres {}: point the application at Service {service} in namespace {namespace} (Cluster {cluster}; user, password and database in Secret {})",
            step.name, connection.secret
        ),
        client,
    })
}

/// Connects with the details of a `<name>-superuser` Secret.
async fn connect_cnpg(connection: &cnpg_restore::Connection) -> Result<tokio_postgres::Client, String> {
    let missing = |key: &str| format!("Secret {} has no {key:?} key", connection.secret);
    let host = connection.host.as_deref().ok_or_else(|| missing("host"))?;
    let port_text = connection.port.as_deref().unwrap_or("5432");
    let port: u16 = port_text
        .parse()
        .map_err(|_| format!("Secret {} has the invalid port {port_text:?}", connection.secret))?;
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(connection.username.as_deref().ok_or_else(|| missing("username"))?)
        .dbname(connection.dbname.as_deref().unwrap_or("postgres"))
        .connect_timeout(Duration::from_secs(10));
    if let Some(password) = connection.password.as_deref().filter(|p| !p.is_empty()) {
        config.password(password);
    }
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect to {host}:{port} with Secret {}: {e}", connection.secret))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "connection to the restored Cluster ended");
        }
    });
    Ok(client)
}

async fn restore_database(step: &DatabaseStep, directory: &Path, target: DateTime<Utc>) -> Result<DoneMarker, String> {
    let DatabaseWork::Local(plan) = &step.work else {
        return read_marker(directory).ok_or_else(|| format!("{} lost its completion record", directory.display()));
    };
    let store = ArchiveStore::open(&step.spec.object_store).map_err(|e| e.to_string())?;
    let instance = local::restore(plan, &store).await.map_err(|e| e.to_string())?;
    let marker = DoneMarker {
        target_time: rfc3339(target),
        backup_id: instance.backup_id.to_string(),
        port: instance.port,
        socket_dir: instance.socket_dir.clone(),
        user: instance.user.clone(),
        dbname: instance.dbname.clone(),
        pid: instance.pid,
        stop_command: instance.stop_command.clone(),
    };
    let path = directory.join(DONE_MARKER);
    std::fs::write(&path, serde_json::to_vec_pretty(&marker).expect("marker serialises"))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(marker)
}

/// Runs a reference query on a restored database and checks that every key
/// it returns is an object of the restored bucket snapshot.
async fn check_references(client: &tokio_postgres::Client, r: &crate::policy::ReferenceCheck, manifest: &Manifest) -> ReferenceResult {
    let mut result = ReferenceResult {
        database: r.database.clone(),
        bucket: r.bucket.clone(),
        query: r.query.clone(),
        keys_checked: 0,
        missing_count: 0,
        missing: Vec::new(),
        error: None,
    };
    let rows = match client.query(r.query.as_str(), &[]).await {
        Ok(rows) => rows,
        Err(e) => {
            result.error = Some(format!("the reference query failed: {e}"));
            return result;
        }
    };
    let keys: std::collections::HashSet<&str> = manifest.entries.iter().map(|e| e.key.as_str()).collect();
    for row in rows {
        let key: Option<String> = match row.try_get(0) {
            Ok(k) => k,
            Err(e) => {
                result.error = Some(format!("the reference query must return text keys in its first column: {e}"));
                return result;
            }
        };
        let Some(key) = key else { continue };
        result.keys_checked += 1;
        if !keys.contains(key.as_str()) {
            result.missing_count += 1;
            if result.missing.len() < MISSING_LISTED {
                result.missing.push(key);
            }
        }
    }
    if result.missing_count > 0 {
        warn!(
            pg.database = %r.database,
            bucket.name = %r.bucket,
            missing = result.missing_count,
            "the restored database references objects that the restored bucket lacks"
        );
    }
    result
}
