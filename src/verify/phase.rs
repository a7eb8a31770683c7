//! The check phase of a verification run: restore each database, run the checks of every
//! component, and tear the scratch resources down.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;
use tracing::{info, info_span, warn, Instrument};

use super::scratch::{self, ScratchRun};
use super::{database, objects, Archive, KeptCluster, KeptInstance};
use crate::cnpg::restore::RestoreSettings;
use crate::cnpg::scratch as cnpg_scratch;
use crate::policy::{Bucket, Database, Policy, Verification};
use crate::postgres::config::Driver;
use crate::postgres::local::{self, LocalError, RestoreRequest, RestoredInstance, Tools};
use crate::postgres::target_time::TargetTime;
use crate::report::{self, CheckReport, DatabaseReport, Outcome};
use crate::repository::manifest::Manifest;
use crate::repository::Repository;
use crate::sources::checkpoint::CheckpointRecord;

/// Inputs of the check phase.
pub(super) struct Context<'a> {
    pub(super) policy: &'a Policy,
    pub(super) verification: &'a Verification,
    pub(super) repo: &'a Arc<Repository>,
    pub(super) run_dir: PathBuf,
    pub(super) target: TargetTime,
    pub(super) to_end_of_archive: bool,
    pub(super) clock: Instant,
    pub(super) deadline: Instant,
    pub(super) archives: &'a HashMap<String, Archive>,
    /// The bucket snapshot chosen for the target, by bucket name.
    pub(super) bucket_snapshots: &'a HashMap<String, Manifest>,
    /// The checkpoint chosen for the target, per job.
    pub(super) checkpoints: &'a [CheckpointRecord],
    pub(super) keep: bool,
    /// Start of the run, which names the scratch Clusters.
    pub(super) started: DateTime<Utc>,
    /// Expiry of the run's scratch resources.
    pub(super) expires: DateTime<Utc>,
    /// Kubernetes client and scratch namespace, when the policy has a cnpg database.
    pub(super) kube: Option<&'a KubeScratch>,
}

/// Kubernetes target of cnpg restores: the API client and `verification.scratch_namespace`.
pub(super) struct KubeScratch {
    pub(super) client: kube::Client,
    pub(super) namespace: String,
}

/// A scratch Cluster created by this run, recorded before it is applied so that the
/// teardown deletes it even when the run stops while waiting for it.
pub(super) struct ScratchCluster {
    pub(super) database: String,
    pub(super) namespace: String,
    pub(super) name: String,
}

/// Results of the check phase. They live outside the phase's future, so that a timeout or
/// a signal that drops the future leaves it to the teardown.
#[derive(Default)]
pub(super) struct RunState {
    pub(super) checks: Vec<CheckReport>,
    pub(super) databases: Vec<DatabaseReport>,
    pub(super) instances: Vec<(String, RestoredInstance)>,
    pub(super) clusters: Vec<ScratchCluster>,
    pub(super) clients: HashMap<String, Arc<Client>>,
    /// Objects restored per bucket name.
    pub(super) sampled: HashMap<String, u64>,
    pub(super) ready_seconds: Option<f64>,
    /// With recovery to the end of the archive, the instant every database finished
    /// recovery: the data can be as new as that, so it replaces the target time.
    pub(super) latest_target: Option<DateTime<Utc>>,
}

impl RunState {
    pub(super) fn record(&mut self, name: String, component: &str, started: Instant, outcome: Result<String, String>) {
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

pub(super) fn database_component(name: &str) -> String {
    format!("postgres:{name}")
}

pub(super) fn bucket_component(name: &str) -> String {
    format!("bucket:{name}")
}

pub(super) fn checkpoint_component(job: &str) -> String {
    format!("checkpoints:{job}")
}

/// Restores, checks every component, and leaves what it created in `state`.
pub(super) async fn check_phase(context: &Context<'_>, state: &mut RunState) {
    let databases = &context.policy.postgres;
    for database in databases {
        restore_database(context, database, state).await;
    }
    let all_ready = !databases.is_empty() && state.clients.len() == databases.len();
    if all_ready {
        state.ready_seconds = Some(context.clock.elapsed().as_secs_f64());
    }
    if context.to_end_of_archive {
        let reached = Utc::now();
        state.latest_target = Some(reached);
        info!(verify.target_time = %reached.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "recovery reached the end of the archive; this instant is the report's target time");
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

/// Restores one database through its driver and connects to it.
pub(super) async fn restore_database(context: &Context<'_>, database: &Database, state: &mut RunState) {
    let name = &database.spec.name;
    let component = database_component(name);
    let check = format!("restore {name}");
    let started = Instant::now();
    let span = info_span!("verify.restore", pg.database = %name);
    let outcome = match database.spec.driver {
        Driver::Local => restore_local(context, database, state, started).instrument(span).await,
        Driver::Cnpg => restore_cnpg(context, database, state, started).instrument(span).await,
    };
    state.record(check, &component, started, outcome);
}

/// Restores a local-driver database into the run's scratch directory and connects to it.
async fn restore_local(context: &Context<'_>, database: &Database, state: &mut RunState, started: Instant) -> Result<String, String> {
    let name = &database.spec.name;
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
        tls: None,
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

/// Restores a cnpg database into a scratch Cluster in the scratch namespace and connects to
/// it through the Cluster's superuser Secret.
async fn restore_cnpg(context: &Context<'_>, database: &Database, state: &mut RunState, started: Instant) -> Result<String, String> {
    let name = &database.spec.name;
    let kube = context.kube.expect("the run has a Kubernetes client when a database uses driver cnpg");
    let archive = context.archives.get(name).expect("every database's archive was read");
    let plan = archive
        .catalogue
        .select_base_backup(context.target.as_datetime(), Utc::now(), context.to_end_of_archive)
        .map_err(|e| e.to_string())?;
    let index = context
        .policy
        .postgres
        .iter()
        .filter(|d| d.spec.driver == Driver::Cnpg)
        .position(|d| d.spec.name == *name)
        .unwrap_or(0);
    let cluster_name = cnpg_scratch::scratch_name(context.started, index);
    let (storage_size, image_name) = cnpg_scratch::source_settings(&kube.client, &database.spec).await.map_err(|e| e.to_string())?;
    let settings = RestoreSettings {
        name: cluster_name.clone(),
        namespace: kube.namespace.clone(),
        target: context.target,
        recover_to_end_of_archive: plan.stops_at_end_of_archive,
        backup_id: plan.backup.id.to_string(),
        instances: 1,
        storage_size,
        image_name,
    };
    let manifest = cnpg_scratch::scratch_manifest(&database.spec, &settings, context.expires).map_err(|e| e.to_string())?;
    let mut report = DatabaseReport {
        name: name.clone(),
        driver: "cnpg".into(),
        backup_id: Some(plan.backup.id.to_string()),
        backup_end_time: Some(plan.backup.end_time),
        wal_first: Some(plan.wal_first.to_string()),
        wal_last: Some(plan.wal_last.to_string()),
        timeline: Some(plan.timeline),
        to_end_of_archive: plan.stops_at_end_of_archive,
        ready_seconds: None,
        newest_change: None,
        port: None,
        pid: None,
        tls: None,
    };
    state.clusters.push(ScratchCluster { database: name.clone(), namespace: kube.namespace.clone(), name: cluster_name.clone() });
    let remaining = context.deadline.saturating_duration_since(Instant::now());
    let connection = match cnpg_scratch::create_and_wait(&kube.client, &manifest, remaining).await {
        Ok(connection) => connection,
        Err(e) => {
            state.databases.push(report);
            let note = if context.keep { "" } else { " (teardown deletes the Cluster; run with --keep to inspect it)" };
            return Err(format!("the restore did not become ready: {e}{note}"));
        }
    };
    report.ready_seconds = Some(context.clock.elapsed().as_secs_f64());
    report.port = Some(connection.port);
    state.databases.push(report);
    let session = database::connect_tcp(
        &connection.host,
        connection.port,
        &connection.user,
        &connection.dbname,
        connection.password.as_deref(),
        connection.ca_certificate.as_deref(),
    )
    .await
    .map_err(|e| connect_error(&kube.namespace, &cluster_name, &connection, e))?;
    if let Some(report) = state.databases.iter_mut().find(|d| d.name == *name) {
        report.tls = Some(session.tls);
    }
    state.clients.insert(name.clone(), Arc::new(session.client));
    let tls = match (&connection.ca_certificate, session.tls) {
        (Some(_), true) => format!("over TLS verified with the CA of Secret {}", connection.ca_secret),
        (Some(_), false) => "without TLS, because the server does not offer it".to_owned(),
        (None, _) => format!("without TLS, because the Cluster has no Secret {}", connection.ca_secret),
    };
    Ok(format!(
        "base backup {} restored into Cluster {}/{} and recovered to {} in {}; connected to {}:{} with Secret {} {tls}",
        plan.backup.id,
        kube.namespace,
        cluster_name,
        if plan.stops_at_end_of_archive { "the end of the archive".to_owned() } else { context.target.to_string() },
        report::duration_text(started.elapsed().as_secs_f64()),
        connection.host,
        connection.port,
        connection.secret
    ))
}

/// Formats a failed connection's error with the scratch Cluster's name and the Secrets to check.
fn connect_error(namespace: &str, cluster: &str, connection: &cnpg_scratch::ScratchConnection, error: String) -> String {
    let hint = if connection.ca_certificate.is_some() {
        format!(
            ". Check that Secret {namespace}/{} contains the CA that signed the server certificate, \
             that the certificate covers host {}, and that Secret {namespace}/{} has the right credentials",
            connection.ca_secret, connection.host, connection.secret
        )
    } else {
        format!(". Check the service {}:{} and Secret {namespace}/{}", connection.host, connection.port, connection.secret)
    };
    format!("cannot connect to scratch Cluster {namespace}/{cluster}: {error}{hint}")
}

/// Runs the checks of the policy on one restored database. Checks of a database that was not
/// restored fail with that reason, so that the report lists every check of the policy.
pub(super) async fn check_database(context: &Context<'_>, name: &str, state: &mut RunState) {
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
pub(super) async fn check_bucket(context: &Context<'_>, bucket: &Bucket, state: &mut RunState) {
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

pub(super) fn context_subdir(context: &Context<'_>, name: &str) -> Result<PathBuf, String> {
    let path = context.run_dir.join(name);
    std::fs::create_dir_all(&path).map_err(|e| format!("cannot create the scratch directory {}: {e}", path.display()))?;
    Ok(path)
}

/// Restores a job's checkpoint into a scratch file and checks its hash.
pub(super) async fn check_checkpoint(context: &Context<'_>, checkpoint: &CheckpointRecord, state: &mut RunState) {
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
pub(super) async fn teardown(
    state: &mut RunState,
    run_dir: &mut ScratchRun,
    kube: Option<&KubeScratch>,
    keep: bool,
) -> (Vec<KeptInstance>, Vec<KeptCluster>) {
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
        let mut kept_clusters = Vec::new();
        for cluster in state.clusters.drain(..) {
            if let Some(kube) = kube {
                if let Err(e) = cnpg_scratch::set_expiry(&kube.client, &cluster.namespace, &cluster.name, run_dir.marker.expires).await {
                    warn!(pg.cluster = %cluster.name, error = %e, "ignoring a failed expiry update of the kept scratch Cluster; a run after its first expiry deletes it");
                }
            }
            kept_clusters.push(KeptCluster { database: cluster.database, namespace: cluster.namespace, name: cluster.name });
        }
        info!(scratch.path = %run_dir.path.display(), scratch.expires = %run_dir.marker.expires, "scratch resources kept");
        return (kept, kept_clusters);
    }
    let mut problems = Vec::new();
    for (database, instance) in state.instances.drain(..) {
        if let Err(e) = instance.stop().await {
            // The directory removal below signals the postmaster directly.
            warn!(pg.database = %database, error = %e, "pg_ctl stop failed; stopping the instance by signal");
        }
    }
    let mut deleted = Vec::new();
    for cluster in state.clusters.drain(..) {
        let Some(kube) = kube else { continue };
        match cnpg_scratch::delete(&kube.client, &cluster.namespace, &cluster.name).await {
            Ok(_) => deleted.push(format!("Cluster {}/{}", cluster.namespace, cluster.name)),
            Err(e) => problems.push(format!("{e}; delete it with `kubectl delete cluster -n {} {}`", cluster.namespace, cluster.name)),
        }
    }
    let path = run_dir.path.clone();
    if let Err(e) = run_dir.remove().await {
        problems.push(e.to_string());
    }
    let outcome = if problems.is_empty() {
        let clusters = if deleted.is_empty() { String::new() } else { format!(", {} deleted", deleted.join(", ")) };
        Ok(format!("scratch instances stopped{clusters} and {} removed", path.display()))
    } else {
        Err(format!("teardown incomplete: {}; a later run removes the scratch resources after their time-to-live", problems.join("; ")))
    };
    state.record("teardown".into(), "run", started, outcome);
    (Vec::new(), Vec::new())
}
