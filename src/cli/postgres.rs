//! PostgreSQL commands: `backup postgres`, `restore postgres` and `postgres window`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;
use serde::Serialize;

use super::repo::print_table;
use super::CliError;
use crate::postgres::catalogue::{Catalogue, PlanError, RunEnd};
use crate::cnpg::backup::{BackupOptions, BackupOutcome};
use crate::cnpg::restore::{self as cnpg_restore, RestoreSettings};
use crate::cnpg::{self, CnpgError};
use crate::postgres::config::{DatabaseSpec, Driver};
use crate::postgres::local::{self, LocalError, RestoreRequest, Tools};
use crate::postgres::records;
use crate::postgres::store::{ArchiveStore, StoreError};
use crate::postgres::target_time::TargetTime;
use crate::repository::{RepoOptions, RepoUrl, Repository};
use crate::s3::S3Overrides;

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Policy file (YAML) whose `postgres:` list describes the database.
    #[arg(long, value_name = "PATH")]
    pub policy: PathBuf,
    /// Name of the database in the policy.
    #[arg(long)]
    pub name: String,
    /// Repository that receives the catalogue record of this run: `s3://bucket/prefix` or `file:///absolute/path`. Without it, no record is stored.
    #[arg(long, env = "VISAGE_DR_REPO")]
    pub repo: Option<String>,
    /// S3 endpoint of the repository; overrides AWS_ENDPOINT_URL for the repository only.
    #[arg(long, env = "VISAGE_DR_REPO_S3_ENDPOINT")]
    pub repo_s3_endpoint: Option<String>,
    /// Print the catalogue record as JSON.
    #[arg(long)]
    pub json: bool,
    /// Kubeconfig file for a `driver: cnpg` database. Default: KUBECONFIG, ~/.kube/config, or the pod's service account.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Seconds a cnpg Backup may stay in phase walArchivingFailing before it counts as failed.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::cnpg::backup::DEFAULT_WAL_FAILING_GRACE.as_secs())]
    pub wal_failing_grace: u64,
    /// Seconds after which a cnpg Backup that has not finished counts as failed, whatever its phase.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::cnpg::backup::DEFAULT_DEADLINE.as_secs())]
    pub deadline: u64,
}

/// Restore a database to a point in time into a new local PostgreSQL instance, or for a
/// `driver: cnpg` database into a new CNPG Cluster.
///
/// By default the restored instance keeps running after visage-dr exits, on 127.0.0.1 and a
/// Unix socket in the --into directory. visage-dr prints how to connect and the exact command
/// that stops it (`pg_ctl stop -m fast -D DIR/data`, run as the OS user that owns DIR).
/// Use --stop to stop it once recovery has completed and keep only the data directory.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Policy file (YAML) whose `postgres:` list describes the database.
    #[arg(long, value_name = "PATH")]
    pub policy: PathBuf,
    /// Name of the database in the policy.
    #[arg(long)]
    pub name: String,
    /// Recovery target: an absolute time with a UTC offset, for example 2026-05-28T12:00:00Z or 2026-05-28 14:00:00.25+02:00.
    #[arg(long)]
    pub target_time: String,
    /// New directory for the restored instance (data/, postgresql.log and its socket). Default: <name>-<target as YYYYMMDDTHHMMSSZ> in the current directory. An existing non-empty directory is rejected. For a cnpg database: the name of the new Cluster, default <cluster>-pitr-<target as YYYYMMDDHHMMSS>.
    #[arg(long, value_name = "DIR|CLUSTER")]
    pub into: Option<PathBuf>,
    /// Namespace of the new Cluster (cnpg only). Default: the policy's namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Kubeconfig file (cnpg only). Default: KUBECONFIG, ~/.kube/config, or the pod's service account.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Format of the manifests printed by --dry-run (cnpg only).
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    pub output: ManifestFormat,
    /// Storage size of the new Cluster's instances (cnpg only), as a Kubernetes quantity.
    #[arg(long, default_value = "10Gi")]
    pub storage_size: String,
    /// PostgreSQL image of the new Cluster (cnpg only); it must run the backup's major version. Default: the operator's default image.
    #[arg(long)]
    pub image_name: Option<String>,
    /// Accept a target after the last archived WAL and recover everything in the archive, without recovery_target_time.
    #[arg(long)]
    pub to_end_of_archive: bool,
    /// Print the chosen base backup, the WAL range and the recovery settings, and create nothing. For a cnpg database: print the manifests that would be applied, and contact no Kubernetes API.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop the restored instance after recovery has completed.
    #[arg(long)]
    pub stop: bool,
    /// Port of the restored instance on 127.0.0.1. Default: a free port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Seconds to wait for recovery to complete (cnpg: for the Cluster to become ready) before failing.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub recovery_timeout: u64,
    /// Print the plan, and the connection details of the restored instance, as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Format of manifests printed by a cnpg dry run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ManifestFormat {
    Yaml,
    Json,
}

#[derive(Debug, Args)]
pub struct WindowArgs {
    /// Policy file (YAML) whose `postgres:` list describes the databases.
    #[arg(long, value_name = "PATH")]
    pub policy: PathBuf,
    /// Only this database of the policy.
    #[arg(long)]
    pub name: Option<String>,
    /// Print a JSON array with one catalogue per database: backups, recoverable_ranges, window, gaps, last_wal and warnings.
    #[arg(long)]
    pub json: bool,
}

/// Reads the `postgres:` list of a policy file, validating the whole file.
fn load_databases(path: &Path) -> Result<Vec<DatabaseSpec>, CliError> {
    let policy = super::prune::load_policy(path)?;
    Ok(policy.postgres.into_iter().map(|d| d.spec).collect())
}

fn find_database(path: &Path, name: &str) -> Result<DatabaseSpec, CliError> {
    let databases = load_databases(path)?;
    let names: Vec<&str> = databases.iter().map(|d| d.name.as_str()).collect();
    databases.iter().find(|d| d.name == name).cloned().ok_or_else(|| {
        CliError::usage(format!(
            "database {name:?} is not in the postgres list of {}; it lists: {}",
            path.display(),
            if names.is_empty() { "nothing".to_string() } else { names.join(", ") }
        ))
    })
}

fn check_name(name: &str) -> Result<(), CliError> {
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if valid && name != "." && name != ".." {
        Ok(())
    } else {
        Err(CliError::usage(format!(
            "invalid database name {name:?}: use letters, digits, '-', '_' and '.', because it becomes a repository key and a directory name"
        )))
    }
}

fn print_json<T: Serialize>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).expect("output serialises"));
}

fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::S3(s) => s.into(),
            StoreError::InvalidDestination { .. } => CliError::usage(e.to_string()),
            other => CliError::failed(other.to_string()),
        }
    }
}

impl From<LocalError> for CliError {
    fn from(e: LocalError) -> Self {
        match e {
            LocalError::Store(s) => s.into(),
            LocalError::WrongDriver { .. }
            | LocalError::MissingConnection { .. }
            | LocalError::ToolMissing { .. }
            | LocalError::UnknownOsUser { .. }
            | LocalError::PasswordFile { .. }
            | LocalError::DirectoryNotEmpty { .. }
            | LocalError::SocketPathTooLong { .. }
            | LocalError::DirectoryNotUsable { .. }
            | LocalError::UnknownServerVersion { .. } => CliError::usage(e.to_string()),
            // The archive has nothing to restore: the request itself is not at fault.
            LocalError::Plan(PlanError::NoBackups { .. } | PlanError::NoUsableBackup { .. }) => {
                CliError::failed(e.to_string())
            }
            LocalError::Plan(_) => CliError::usage(e.to_string()),
            other => CliError::failed(other.to_string()),
        }
    }
}

pub async fn backup(a: BackupArgs) -> Result<ExitCode, CliError> {
    check_name(&a.name)?;
    let spec = find_database(&a.policy, &a.name)?;
    // Open the repository first, so that a wrong --repo fails before the backup runs.
    let repo = match &a.repo {
        Some(url) => {
            let url: RepoUrl = url.parse()?;
            let options = RepoOptions {
                s3: S3Overrides { endpoint: a.repo_s3_endpoint.clone(), ..S3Overrides::default() },
                ..RepoOptions::default()
            };
            Some(Repository::open_or_init(&url, options).await?)
        }
        None => None,
    };

    if spec.driver == Driver::Cnpg {
        return backup_cnpg(&a, &spec, repo.as_ref()).await;
    }
    let (record, error) = match local::backup(&spec, &Tools::from_env()).await {
        Ok(record) => (record, None),
        Err(failure) => (failure.record, Some(failure.error)),
    };
    if let Some(repo) = &repo {
        let key = records::write_record(repo, &record).await?;
        tracing::info!(pg.database = %record.database, repo.key = %key, "catalogue record stored");
    }
    if a.json {
        print_json(&record);
    }
    if let Some(error) = error {
        return Err(error.into());
    }
    if !a.json {
        println!(
            "base backup {} of {} complete: {} to {}, WAL {} to {}",
            record.backup_id.as_deref().unwrap_or("?"),
            record.database,
            record.begin_time.map(time_text).unwrap_or_default(),
            record.end_time.map(time_text).unwrap_or_default(),
            record.begin_wal.as_deref().unwrap_or("?"),
            record.end_wal.as_deref().unwrap_or("?"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn default_into(name: &str, target: &TargetTime) -> Result<PathBuf, CliError> {
    let cwd = std::env::current_dir()
        .map_err(|e| CliError::failed(format!("cannot read the current directory: {e}")))?;
    Ok(cwd.join(format!("{name}-{}", target.as_datetime().format("%Y%m%dT%H%M%SZ"))))
}

fn absolute(path: PathBuf) -> Result<PathBuf, CliError> {
    if path.is_absolute() {
        return Ok(path);
    }
    let cwd = std::env::current_dir()
        .map_err(|e| CliError::failed(format!("cannot read the current directory: {e}")))?;
    Ok(cwd.join(path))
}

pub async fn restore(a: RestoreArgs) -> Result<ExitCode, CliError> {
    check_name(&a.name)?;
    let now = Utc::now();
    let target = TargetTime::parse(&a.target_time, now).map_err(|e| CliError::usage(e.to_string()))?;
    eprintln!("target time: {target} (UTC)");
    let spec = find_database(&a.policy, &a.name)?;
    if spec.driver == Driver::Cnpg {
        return restore_cnpg(&a, &spec, target, now).await;
    }
    let into = match a.into.clone() {
        Some(path) => absolute(path)?,
        None => default_into(&a.name, &target)?,
    };

    let store = ArchiveStore::open(&spec.object_store)?;
    let catalogue = store.read_catalogue().await?;
    let request = RestoreRequest {
        target,
        to_end_of_archive: a.to_end_of_archive,
        into,
        port: a.port,
        timeout: Duration::from_secs(a.recovery_timeout),
    };
    let tools = Tools::from_env();
    let plan = local::plan_restore(&spec, &tools, &store, &catalogue, &request, now)?;

    if a.dry_run {
        if a.json {
            print_json(&plan);
        } else {
            print_plan(&plan);
            println!("dry run: nothing was created or started");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !a.json {
        print_plan(&plan);
    }

    let instance = local::restore(&plan, &store).await?;
    if a.stop {
        let data_dir = instance.data_dir.clone();
        instance.stop().await?;
        if a.json {
            print_json(&serde_json::json!({ "plan": plan, "stopped": true, "data_dir": data_dir }));
        } else {
            println!("recovery complete; the instance was stopped and its data directory is {}", data_dir.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.json {
        print_json(&serde_json::json!({ "plan": plan, "instance": instance }));
    } else {
        println!("recovery complete; the restored instance is running:");
        println!("  connect:  psql -h {} -p {} -U {} -d {}", instance.host, instance.port, instance.user, instance.dbname);
        println!("  socket:   {}", instance.socket_dir.display());
        println!("  data:     {}", instance.data_dir.display());
        println!("  log:      {}", instance.log_file.display());
        println!("  pid:      {}", instance.pid);
        println!("  stop:     {}", instance.stop_command);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_plan(plan: &local::RestorePlan) {
    let backup = &plan.plan.backup;
    println!("database:     {} ({}/{})", plan.database, plan.destination_path, plan.server_name);
    println!(
        "base backup:  {} (ended {}, WAL {} to {})",
        backup.id,
        time_text(backup.end_time),
        backup.begin_wal,
        backup.end_wal
    );
    println!(
        "WAL to replay: {} to {} on timeline {} (last segment uploaded {})",
        plan.plan.wal_first,
        plan.plan.wal_last,
        plan.plan.timeline,
        time_text(plan.plan.wal_last_estimated_time)
    );
    if plan.recover_to_end_of_archive {
        println!("recovery:     to the end of the archive (the target is after the last archived WAL)");
    }
    println!("directory:    {}", plan.into.display());
    println!("settings appended to {}:", plan.data_dir.join("postgresql.auto.conf").display());
    for (name, value) in &plan.recovery_settings {
        println!("  {name} = {value}");
    }
}

/// One database's catalogue as printed by `postgres window --json`.
#[derive(Serialize)]
struct WindowReport<'a> {
    database: &'a str,
    destination_path: &'a str,
    #[serde(flatten)]
    catalogue: &'a Catalogue,
}

pub async fn window(a: WindowArgs) -> Result<ExitCode, CliError> {
    let mut databases = load_databases(&a.policy)?;
    if let Some(name) = &a.name {
        databases = vec![find_database(&a.policy, name)?];
    }
    let mut catalogues = Vec::new();
    for spec in &databases {
        let store = ArchiveStore::open(&spec.object_store)?;
        catalogues.push(store.read_catalogue().await?);
    }
    if a.json {
        let reports: Vec<WindowReport> = databases
            .iter()
            .zip(&catalogues)
            .map(|(spec, catalogue)| WindowReport {
                database: &spec.name,
                destination_path: &spec.object_store.destination_path,
                catalogue,
            })
            .collect();
        print_json(&reports);
        return Ok(ExitCode::SUCCESS);
    }
    for (index, (spec, catalogue)) in databases.iter().zip(&catalogues).enumerate() {
        if index > 0 {
            println!();
        }
        print_window(spec, catalogue);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_window(spec: &DatabaseSpec, catalogue: &Catalogue) {
    println!("{} ({}/{})", spec.name, spec.object_store.destination_path, catalogue.server);
    match &catalogue.window {
        Some(window) => println!(
            "recoverable window: after {} until {} (estimated from the last WAL upload time)",
            time_text(window.after),
            time_text(window.until)
        ),
        None => println!("recoverable window: none (no usable base backup, or no archived WAL)"),
    }
    let rows: Vec<Vec<String>> = catalogue
        .backups
        .iter()
        .map(|entry| {
            let b = &entry.backup;
            vec![
                b.id.to_string(),
                b.backup_name.clone().unwrap_or_default(),
                time_text(b.begin_time),
                time_text(b.end_time),
                format!("{}..{}", b.begin_wal, b.end_wal),
                if entry.usable { "yes".into() } else { "no".into() },
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("base backups: none");
    } else {
        print_table(&["BACKUP", "NAME", "BEGIN", "END", "WAL", "USABLE"], &rows);
    }
    for range in &catalogue.recoverable_ranges {
        let end = match range.end {
            RunEnd::Gap { missing, .. } => format!("WAL {missing} is missing"),
            RunEnd::EndOfArchive => "end of the archive".into(),
            RunEnd::EndOfTimeline { later_timeline } => format!("timeline {later_timeline} branched off"),
        };
        println!(
            "reachable: after {} until {} (last segment {}, then {end})",
            time_text(range.after),
            time_text(range.until),
            range.last_segment
        );
    }
    for gap in &catalogue.gaps {
        println!(
            "gap: timeline {}: {} segment(s) missing, {} to {}",
            gap.timeline, gap.missing_count, gap.first_missing, gap.last_missing
        );
    }
    for skipped in &catalogue.skipped_backups {
        println!("skipped backup {}: {}", skipped.id, skipped.reason);
    }
    for warning in &catalogue.warnings {
        println!("warning: {warning}");
    }
}

impl From<CnpgError> for CliError {
    fn from(e: CnpgError) -> Self {
        match e {
            CnpgError::WrongDriver { .. }
            | CnpgError::MissingSetting { .. }
            | CnpgError::Kubeconfig { .. }
            | CnpgError::NoConfig { .. }
            | CnpgError::InvalidName { .. }
            | CnpgError::SameAsSource { .. }
            | CnpgError::ClusterExists { .. } => CliError::usage(e.to_string()),
            other => CliError::failed(other.to_string()),
        }
    }
}

/// `backup postgres` for a cnpg database: one Backup resource for the current second.
async fn backup_cnpg(a: &BackupArgs, spec: &DatabaseSpec, repo: Option<&Repository>) -> Result<ExitCode, CliError> {
    let client = cnpg::client(a.kubeconfig.as_deref()).await?;
    let slot = Utc::now();
    let options = BackupOptions {
        wal_failing_grace: Duration::from_secs(a.wal_failing_grace),
        deadline: Duration::from_secs(a.deadline),
        ..BackupOptions::default()
    };
    let outcome = cnpg::backup::run(client, spec, repo, slot, &options).await?;
    match outcome {
        BackupOutcome::Completed { record, warnings } => {
            if a.json {
                print_json(&record);
            } else {
                let r = &record.record;
                println!(
                    "Backup {} of cluster {}/{} completed: base backup {}, WAL {} to {}",
                    r.backup_name.as_deref().unwrap_or("?"),
                    record.namespace,
                    record.cluster,
                    r.backup_id.as_deref().unwrap_or("?"),
                    r.begin_wal.as_deref().unwrap_or("?"),
                    r.end_wal.as_deref().unwrap_or("?"),
                );
                for warning in warnings {
                    println!("warning: {warning}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupOutcome::Skipped { reason } => {
            println!("skipped: {reason}");
            Ok(ExitCode::SUCCESS)
        }
        BackupOutcome::Failed { record, error } => {
            if let (true, Some(record)) = (a.json, &record) {
                print_json(record);
            }
            Err(CliError::failed(format!("backup of database {:?} failed: {error}", spec.name)))
        }
    }
}

/// `restore postgres` for a cnpg database: a recovery Cluster, applied and waited for.
async fn restore_cnpg(a: &RestoreArgs, spec: &DatabaseSpec, target: TargetTime, now: DateTime<Utc>) -> Result<ExitCode, CliError> {
    let source = cnpg::backup::Target::of(spec)?;
    let name = match &a.into {
        Some(into) => into
            .to_str()
            .ok_or_else(|| CliError::usage(format!("--into {} is not a valid Cluster name", into.display())))?
            .to_string(),
        None => format!("{}-pitr-{}", source.cluster, target.as_datetime().format("%Y%m%d%H%M%S")),
    };
    let namespace = a.namespace.clone().unwrap_or_else(|| source.namespace.clone());

    // Plan from the archive first, so that a bad target creates nothing.
    let store = ArchiveStore::open(&spec.object_store)?;
    let catalogue = store.read_catalogue().await?;
    let plan = catalogue.select_base_backup(target.as_datetime(), now, a.to_end_of_archive).map_err(|e| match e {
        PlanError::NoBackups { .. } | PlanError::NoUsableBackup { .. } => CliError::failed(e.to_string()),
        other => CliError::usage(other.to_string()),
    })?;
    let settings = RestoreSettings {
        name,
        namespace,
        target,
        recover_to_end_of_archive: plan.stops_at_end_of_archive,
        backup_id: plan.backup.id.to_string(),
        instances: 1,
        storage_size: a.storage_size.clone(),
        image_name: a.image_name.clone(),
    };
    let cluster = cnpg_restore::cluster_manifest(spec, &settings)?;

    if a.dry_run {
        match a.output {
            ManifestFormat::Yaml => print!(
                "{}",
                serde_saphyr::to_string(&cluster).map_err(|e| CliError::failed(format!("cannot format the manifest as YAML: {e}")))?
            ),
            ManifestFormat::Json => print_json(&cluster),
        }
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "base backup {} (ended {}); restoring into Cluster {}/{}",
        plan.backup.id,
        time_text(plan.backup.end_time),
        settings.namespace,
        settings.name
    );
    let client = cnpg::client(a.kubeconfig.as_deref()).await?;
    let mut progress = |line: &str| eprintln!("{line}");
    let connection =
        cnpg_restore::apply_and_wait(client, &cluster, Duration::from_secs(a.recovery_timeout), &mut progress).await?;
    if a.json {
        print_json(&serde_json::json!({
            "cluster": settings.name,
            "namespace": settings.namespace,
            "backup_id": settings.backup_id,
            "target_time": settings.target.to_string(),
            "connection": connection,
        }));
    } else {
        println!("recovery complete; Cluster {}/{} is ready", settings.namespace, settings.name);
        println!(
            "  connect: host {} port {} dbname {} user {} (password in Secret {})",
            connection.host.as_deref().unwrap_or("?"),
            connection.port.as_deref().unwrap_or("?"),
            connection.dbname.as_deref().unwrap_or("?"),
            connection.username.as_deref().unwrap_or("?"),
            connection.secret
        );
    }
    Ok(ExitCode::SUCCESS)
}
