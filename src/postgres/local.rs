//! The `local` driver: base backups and point-in-time restores with barman-cloud and the
//! PostgreSQL binaries of this machine.
//!
//! A backup runs `barman-cloud-backup` against the configured server. A restore plans from
//! the archive's [`Catalogue`] first, and only then creates a directory, runs
//! `barman-cloud-restore` into it, appends recovery settings, and starts `postgres` in it,
//! watching both the postmaster process and its log until recovery ends.
//!
//! Layout of a restore directory (`--into`):
//!
//! ```text
//! <into>/data/            PGDATA of the restored instance
//! <into>/postgresql.log   the instance's stderr log
//! <into>/.s.PGSQL.<port>  its Unix socket
//! ```
//!
//! PostgreSQL refuses to run as root, so when visage-dr runs as root every barman-cloud and
//! PostgreSQL process runs as the OS user `postgres` (or `VISAGE_DR_PG_OS_USER`), and the
//! restore directory is owned by that user.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::{debug, info, info_span, warn, Instrument};

use super::catalogue::{BackupId, BackupPlan, Catalogue, PlanError};
use super::config::{Connection, DatabaseSpec, Driver};
use super::records::{BackupRecord, RunStatus, RECORD_VERSION};
use super::store::{ArchiveLocation, ArchiveStore, StoreError};
use super::target_time::TargetTime;
use crate::id::SnapshotId;
use crate::s3::S3Settings;

/// Default directory of the barman-cloud virtual environment, under `VISAGE_DR_TOOLS`.
pub const DEFAULT_TOOLS_DIR: &str = "/opt/visage-dr";

/// OS user that PostgreSQL and barman-cloud run as when visage-dr runs as root.
pub const DEFAULT_OS_USER: &str = "postgres";

/// Environment variables passed through to barman-cloud and PostgreSQL when set. The checksum
/// settings make boto3 skip request checksums that older MinIO releases reject.
const PASSTHROUGH_ENV: &[&str] = &[
    "AWS_REQUEST_CHECKSUM_CALCULATION",
    "AWS_RESPONSE_CHECKSUM_VALIDATION",
    "AWS_CA_BUNDLE",
    "TZ",
];

/// Interval between checks of a starting instance.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Longest Unix socket path PostgreSQL accepts (`sizeof(sun_path) - 1` on Linux).
const MAX_SOCKET_PATH: usize = 107;

/// Errors of the local driver.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("database {database:?} uses driver {driver:?}, but this command runs the local driver; use the driver's own workflow")]
    WrongDriver { database: String, driver: String },
    #[error("database {database:?} has no `connection` section, which the local driver needs to reach the server")]
    MissingConnection { database: String },
    #[error("{tool} not found at {path}: {hint}")]
    ToolMissing { tool: &'static str, path: PathBuf, hint: String },
    #[error("OS user {name:?} not found; create it or set VISAGE_DR_PG_OS_USER to the user that owns PostgreSQL data directories")]
    UnknownOsUser { name: String },
    #[error("cannot read the password file {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {output}")]
    CommandFailed { program: String, status: String, output: String },
    #[error("barman-cloud-backup succeeded but no backup named {name:?} is in {destination_path}/{server_name}/base/")]
    BackupNotListed { name: String, destination_path: String, server_name: String },
    #[error("{op} {path} failed: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the restore directory {path} exists and is not empty; choose a new directory with --into")]
    DirectoryNotEmpty { path: PathBuf },
    #[error("the Unix socket path {path}/.s.PGSQL.<port> would be longer than {MAX_SOCKET_PATH} bytes, which PostgreSQL rejects; choose a shorter --into path")]
    SocketPathTooLong { path: PathBuf },
    #[error("OS user {user:?} cannot create files in {path}; make it and every parent directory searchable by that user (for example chmod o+x on the parents)")]
    DirectoryNotUsable { user: String, path: PathBuf },
    #[error("base backup {backup} records no PostgreSQL version, so the server binaries cannot be chosen; set VISAGE_DR_PG_BIN to their directory")]
    UnknownServerVersion { backup: BackupId },
    #[error("PostgreSQL exited during recovery ({status}): {reason}; the log is {log}")]
    RecoveryFailed { status: String, reason: String, log: PathBuf },
    #[error("recovery did not finish within {seconds} s, so the instance was stopped; the log is {log}")]
    RecoveryTimedOut { seconds: u64, log: PathBuf },
    #[error("cannot connect to the restored instance on port {port}: {reason}")]
    Connect { port: u16, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// Locations of the barman-cloud commands and the PostgreSQL server binaries.
#[derive(Debug, Clone)]
pub struct Tools {
    /// Directory of `barman-cloud-backup`, `barman-cloud-restore` and `barman-cloud-wal-restore`.
    pub barman_bin: PathBuf,
    /// Directory of `postgres` and `pg_ctl`; `None` picks `/usr/lib/postgresql/<major>/bin`
    /// for the major version of the restored backup.
    pub pg_bin: Option<PathBuf>,
}

impl Tools {
    /// Reads `VISAGE_DR_BARMAN_BIN` (default `$VISAGE_DR_TOOLS/venv-barman/bin`, with
    /// `VISAGE_DR_TOOLS` defaulting to [`DEFAULT_TOOLS_DIR`]) and `VISAGE_DR_PG_BIN`.
    pub fn from_env() -> Tools {
        let nonempty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        let barman_bin = nonempty("VISAGE_DR_BARMAN_BIN").map(PathBuf::from).unwrap_or_else(|| {
            let tools = nonempty("VISAGE_DR_TOOLS")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_TOOLS_DIR));
            tools.join("venv-barman/bin")
        });
        Tools { barman_bin, pg_bin: nonempty("VISAGE_DR_PG_BIN").map(PathBuf::from) }
    }

    fn barman(&self, tool: &'static str) -> Result<PathBuf, LocalError> {
        let path = self.barman_bin.join(tool);
        if !path.is_file() {
            return Err(LocalError::ToolMissing {
                tool,
                path,
                hint: "install barman[cloud] there (scripts/install-deps does), or set VISAGE_DR_BARMAN_BIN".into(),
            });
        }
        Ok(path)
    }

    /// Directory of the server binaries for PostgreSQL `version` (such as 150018).
    fn server_bin(&self, backup: &BackupId, version: Option<u32>) -> Result<PathBuf, LocalError> {
        let dir = match (&self.pg_bin, version) {
            (Some(dir), _) => dir.clone(),
            (None, Some(version)) => PathBuf::from(format!("/usr/lib/postgresql/{}/bin", version / 10000)),
            (None, None) => return Err(LocalError::UnknownServerVersion { backup: backup.clone() }),
        };
        let postgres = dir.join("postgres");
        if !postgres.is_file() {
            return Err(LocalError::ToolMissing {
                tool: "postgres",
                path: postgres,
                hint: "install the PostgreSQL server of the backup's major version, or set VISAGE_DR_PG_BIN".into(),
            });
        }
        Ok(dir)
    }
}

/// An OS account that child processes switch to.
#[derive(Debug, Clone)]
pub struct OsUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl OsUser {
    /// Looks up `name` in the user database.
    pub fn lookup(name: &str) -> Result<OsUser, LocalError> {
        let unknown = || LocalError::UnknownOsUser { name: name.to_string() };
        let c_name = CString::new(name).map_err(|_| unknown())?;
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buffer = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer refers to live memory of the stated size, and `entry`'s
        // strings point into `buffer`, which outlives their use below.
        let code = unsafe {
            libc::getpwnam_r(c_name.as_ptr(), &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut result)
        };
        if code != 0 || result.is_null() {
            return Err(unknown());
        }
        // SAFETY: on success pw_dir is a NUL-terminated string inside `buffer`.
        let home = unsafe { std::ffi::CStr::from_ptr(entry.pw_dir) }.to_string_lossy().into_owned();
        Ok(OsUser { name: name.to_string(), uid: entry.pw_uid, gid: entry.pw_gid, home: PathBuf::from(home) })
    }

    /// Returns the user that PostgreSQL processes run as: `VISAGE_DR_PG_OS_USER` (default
    /// [`DEFAULT_OS_USER`]) when visage-dr runs as root, and `None` (this process's own
    /// user) otherwise.
    pub fn for_postgres() -> Result<Option<OsUser>, LocalError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let name = std::env::var("VISAGE_DR_PG_OS_USER")
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| DEFAULT_OS_USER.to_string());
        OsUser::lookup(&name).map(Some)
    }
}

/// Builds a command with a clean environment, run as `user` when given: `PATH` with the
/// barman-cloud and server binaries first, `HOME`, the store's credentials and region, and
/// [`PASSTHROUGH_ENV`].
fn child_command(program: &Path, user: Option<&OsUser>, s3: &S3Settings, path_dirs: &[&Path]) -> Command {
    let mut command = Command::new(program);
    command.env_clear();
    let mut path = std::env::join_paths(path_dirs).unwrap_or_default();
    path.push(":/usr/local/bin:/usr/bin:/bin");
    command.env("PATH", path);
    for (name, value) in s3.credential_env() {
        command.env(name, value);
    }
    for name in PASSTHROUGH_ENV {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    match user {
        Some(user) => {
            command.uid(user.uid).gid(user.gid).env("HOME", &user.home).env("USER", &user.name);
        }
        None => {
            if let Some(home) = std::env::var_os("HOME") {
                command.env("HOME", home);
            }
        }
    }
    command.stdin(Stdio::null());
    command
}

/// Runs a command to completion and returns its combined output, or an error with the last
/// lines of that output.
async fn run_command(mut command: Command, program: &str) -> Result<String, LocalError> {
    let program_name = program.to_string();
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("command task panicked")
        .map_err(|source| LocalError::Spawn { program: program_name.clone(), source })?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        Ok(text)
    } else {
        Err(LocalError::CommandFailed {
            program: program.to_string(),
            status: output.status.to_string(),
            output: last_lines(&text, 8),
        })
    }
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(count);
    lines[start..].join(" | ")
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LocalError + 'a {
    move |source| LocalError::Io { op, path: path.to_path_buf(), source }
}

fn check_local(spec: &DatabaseSpec) -> Result<(), LocalError> {
    if spec.driver != Driver::Local {
        return Err(LocalError::WrongDriver {
            database: spec.name.clone(),
            driver: format!("{:?}", spec.driver).to_lowercase(),
        });
    }
    Ok(())
}

fn read_password(connection: &Connection) -> Result<Option<String>, LocalError> {
    let Some(path) = &connection.password_file else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .map_err(|source| LocalError::PasswordFile { path: path.clone(), source })?;
    Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()))
}

/// A failed backup run: the record to store and the error to report.
#[derive(Debug)]
pub struct BackupFailure {
    pub record: BackupRecord,
    pub error: LocalError,
}

/// Takes a base backup of `spec`'s server with barman-cloud-backup.
///
/// The backup gets the name `visage-dr-<record id>` so that its barman backup id can be found
/// in the archive afterwards. Both outcomes return the record of the run; the caller stores
/// it. Configuration errors found before barman-cloud-backup starts (wrong driver, missing
/// connection, missing tools or bucket) are failures too.
pub async fn backup(spec: &DatabaseSpec, tools: &Tools) -> Result<BackupRecord, BackupFailure> {
    let started = Utc::now();
    let record_id = SnapshotId::new(started).to_string();
    let backup_name = format!("visage-dr-{}", record_id.to_lowercase().replace('.', ""));
    let mut record = BackupRecord {
        version: RECORD_VERSION,
        id: record_id,
        database: spec.name.clone(),
        driver: "local".into(),
        destination_path: spec.object_store.destination_path.clone(),
        server_name: spec.object_store.server_name.clone(),
        backup_id: None,
        backup_name: Some(backup_name.clone()),
        started,
        finished: started,
        begin_time: None,
        end_time: None,
        begin_wal: None,
        end_wal: None,
        status: RunStatus::Failed,
        error: None,
    };
    let span = info_span!("pg.backup", pg.database = %spec.name, pg.record_id = %record.id);
    let result = run_backup(spec, tools, &backup_name, &mut record).instrument(span.clone()).await;
    let _entered = span.enter();
    record.finished = Utc::now();
    match result {
        Ok(()) => {
            record.status = RunStatus::Complete;
            info!(pg.backup_id = record.backup_id.as_deref().unwrap_or(""), "base backup complete");
            Ok(record)
        }
        Err(error) => {
            record.error = Some(error.to_string());
            warn!(error = %error, "base backup failed");
            Err(BackupFailure { record, error })
        }
    }
}

async fn run_backup(
    spec: &DatabaseSpec,
    tools: &Tools,
    backup_name: &str,
    record: &mut BackupRecord,
) -> Result<(), LocalError> {
    check_local(spec)?;
    let connection = spec
        .connection
        .as_ref()
        .ok_or_else(|| LocalError::MissingConnection { database: spec.name.clone() })?;
    let program = tools.barman("barman-cloud-backup")?;
    let store = ArchiveStore::open(&spec.object_store)?;
    store.check_bucket().await?;
    let user = OsUser::for_postgres()?;
    let password = read_password(connection)?;

    let location = store.location();
    let mut command = child_command(&program, user.as_ref(), store.settings(), &[&tools.barman_bin]);
    command.arg("--immediate-checkpoint");
    if let Some(endpoint) = &store.settings().endpoint {
        command.arg("--endpoint-url").arg(endpoint);
    }
    command
        .arg("-h")
        .arg(&connection.host)
        .arg("-p")
        .arg(connection.port.to_string())
        .arg("-U")
        .arg(&connection.user)
        .arg("-d")
        .arg(&connection.dbname)
        .arg("-n")
        .arg(backup_name)
        .arg(&location.destination_path)
        .arg(&location.server_name);
    command.env("PGCONNECT_TIMEOUT", "10");
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    info!(pg.host = %connection.host, pg.port = connection.port, "running barman-cloud-backup");
    let result = run_command(command, "barman-cloud-backup").await;

    // barman writes backup.info for failed backups too, so look the backup up either way.
    let catalogue = store.read_catalogue().await;
    if let Ok(catalogue) = &catalogue {
        fill_from_catalogue(record, catalogue, backup_name);
    }
    result?;
    catalogue?;
    if record.backup_id.is_none() {
        return Err(LocalError::BackupNotListed {
            name: backup_name.to_string(),
            destination_path: location.destination_path.clone(),
            server_name: location.server_name.clone(),
        });
    }
    Ok(())
}

/// Copies the id, times and WAL of the backup named `backup_name` into `record`.
fn fill_from_catalogue(record: &mut BackupRecord, catalogue: &Catalogue, backup_name: &str) {
    if let Some(found) = catalogue
        .backups
        .iter()
        .find(|entry| entry.backup.backup_name.as_deref() == Some(backup_name))
    {
        let backup = &found.backup;
        record.backup_id = Some(backup.id.to_string());
        record.begin_time = Some(backup.begin_time);
        record.end_time = Some(backup.end_time);
        record.begin_wal = Some(backup.begin_wal.to_string());
        record.end_wal = Some(backup.end_wal.to_string());
    }
}

/// Parameters of a restore.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub target: TargetTime,
    /// Accept a target after the last archived WAL and recover to the end of the archive.
    pub to_end_of_archive: bool,
    /// New directory that receives `data/`, the log and the socket.
    pub into: PathBuf,
    /// Loopback port of the restored instance; `None` picks a free one.
    pub port: Option<u16>,
    pub timeout: Duration,
}

/// A restore that has been planned and checked but not started.
#[derive(Debug, Clone, Serialize)]
pub struct RestorePlan {
    pub database: String,
    pub destination_path: String,
    pub server_name: String,
    #[serde(flatten)]
    pub plan: BackupPlan,
    /// Whether `recovery_target_time` is omitted, so recovery replays every archived WAL.
    pub recover_to_end_of_archive: bool,
    pub into: PathBuf,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    pub port: u16,
    /// Settings appended to `postgresql.auto.conf`, as written there.
    pub recovery_settings: Vec<(String, String)>,
    pub server_bin: PathBuf,
    #[serde(skip)]
    barman_bin: PathBuf,
    #[serde(skip)]
    timeout: Duration,
    #[serde(skip)]
    connection: Option<Connection>,
}

impl RestorePlan {
    /// Formats the settings block as appended to `postgresql.auto.conf`.
    pub fn settings_text(&self) -> String {
        let mut text = format!(
            "\n# Recovery settings written by visage-dr for a restore of {} to {}.\n",
            self.database, self.plan.target
        );
        for (name, value) in &self.recovery_settings {
            text.push_str(&format!("{name} = {value}\n"));
        }
        text
    }
}

/// Plans a restore: selects the base backup, checks `request.into`, and computes the recovery
/// settings. It creates no directory and starts no process.
pub fn plan_restore(
    spec: &DatabaseSpec,
    tools: &Tools,
    store: &ArchiveStore,
    catalogue: &Catalogue,
    request: &RestoreRequest,
    now: DateTime<Utc>,
) -> Result<RestorePlan, LocalError> {
    check_local(spec)?;
    let plan = catalogue.select_base_backup(request.target.as_datetime(), now, request.to_end_of_archive)?;
    check_restore_dir(&request.into)?;
    let wal_restore = tools.barman("barman-cloud-wal-restore")?;
    tools.barman("barman-cloud-restore")?;
    let server_bin = tools.server_bin(&plan.backup.id, plan.backup.version)?;
    let port = match request.port {
        Some(port) => port,
        None => free_loopback_port().map_err(io_error("bind a loopback port on", Path::new("127.0.0.1")))?,
    };

    let recover_to_end_of_archive = plan.stops_at_end_of_archive;
    let settings = recovery_settings(
        store.location(),
        store.settings().endpoint.as_deref(),
        &wal_restore,
        (!recover_to_end_of_archive).then_some(&request.target),
        plan.timeline,
        port,
        &request.into,
    );
    Ok(RestorePlan {
        database: spec.name.clone(),
        destination_path: store.location().destination_path.clone(),
        server_name: store.location().server_name.clone(),
        plan,
        recover_to_end_of_archive,
        data_dir: request.into.join("data"),
        log_file: request.into.join("postgresql.log"),
        into: request.into.clone(),
        port,
        recovery_settings: settings,
        server_bin,
        barman_bin: tools.barman_bin.clone(),
        timeout: request.timeout,
        connection: spec.connection.clone(),
    })
}

fn check_restore_dir(into: &Path) -> Result<(), LocalError> {
    if into.as_os_str().len() + ".s.PGSQL.65535".len() + 1 > MAX_SOCKET_PATH {
        return Err(LocalError::SocketPathTooLong { path: into.to_path_buf() });
    }
    match std::fs::read_dir(into) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(LocalError::DirectoryNotEmpty { path: into.to_path_buf() });
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(LocalError::Io { op: "read directory", path: into.to_path_buf(), source: error }),
    }
}

/// Asks the kernel for a free port on 127.0.0.1.
///
/// NOTE: the port is released before PostgreSQL binds it, so another process can take it in
/// between; PostgreSQL then exits with "could not bind", which the restore reports.
fn free_loopback_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// Quotes a value for postgresql.conf: single quotes doubled, backslashes escaped.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quotes one word for `sh -c`, which PostgreSQL runs restore_command with.
fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Recovery settings of a restore, as `(name, quoted value)` pairs.
///
/// `archive_mode = off` and an empty `archive_command` keep the restored instance from ever
/// archiving into the source's prefix: the restored postgresql.conf still carries the source's
/// archive_command.
fn recovery_settings(
    location: &ArchiveLocation,
    endpoint: Option<&str>,
    wal_restore: &Path,
    target: Option<&TargetTime>,
    timeline: u32,
    port: u16,
    into: &Path,
) -> Vec<(String, String)> {
    let mut command = vec![shell_quote(&wal_restore.to_string_lossy())];
    if let Some(endpoint) = endpoint {
        command.push("--endpoint-url".into());
        command.push(shell_quote(endpoint));
    }
    command.push(shell_quote(&location.destination_path));
    command.push(shell_quote(&location.server_name));
    command.push("%f".into());
    command.push("%p".into());

    let mut settings = vec![("restore_command".to_string(), conf_quote(&command.join(" ")))];
    if let Some(target) = target {
        settings.push(("recovery_target_time".into(), conf_quote(&target.to_postgres())));
    }
    settings.extend([
        ("recovery_target_timeline".into(), conf_quote(&timeline.to_string())),
        ("recovery_target_action".into(), conf_quote("promote")),
        ("archive_mode".into(), "off".into()),
        ("archive_command".into(), conf_quote("")),
        ("port".into(), port.to_string()),
        ("listen_addresses".into(), conf_quote("127.0.0.1")),
        ("unix_socket_directories".into(), conf_quote(&into.to_string_lossy())),
        ("logging_collector".into(), "off".into()),
        ("log_destination".into(), conf_quote("stderr")),
    ]);
    settings
}

/// A running instance restored by [`restore`].
#[derive(Debug, Serialize)]
pub struct RestoredInstance {
    pub host: String,
    pub port: u16,
    /// Directory of the Unix socket.
    pub socket_dir: PathBuf,
    /// Role from the policy's connection, `postgres` when there is none.
    pub user: String,
    pub dbname: String,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    pub pid: u32,
    pub backup_id: BackupId,
    /// The command that stops the instance, as the OS user that owns it.
    pub stop_command: String,
    #[serde(skip)]
    server_bin: PathBuf,
    #[serde(skip)]
    os_user: Option<OsUser>,
    #[serde(skip)]
    child: Option<Child>,
}

impl RestoredInstance {
    /// Connects to the restored instance through its Unix socket, as the
    /// role of the policy's connection, with that connection's password.
    pub async fn connect(&self, connection: Option<&Connection>) -> Result<tokio_postgres::Client, LocalError> {
        connect_socket(&self.socket_dir, self.port, &self.user, &self.dbname, connection).await
    }

    /// Stops the instance with `pg_ctl stop -m fast` and waits for the postmaster to exit.
    pub async fn stop(mut self) -> Result<(), LocalError> {
        stop_server(&self.server_bin, &self.data_dir, self.os_user.as_ref()).await?;
        if let Some(mut child) = self.child.take() {
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
        info!(pg.port = self.port, pg.pid = self.pid, "restored instance stopped");
        Ok(())
    }
}

async fn stop_server(server_bin: &Path, data_dir: &Path, user: Option<&OsUser>) -> Result<(), LocalError> {
    let mut command = Command::new(server_bin.join("pg_ctl"));
    command.env_clear().env("PATH", "/usr/bin:/bin").stdin(Stdio::null());
    if let Some(user) = user {
        command.uid(user.uid).gid(user.gid);
    }
    command.arg("stop").arg("-m").arg("fast").arg("-w").arg("-D").arg(data_dir);
    run_command(command, "pg_ctl stop").await.map(|_| ())
}

fn stop_command_text(plan: &RestorePlan, user: Option<&OsUser>) -> String {
    let pg_ctl = shell_quote(&plan.server_bin.join("pg_ctl").to_string_lossy());
    let data = shell_quote(&plan.data_dir.to_string_lossy());
    match user {
        Some(user) => format!("runuser -u {} -- {pg_ctl} stop -m fast -D {data}", user.name),
        None => format!("{pg_ctl} stop -m fast -D {data}"),
    }
}

/// Runs a planned restore: downloads the base backup into `plan.data_dir`, writes the
/// recovery settings, starts PostgreSQL and waits until it has promoted.
///
/// When PostgreSQL exits during recovery, the error carries its own reason from the log.
pub async fn restore(plan: &RestorePlan, store: &ArchiveStore) -> Result<RestoredInstance, LocalError> {
    let span = info_span!(
        "pg.restore",
        pg.database = %plan.database,
        pg.backup_id = %plan.plan.backup.id,
        pg.port = plan.port,
    );
    run_restore(plan, store).instrument(span).await
}

async fn run_restore(plan: &RestorePlan, store: &ArchiveStore) -> Result<RestoredInstance, LocalError> {
    let user = OsUser::for_postgres()?;
    let location = store.location();

    prepare_restore_dir(&plan.into, user.as_ref()).await?;

    let restore_program = plan.barman_bin.join("barman-cloud-restore");
    let mut command = child_command(&restore_program, user.as_ref(), store.settings(), &[&plan.barman_bin]);
    if let Some(endpoint) = &store.settings().endpoint {
        command.arg("--endpoint-url").arg(endpoint);
    }
    command
        .arg(&location.destination_path)
        .arg(&location.server_name)
        .arg(plan.plan.backup.id.as_str())
        .arg(&plan.data_dir);
    info!(pg.data_dir = %plan.data_dir.display(), "downloading the base backup");
    run_command(command, "barman-cloud-restore").await?;

    write_recovery_files(plan, user.as_ref())?;

    let log = std::fs::File::create(&plan.log_file).map_err(io_error("create", &plan.log_file))?;
    chown(&plan.log_file, user.as_ref())?;
    let log_err = log.try_clone().map_err(io_error("open", &plan.log_file))?;
    let mut command = child_command(
        &plan.server_bin.join("postgres"),
        user.as_ref(),
        store.settings(),
        &[&plan.barman_bin, &plan.server_bin],
    );
    // Its own process group keeps a Ctrl-C at the terminal from reaching the instance,
    // which outlives visage-dr by default.
    command.arg("-D").arg(&plan.data_dir).stdout(log).stderr(log_err).process_group(0);
    let child = command.spawn().map_err(|source| LocalError::Spawn { program: "postgres".into(), source })?;
    let pid = child.id();
    info!(pg.pid = pid, "PostgreSQL started in recovery");

    let connection = plan.connection.clone();
    let mut instance = RestoredInstance {
        host: "127.0.0.1".into(),
        port: plan.port,
        socket_dir: plan.into.clone(),
        user: connection.as_ref().map(|c| c.user.clone()).unwrap_or_else(|| "postgres".into()),
        dbname: connection.as_ref().map(|c| c.dbname.clone()).unwrap_or_else(|| "postgres".into()),
        data_dir: plan.data_dir.clone(),
        log_file: plan.log_file.clone(),
        pid,
        backup_id: plan.plan.backup.id.clone(),
        stop_command: stop_command_text(plan, user.as_ref()),
        server_bin: plan.server_bin.clone(),
        os_user: user,
        child: Some(child),
    };
    let password = connection.as_ref().map(read_password).transpose()?.flatten();
    wait_for_promotion(plan, &mut instance, password.as_deref()).await?;
    info!(pg.pid = pid, "recovery complete; the instance accepts connections");
    Ok(instance)
}

async fn prepare_restore_dir(into: &Path, user: Option<&OsUser>) -> Result<(), LocalError> {
    // Checked again: the directory may have appeared since planning.
    check_restore_dir(into)?;
    std::fs::create_dir_all(into).map_err(io_error("create directory", into))?;
    std::fs::set_permissions(into, std::fs::Permissions::from_mode(0o700))
        .map_err(io_error("set permissions of", into))?;
    chown(into, user)?;
    if let Some(user) = user {
        // Every parent directory must be searchable by the user, or barman-cloud-restore and
        // postgres fail later with a less clear message.
        let mut command = Command::new("/usr/bin/test");
        command.env_clear().uid(user.uid).gid(user.gid).arg("-w").arg(into).arg("-a").arg("-x").arg(into);
        if run_command(command, "test").await.is_err() {
            return Err(LocalError::DirectoryNotUsable { user: user.name.clone(), path: into.to_path_buf() });
        }
    }
    Ok(())
}

fn chown(path: &Path, user: Option<&OsUser>) -> Result<(), LocalError> {
    match user {
        Some(user) => std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(io_error("chown", path)),
        None => Ok(()),
    }
}

fn write_recovery_files(plan: &RestorePlan, user: Option<&OsUser>) -> Result<(), LocalError> {
    let data = &plan.data_dir;
    std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)).map_err(io_error("set permissions of", data))?;

    // postgresql.auto.conf is read after postgresql.conf, so these settings win over the
    // source's, whatever postgresql.conf includes.
    let auto_conf = data.join("postgresql.auto.conf");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&auto_conf)
        .map_err(io_error("open", &auto_conf))?;
    file.write_all(plan.settings_text().as_bytes()).map_err(io_error("write", &auto_conf))?;
    file.sync_all().map_err(io_error("sync", &auto_conf))?;
    chown(&auto_conf, user)?;

    let signal = data.join("recovery.signal");
    std::fs::write(&signal, b"").map_err(io_error("create", &signal))?;
    chown(&signal, user)
}

/// Connects to an instance through the Unix socket in `socket_dir`, with the
/// password of `connection` if it has a password file.
pub async fn connect_socket(
    socket_dir: &Path,
    port: u16,
    user: &str,
    dbname: &str,
    connection: Option<&Connection>,
) -> Result<tokio_postgres::Client, LocalError> {
    let password = connection.map(read_password).transpose()?.flatten();
    let mut config = tokio_postgres::Config::new();
    config.host_path(socket_dir).port(port).user(user).dbname(dbname).connect_timeout(Duration::from_secs(10));
    if let Some(password) = &password {
        config.password(password);
    }
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| LocalError::Connect { port, reason: e.to_string() })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "connection to the restored instance ended");
        }
    });
    Ok(client)
}

/// Checks whether the instance has left recovery: `Some(true)` once `pg_is_in_recovery()` is false,
/// `Some(false)` while it is still in recovery, `None` while it does not accept connections.
async fn promoted(instance: &RestoredInstance, password: Option<&str>) -> Option<bool> {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(&instance.socket_dir)
        .port(instance.port)
        .user(&instance.user)
        .dbname(&instance.dbname)
        .connect_timeout(Duration::from_secs(2));
    if let Some(password) = password {
        config.password(password);
    }
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.ok()?;
    let task = tokio::spawn(connection);
    let in_recovery: Option<bool> = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .ok()
        .map(|row| row.get(0));
    drop(client);
    let _ = task.await;
    in_recovery.map(|in_recovery| !in_recovery)
}

async fn wait_for_promotion(
    plan: &RestorePlan,
    instance: &mut RestoredInstance,
    password: Option<&str>,
) -> Result<(), LocalError> {
    let started = Instant::now();
    let mut logged_recovery = false;
    loop {
        let exited = instance.child.as_mut().and_then(|child| child.try_wait().ok().flatten());
        if let Some(status) = exited {
            let log = std::fs::read_to_string(&plan.log_file).unwrap_or_default();
            let reason = failure_reason(&log).unwrap_or_else(|| {
                format!("the log names no FATAL or PANIC error; its last lines: {}", last_lines(&log, 5))
            });
            warn!(pg.pid = instance.pid, reason = %reason, "PostgreSQL exited during recovery");
            return Err(LocalError::RecoveryFailed { status: status.to_string(), reason, log: plan.log_file.clone() });
        }
        match promoted(instance, password).await {
            Some(true) => return Ok(()),
            Some(false) if !logged_recovery => {
                debug!(pg.pid = instance.pid, "instance accepts read-only connections; still in recovery");
                logged_recovery = true;
            }
            _ => {}
        }
        if started.elapsed() > plan.timeout {
            warn!(pg.pid = instance.pid, "recovery timed out; stopping the instance");
            stop_server(&plan.server_bin, &plan.data_dir, instance.os_user.as_ref()).await?;
            if let Some(mut child) = instance.child.take() {
                let _ = tokio::task::spawn_blocking(move || child.wait()).await;
            }
            return Err(LocalError::RecoveryTimedOut { seconds: plan.timeout.as_secs(), log: plan.log_file.clone() });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `FATAL` messages that the server sends to a client it turns away while it starts, such as
/// the readiness checks of [`restore`]. They do not explain why the server exited.
const CLIENT_REJECTIONS: &[&str] = &[
    "the database system is starting up",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
    "the database system is shutting down",
];

/// Extracts PostgreSQL's reason for exiting from its log: the first `FATAL` or `PANIC`
/// message that is not a rejected client connection (`CLIENT_REJECTIONS`), with the
/// `DETAIL` and `HINT` lines after it. When recovery ran out of WAL, the time of the last
/// replayed transaction is added, because it shows which target would work.
///
/// NOTE: this matches English severity words, so a server with a translated `lc_messages`
/// yields `None` and the caller falls back to the last log lines.
pub fn failure_reason(log: &str) -> Option<String> {
    let message_after = |line: &str, severity: &str| -> Option<String> {
        let start = line.find(severity)?;
        Some(line[start + severity.len()..].trim().to_string())
    };
    let lines: Vec<&str> = log.lines().collect();
    let (index, mut reason) = lines.iter().enumerate().find_map(|(index, line)| {
        message_after(line, "FATAL:")
            .filter(|message| !CLIENT_REJECTIONS.iter().any(|rejection| message.starts_with(rejection)))
            .or_else(|| message_after(line, "PANIC:"))
            .map(|message| (index, message))
    })?;
    for line in &lines[index + 1..] {
        if let Some(detail) = message_after(line, "DETAIL:").or_else(|| message_after(line, "HINT:")) {
            reason.push_str("; ");
            reason.push_str(&detail);
        } else {
            break;
        }
    }
    if let Some(last) = lines[..index]
        .iter()
        .rev()
        .find_map(|line| message_after(line, "last completed transaction was at log time"))
    {
        reason.push_str(&format!(" (the last replayed transaction committed at {last})"));
    }
    Some(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAN_OUT_OF_WAL: &str = "\
2026-12-04 20:04:30.101 UTC [8399] LOG:  starting point-in-time recovery to 2026-12-04 21:04:00+00
2026-12-04 20:04:31.211 UTC [8399] LOG:  restored log file \"00000001000000000000000D\" from archive
2026-12-04 20:04:34,423 [8495] ERROR: WAL file 00000001000000000000000E for server pgmain does not exist
2026-12-04 20:04:34.500 UTC [8399] LOG:  redo done at 0/D004E10 system usage: CPU: user: 0.00 s, system: 0.00 s, elapsed: 3.10 s
2026-12-04 20:04:34.500 UTC [8399] LOG:  last completed transaction was at log time 2026-12-04 20:04:07.591696+00
2026-12-04 20:04:34.501 UTC [8399] FATAL:  recovery ended before configured recovery target was reached
2026-12-04 20:04:34.510 UTC [8398] LOG:  startup process (PID 8399) exited with exit code 1
2026-12-04 20:04:34.511 UTC [8398] LOG:  database system is shut down
";

    #[test]
    fn failure_reason_of_recovery_out_of_wal() {
        let reason = failure_reason(RAN_OUT_OF_WAL).unwrap();
        assert!(reason.starts_with("recovery ended before configured recovery target was reached"), "{reason}");
        assert!(reason.contains("2026-12-04 20:04:07.591696+00"), "{reason}");
        assert!(!reason.contains("does not exist"), "{reason}");
    }

    #[test]
    fn failure_reason_skips_rejected_clients() {
        let log = "\
2026-12-05 06:32:32.100 UTC [9001] FATAL:  the database system is starting up
2026-12-05 06:32:32.400 UTC [9002] FATAL:  the database system is not yet accepting connections
2026-12-05 06:32:32.400 UTC [9002] DETAIL:  Consistent recovery state has not been yet reached.
2026-12-05 06:32:33.000 UTC [8999] LOG:  invalid magic number 0000 in log segment 000000010000000000000008, offset 0
2026-12-05 06:32:33.001 UTC [8999] FATAL:  recovery ended before configured recovery target was reached
";
        let reason = failure_reason(log).unwrap();
        assert_eq!(reason, "recovery ended before configured recovery target was reached");
    }

    #[test]
    fn failure_reason_with_hint() {
        let log = "LOG:  starting\nFATAL:  could not bind IPv4 address \"127.0.0.1\": Address already in use\nHINT:  Is another postmaster already running on port 5432?\nLOG:  database system is shut down\n";
        let reason = failure_reason(log).unwrap();
        assert_eq!(
            reason,
            "could not bind IPv4 address \"127.0.0.1\": Address already in use; Is another postmaster already running on port 5432?"
        );
    }

    #[test]
    fn failure_reason_none_without_fatal() {
        assert_eq!(failure_reason("LOG:  database system is ready to accept connections\n"), None);
    }

    #[test]
    fn conf_quote_doubles_quotes() {
        assert_eq!(conf_quote("it's"), "'it''s'");
        assert_eq!(conf_quote("a\\b"), "'a\\\\b'");
    }

    #[test]
    fn shell_quote_leaves_plain_words() {
        assert_eq!(shell_quote("s3://bucket/pg"), "s3://bucket/pg");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn settings_turn_archiving_off() {
        let location = ArchiveLocation::new("s3://bucket/pg", "main").unwrap();
        let target = TargetTime::parse("2026-05-28T12:00:00.5Z", Utc::now()).unwrap();
        let settings = recovery_settings(
            &location,
            Some("http://127.0.0.1:3900"),
            Path::new("/opt/b/barman-cloud-wal-restore"),
            Some(&target),
            1,
            54321,
            Path::new("/tmp/r"),
        );
        let get = |name: &str| settings.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        assert_eq!(get("archive_mode").as_deref(), Some("off"));
        assert_eq!(get("recovery_target_time").as_deref(), Some("'2026-05-28 12:00:00.500000+00:00'"));
        assert_eq!(
            get("restore_command").as_deref(),
            Some("'/opt/b/barman-cloud-wal-restore --endpoint-url http://127.0.0.1:3900 s3://bucket/pg main %f %p'")
        );
        assert_eq!(get("port").as_deref(), Some("54321"));
    }

    #[test]
    fn settings_omit_target_at_end_of_archive() {
        let location = ArchiveLocation::new("s3://bucket/pg", "main").unwrap();
        let settings =
            recovery_settings(&location, None, Path::new("/b/wal-restore"), None, 1, 5432, Path::new("/tmp/r"));
        assert!(settings.iter().all(|(name, _)| name != "recovery_target_time"));
    }
}
