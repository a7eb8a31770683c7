//! The `visage-dr` command line: argument parsing, logging set-up, the one
//! error type of the program edge, and exit codes.
//!
//! Exit codes, used by every command:
//! - 0: success.
//! - 1: the operation failed (a failed check included).
//! - 2: invalid usage or configuration, found before any work started.

mod checkpoint;
mod error;
mod policy;
mod prune;
mod postgres;
mod repo;
mod restore;
mod run;
mod serve;
mod verify;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use error::CliError;

use crate::s3::S3Overrides;

/// Backup and disaster recovery for a small Kubernetes stack: CNPG PostgreSQL,
/// S3 buckets and training checkpoints, in one content-addressed repository.
#[derive(Debug, Parser)]
#[command(name = "visage-dr", version, propagate_version = true, max_term_width = 100)]
#[command(after_help = "Exit status: 0 success, 1 the operation failed (a failed check included), 2 invalid usage or configuration.")]
pub struct Cli {
    /// Log format on stderr: `text` for people, `json` for log collectors in a cluster.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "VISAGE_DR_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log filter in `tracing` syntax, for example `info` or `visage_dr=debug`.
    #[arg(long, global = true, default_value = "info", env = "VISAGE_DR_LOG")]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage a repository.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Take a snapshot of a source into a repository.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Take a backup with a component's own tool, such as a PostgreSQL base backup.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Restore the whole stack to one instant (--policy, --target-time), or one component with `restore bucket` or `restore postgres`.
    Restore(RestoreArgs),
    /// List the snapshots of a repository.
    Snapshots(repo::SnapshotsArgs),
    /// List the objects of a snapshot.
    Ls(repo::LsArgs),
    /// Show what was added, changed and removed between two snapshots.
    Diff(repo::DiffArgs),
    /// Check a repository: every blob a snapshot needs is stored with the right size, and with --read-data the right content.
    Check(repo::CheckArgs),
    /// Remove stale repository locks (or all locks with --all) and print whose they were.
    Unlock(repo::UnlockArgs),
    /// Run the policy's jobs once: those due at this slot (the default), one named job, or all. Meant for a CronJob.
    Run(run::RunArgs),
    /// Apply the policy's retention rules: print keep or remove with the reasons for every snapshot, and with --confirm delete and collect garbage.
    Prune(prune::PruneArgs),
    /// Remove named snapshots; their data is freed by the next prune.
    Forget(prune::ForgetArgs),
    /// Validate policy files and show when their schedules fire.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Try retention rules on a list of snapshot times.
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Inspect PostgreSQL archives.
    #[command(subcommand)]
    Postgres(PostgresCommand),
    /// Restore every component to one point in time in scratch resources, check the result, tear down and write a report.
    Verify(verify::VerifyArgs),
    /// List past verification runs with their outcome.
    Reports(verify::ReportsArgs),
    /// Run the checkpoint HTTP API that training jobs push checkpoints to and, with --policy, the policy's jobs at their slots.
    Serve(serve::ServeArgs),
    /// Push, pull or list training checkpoints on a checkpoint API server.
    #[command(subcommand)]
    Checkpoint(checkpoint::CheckpointCommand),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files and print the next three fire times of every schedule.
    Check(policy::PolicyCheckArgs),
}

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Apply a policy source's retention rules to snapshot times read from a file, and print keep or remove with the reasons.
    Simulate(policy::RetentionSimulateArgs),
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Take a PostgreSQL base backup with barman-cloud-backup (driver `local`).
    Postgres(postgres::BackupArgs),
}

#[derive(Debug, Subcommand)]
pub enum PostgresCommand {
    /// Show each database's base backups, recoverable window and WAL gaps, read from its barman-cloud archive.
    Window(postgres::WindowArgs),
}

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Create an empty repository. Snapshots also create one on first write.
    Init(repo::InitArgs),
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Read every object of a bucket (or prefix) and record a snapshot.
    Bucket(repo::SnapshotBucketArgs),
}

/// `restore` with a policy and a target time, or one of its component subcommands.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RestoreArgs {
    #[command(subcommand)]
    pub command: Option<RestoreCommand>,
    #[command(flatten)]
    pub stack: restore::StackArgs,
}

// Parsed once per run, so the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum RestoreCommand {
    /// Write the objects of a bucket snapshot into a bucket.
    Bucket(repo::RestoreBucketArgs),
    Postgres(postgres::RestoreArgs),
}

/// Repository location and the S3 settings to reach it.
#[derive(Debug, Clone, Args)]
pub struct RepoArgs {
    /// Repository URL: `s3://bucket/prefix` or `file:///absolute/path`.
    #[arg(long, env = "VISAGE_DR_REPO")]
    pub repo: String,

    #[command(flatten)]
    pub s3: RepoS3Args,

    /// Seconds to wait for a conflicting repository lock to be released.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub lock_wait: u64,
}

impl RepoArgs {
    pub fn s3(&self) -> S3Overrides {
        self.s3.s3()
    }
}

/// The S3 settings to reach a repository, each overriding the standard AWS
/// environment for the repository only.
#[derive(Debug, Clone, Args)]
pub struct RepoS3Args {
    /// S3 endpoint of the repository; overrides AWS_ENDPOINT_URL for the repository only.
    #[arg(long, env = "VISAGE_DR_REPO_S3_ENDPOINT")]
    pub repo_s3_endpoint: Option<String>,

    /// S3 region of the repository; overrides AWS_REGION for the repository only.
    #[arg(long, env = "VISAGE_DR_REPO_S3_REGION")]
    pub repo_s3_region: Option<String>,

    /// File holding the repository's access key id (for example a mounted Secret).
    #[arg(long, env = "VISAGE_DR_REPO_ACCESS_KEY_ID_FILE")]
    pub repo_access_key_id_file: Option<std::path::PathBuf>,

    /// File holding the repository's secret access key.
    #[arg(long, env = "VISAGE_DR_REPO_SECRET_ACCESS_KEY_FILE")]
    pub repo_secret_access_key_file: Option<std::path::PathBuf>,
}

impl RepoS3Args {
    pub fn s3(&self) -> S3Overrides {
        S3Overrides {
            endpoint: self.repo_s3_endpoint.clone(),
            region: self.repo_s3_region.clone(),
            access_key_id_file: self.repo_access_key_id_file.clone(),
            secret_access_key_file: self.repo_secret_access_key_file.clone(),
            path_style: None,
        }
    }
}

/// How to reach the S3 server of a bucket that is read or written.
#[derive(Debug, Clone, Args)]
pub struct BucketS3Args {
    /// S3 endpoint of the bucket; overrides AWS_ENDPOINT_URL for the bucket only.
    #[arg(long, env = "VISAGE_DR_SOURCE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// S3 region of the bucket; overrides AWS_REGION for the bucket only.
    #[arg(long, env = "VISAGE_DR_SOURCE_S3_REGION")]
    pub s3_region: Option<String>,

    /// File holding the bucket's access key id.
    #[arg(long, env = "VISAGE_DR_SOURCE_ACCESS_KEY_ID_FILE")]
    pub access_key_id_file: Option<std::path::PathBuf>,

    /// File holding the bucket's secret access key.
    #[arg(long, env = "VISAGE_DR_SOURCE_SECRET_ACCESS_KEY_FILE")]
    pub secret_access_key_file: Option<std::path::PathBuf>,
}

impl BucketS3Args {
    pub fn s3(&self) -> S3Overrides {
        S3Overrides {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            access_key_id_file: self.access_key_id_file.clone(),
            secret_access_key_file: self.secret_access_key_file.clone(),
            path_style: None,
        }
    }
}

fn init_logging(format: LogFormat, filter: &str) -> Result<(), CliError> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| {
        CliError::usage(format!("invalid log filter {filter:?}: {e}; use a level such as info or debug"))
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    match format {
        LogFormat::Text => builder.compact().init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
    Ok(())
}

/// Runs the program and returns its exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version to stdout with status 0, and
            // usage errors to stderr with status 2.
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    if let Err(e) = init_logging(cli.log_format, &cli.log_level) {
        eprintln!("error: {e}");
        return ExitCode::from(e.exit_code());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Repo(RepoCommand::Init(a)) => repo::init(a).await,
        Command::Snapshot(SnapshotCommand::Bucket(a)) => repo::snapshot_bucket(a).await,
        Command::Restore(RestoreArgs { command: Some(RestoreCommand::Bucket(a)), .. }) => repo::restore_bucket(a).await,
        Command::Restore(RestoreArgs { command: Some(RestoreCommand::Postgres(a)), .. }) => postgres::restore(a).await,
        Command::Restore(RestoreArgs { command: None, stack }) => restore::stack(stack).await,
        Command::Snapshots(a) => repo::snapshots(a).await,
        Command::Ls(a) => repo::ls(a).await,
        Command::Diff(a) => repo::diff(a).await,
        Command::Check(a) => repo::check(a).await,
        Command::Unlock(a) => repo::unlock(a).await,
        Command::Run(a) => run::run(a).await,
        Command::Prune(a) => prune::prune(a).await,
        Command::Forget(a) => prune::forget(a).await,
        Command::Policy(PolicyCommand::Check(a)) => policy::policy_check(a).await,
        Command::Retention(RetentionCommand::Simulate(a)) => policy::retention_simulate(a).await,
        Command::Backup(BackupCommand::Postgres(a)) => postgres::backup(a).await,
        Command::Postgres(PostgresCommand::Window(a)) => postgres::window(a).await,
        Command::Verify(a) => verify::verify(a).await,
        Command::Reports(a) => verify::reports(a).await,
        Command::Serve(a) => serve::serve(a).await,
        Command::Checkpoint(c) => checkpoint::run(c).await,
    }
}
