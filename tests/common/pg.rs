//! A throw-away PostgreSQL 15 server that archives its WAL to a Garage bucket with
//! barman-cloud-wal-archive, for the point-in-time recovery tests.
//!
//! The server runs as the OS user `postgres` (PostgreSQL refuses root) in a temporary
//! directory that user owns, on a free loopback port, and is stopped by its PID on drop.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use visage_dr::postgres::local::OsUser;

use super::S3Server;

/// Server binaries of PostgreSQL 15 (Debian layout).
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Directory of the barman-cloud commands.
pub fn barman_bin() -> PathBuf {
    let tools = std::env::var("VISAGE_DR_TOOLS").unwrap_or_else(|_| "/opt/visage-dr".into());
    PathBuf::from(tools).join("venv-barman/bin")
}

/// Checks that PostgreSQL, barman-cloud and the `postgres` OS user are present. Outside CI a
/// missing piece skips the test with a note, and in CI it fails the test.
pub fn tools_present() -> bool {
    let missing: Vec<String> = [
        Path::new(PG_BIN).join("initdb"),
        barman_bin().join("barman-cloud-wal-archive"),
    ]
    .into_iter()
    .filter(|path| !path.is_file())
    .map(|path| path.display().to_string())
    .chain(OsUser::lookup("postgres").err().map(|e| e.to_string()))
    .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("missing for the PostgreSQL tests: {}; run scripts/install-deps", missing.join(", "));
    }
    eprintln!("note: PostgreSQL tests skipped, missing: {}; scripts/install-deps installs them", missing.join(", "));
    false
}

/// Creates a temporary directory that the `postgres` user owns and can enter.
pub fn postgres_dir(user: &OsUser) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("vdr-pg-").tempdir_in("/tmp").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
    dir
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port()
}

/// Sends SIGINT (PostgreSQL's fast shutdown) to `pid` and waits up to 30 s for it to exit.
pub fn stop_postgres_pid(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    // SAFETY: signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid as libc::pid_t, 0) } == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running source server that archives WAL to `s3://<bucket>/pg/<server_name>`.
pub struct PgServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub bucket: String,
    pub server_name: String,
    child: Option<Child>,
}

impl PgServer {
    /// Runs initdb with 1 MiB WAL segments (to keep the archive small), configures
    /// archiving and starts the server.
    pub async fn start(s3: &S3Server, bucket: &str, server_name: &str) -> PgServer {
        let user = OsUser::lookup("postgres").unwrap();
        let dir = postgres_dir(&user);
        let data = dir.path().join("data");
        let status = Command::new(Path::new(PG_BIN).join("initdb"))
            .uid(user.uid)
            .gid(user.gid)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .args(["--auth=trust", "-U", "postgres", "--encoding=UTF8", "--locale=C.UTF-8", "--wal-segsize=1", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed: {status}");

        let port = free_port();
        let archive = format!(
            "{}/barman-cloud-wal-archive --endpoint-url {} s3://{bucket}/pg {server_name} %p",
            barman_bin().display(),
            s3.endpoint
        );
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             archive_mode = on\narchive_timeout = 2s\narchive_command = '{archive}'\n\
             log_line_prefix = '%m [%p] '\ntimezone = 'UTC'\nlog_timezone = 'UTC'\n",
            dir.path().display()
        );
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&conf);
        std::fs::write(&conf_path, text).unwrap();

        let log = std::fs::File::create(dir.path().join("source.log")).unwrap();
        let child = Command::new(Path::new(PG_BIN).join("postgres"))
            .uid(user.uid)
            .gid(user.gid)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &user.home)
            .env("AWS_ACCESS_KEY_ID", &s3.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
            .env("AWS_DEFAULT_REGION", &s3.region)
            .arg("-D")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = PgServer {
            dir,
            port,
            bucket: bucket.to_string(),
            server_name: server_name.to_string(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if connect(port).await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "the source server did not start: {}", server.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("source.log")).unwrap_or_default()
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(self.port).await.expect("connect to the source server")
    }

    /// Switches to a new WAL segment and waits until the completed one is archived.
    pub async fn switch_and_wait_archived(&self) {
        let client = self.client().await;
        let row = client
            .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
            .await
            .unwrap();
        let segment: String = row.get(0);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let row = client
                .query_one("SELECT coalesce(last_archived_wal, ''), coalesce(last_failed_wal, '') FROM pg_stat_archiver", &[])
                .await
                .unwrap();
            let archived: String = row.get(0);
            let failed: String = row.get(1);
            // Segment names sort in WAL order within one timeline.
            if archived.len() == 24 && archived >= segment {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "segment {segment} not archived within 60 s (last archived {archived:?}, last failed {failed:?}); log: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server by its PID and waits for it (and its archiver) to exit.
    ///
    /// The server is this process's child, so it stays a zombie until it is reaped. Waiting
    /// with `try_wait` detects the exit, but probing the PID with signal 0 would not.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.wait();
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connects to 127.0.0.1:`port` as `postgres` (trust authentication).
pub async fn connect(port: u16) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(5))
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Returns the server's clock as an RFC 3339 UTC instant with microseconds, for recovery targets.
pub async fn server_now(client: &tokio_postgres::Client) -> String {
    let row = client
        .query_one(r#"SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#, &[])
        .await
        .unwrap();
    row.get(0)
}
