//! Scratch resources of a verification run on the local driver: one directory per run under
//! the policy's `scratch_dir`, named `visage-dr-verify-<UTC stamp>`, holding the restored
//! PostgreSQL instances, the restored objects and a marker file with the time-to-live.
//!
//! ```text
//! <scratch_dir>/visage-dr-verify-20261205T040000Z/
//!     visage-dr-verify.json     marker: created, expires, kept, pid of the verify process
//!     pg-<database>/            restore directory of the local driver (data/, log, socket)
//!     objects/<bucket>/<n>      restored sample objects
//!     checkpoints/<job>         restored checkpoints
//! ```
//!
//! A run removes the directories of earlier runs whose time-to-live has passed before it
//! starts, stopping any PostgreSQL still running in them.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

/// Name prefix of every run directory.
pub const RUN_PREFIX: &str = "visage-dr-verify-";

/// File name of the marker in each run directory.
pub const MARKER: &str = "visage-dr-verify.json";

/// Time-to-live of resources kept with `--keep`: long enough to inspect them the same day,
/// short enough that a forgotten one goes with the next weekly run.
pub const KEEP_TTL: Duration = Duration::from_secs(24 * 3600);

/// Time added to the run's timeout before its resources count as left over: the teardown of
/// a run that hit its timeout may still be stopping PostgreSQL.
pub const TEARDOWN_GRACE: Duration = Duration::from_secs(10 * 60);

/// How long a stopping PostgreSQL gets for a fast shutdown before it is killed.
const FAST_SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// Returns `name` as one safe path component: every character other than `A-Z a-z 0-9 . _ -`
/// becomes `_`, and `.` or `..` get a leading `_`, so a policy name cannot leave the run
/// directory.
pub fn file_name(name: &str) -> String {
    let safe: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
    if safe.is_empty() || safe == "." || safe == ".." {
        format!("_{safe}")
    } else {
        safe
    }
}

/// Errors of scratch directories.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("cannot {op} {path}: {error}; check that the verification scratch_dir is writable")]
    Io { op: &'static str, path: PathBuf, error: std::io::Error },
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ScratchError + 'a {
    move |error| ScratchError::Io { op, path: path.to_owned(), error }
}

/// The marker file of a run directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub created: DateTime<Utc>,
    /// After this time any later run removes the directory.
    pub expires: DateTime<Utc>,
    pub kept: bool,
    /// Process id of the verify run that created it.
    pub pid: u32,
}

/// The scratch directory of one run.
#[derive(Debug)]
pub struct ScratchRun {
    pub path: PathBuf,
    pub marker: Marker,
}

impl ScratchRun {
    /// Creates `<scratch_dir>/visage-dr-verify-<stamp>` with its marker. Two runs started in
    /// the same second get a numbered suffix.
    pub fn create(scratch_dir: &Path, now: DateTime<Utc>, ttl: Duration) -> Result<ScratchRun, ScratchError> {
        create_parent(scratch_dir)?;
        let stamp = now.format("%Y%m%dT%H%M%SZ").to_string();
        let mut path = scratch_dir.join(format!("{RUN_PREFIX}{stamp}"));
        let mut n = 1;
        loop {
            match std::fs::create_dir(&path) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    n += 1;
                    path = scratch_dir.join(format!("{RUN_PREFIX}{stamp}-{n}"));
                }
                Err(error) => return Err(ScratchError::Io { op: "create directory", path, error }),
            }
        }
        // PostgreSQL may run as another OS user, who must be able to enter the directory.
        set_mode(&path, 0o711)?;
        let marker = Marker {
            created: now,
            expires: now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(1)),
            kept: false,
            pid: std::process::id(),
        };
        let run = ScratchRun { path, marker };
        run.write_marker()?;
        info!(scratch.path = %run.path.display(), "scratch directory created");
        Ok(run)
    }

    fn write_marker(&self) -> Result<(), ScratchError> {
        let path = self.path.join(MARKER);
        let text = serde_json::to_vec_pretty(&self.marker).expect("marker serialises");
        std::fs::write(&path, text).map_err(io_error("write", &path))
    }

    /// Marks the directory as kept until `now + KEEP_TTL`.
    pub fn keep(&mut self, now: DateTime<Utc>) -> Result<(), ScratchError> {
        self.marker.kept = true;
        self.marker.expires = now + chrono::Duration::from_std(KEEP_TTL).expect("KEEP_TTL fits");
        self.write_marker()
    }

    /// Stops every process still working in the directory, PostgreSQL first, and removes it.
    pub async fn remove(&self) -> Result<(), ScratchError> {
        remove_run_dir(&self.path).await
    }
}

fn create_parent(dir: &Path) -> Result<(), ScratchError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        set_mode(dir, 0o711)?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ScratchError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_error("set permissions of", path))
}

/// Outcome of [`remove_expired`] for one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub path: PathBuf,
    pub removed: bool,
    pub expires: Option<DateTime<Utc>>,
}

/// Removes the run directories under `scratch_dir` whose time-to-live has passed at `now`,
/// stopping PostgreSQL instances still running in them. Directories without a readable
/// marker are left alone with a warning, since visage-dr cannot tell whose they are.
pub async fn remove_expired(scratch_dir: &Path, now: DateTime<Utc>) -> Result<Vec<Leftover>, ScratchError> {
    let entries = match std::fs::read_dir(scratch_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(ScratchError::Io { op: "read directory", path: scratch_dir.to_owned(), error }),
    };
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(RUN_PREFIX))
        .map(|e| e.path())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let marker_path = path.join(MARKER);
        let marker: Option<Marker> = std::fs::read(&marker_path).ok().and_then(|data| serde_json::from_slice(&data).ok());
        let Some(marker) = marker else {
            warn!(scratch.path = %path.display(), "ignoring a scratch directory without a readable marker; remove it by hand when no run uses it");
            out.push(Leftover { path, removed: false, expires: None });
            continue;
        };
        if marker.expires > now {
            debug!(scratch.path = %path.display(), scratch.expires = %marker.expires, "scratch directory not expired yet");
            out.push(Leftover { path, removed: false, expires: Some(marker.expires) });
            continue;
        }
        info!(scratch.path = %path.display(), scratch.expires = %marker.expires, scratch.kept = marker.kept, "removing an expired scratch directory");
        remove_run_dir(&path).await?;
        out.push(Leftover { path, removed: true, expires: Some(marker.expires) });
    }
    Ok(out)
}

/// Stops the PostgreSQL instances of a run directory and every other process that works in
/// it, then deletes it.
async fn remove_run_dir(path: &Path) -> Result<(), ScratchError> {
    for pid_file in postmaster_pid_files(path) {
        stop_postmaster(&pid_file).await;
    }
    stop_processes_using(path).await;
    match std::fs::remove_dir_all(path) {
        Ok(()) => {
            info!(scratch.path = %path.display(), "scratch directory removed");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(ScratchError::Io { op: "remove", path: path.to_owned(), error }),
    }
}

/// Returns the `postmaster.pid` files of the restore directories of a run (`*/data/`).
fn postmaster_pid_files(run: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(run) else { return Vec::new() };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("data").join("postmaster.pid"))
        .filter(|p| p.is_file())
        .collect()
}

/// Returns the PID in a `postmaster.pid` file when that process is a live postmaster of the
/// file's data directory. Checking the command line keeps a reused PID from being signalled.
fn live_postmaster(pid_file: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    let data_dir = pid_file.parent()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let arguments: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let names_dir = arguments.iter().any(|a| Path::new(std::ffi::OsStr::from_bytes(a)) == data_dir);
    (names_dir && process_alive(pid)).then_some(pid)
}

/// Returns whether `pid` is a running process. A zombie (exited, not yet reaped) is not.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may contain spaces.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// Returns the processes, other than this one, whose command line names `dir` or a path
/// inside it: a barman-cloud-restore still writing into it after its run was interrupted, or a
/// postmaster whose `postmaster.pid` is gone.
fn processes_using(dir: &Path) -> Vec<i32> {
    let own = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
            cmdline.split(|b| *b == 0).any(|a| !a.is_empty() && Path::new(std::ffi::OsStr::from_bytes(a)).starts_with(dir))
        })
        .filter(|pid| process_alive(*pid))
        .collect()
}

/// Stops the processes that still work in `dir`: SIGTERM, then SIGKILL after 10 seconds.
async fn stop_processes_using(dir: &Path) {
    let pids = processes_using(dir);
    if pids.is_empty() {
        return;
    }
    warn!(scratch.path = %dir.display(), pids = ?pids, "stopping processes that still use the scratch directory");
    for (signal, wait) in [(libc::SIGTERM, Duration::from_secs(10)), (libc::SIGKILL, Duration::from_secs(5))] {
        for pid in &pids {
            // SAFETY: kill has no memory-safety preconditions; each PID named the directory in
            // its command line a moment ago.
            unsafe { libc::kill(*pid, signal) };
        }
        let deadline = Instant::now() + wait;
        while pids.iter().any(|pid| process_alive(*pid)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !pids.iter().any(|pid| process_alive(*pid)) {
            return;
        }
    }
}

/// Stops the postmaster of `pid_file`: SIGINT (a fast shutdown), then SIGKILL when it has not
/// exited after [`FAST_SHUTDOWN_WAIT`].
async fn stop_postmaster(pid_file: &Path) {
    let Some(pid) = live_postmaster(pid_file) else { return };
    info!(pg.pid = pid, pg.data_dir = %pid_file.parent().map(|p| p.display().to_string()).unwrap_or_default(), "stopping a scratch PostgreSQL instance");
    for (signal, wait) in [(libc::SIGINT, FAST_SHUTDOWN_WAIT), (libc::SIGKILL, Duration::from_secs(5))] {
        // SAFETY: kill has no memory-safety preconditions; the PID was checked above to be a
        // postmaster of this data directory.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + wait;
        while process_alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !process_alive(pid) {
            return;
        }
        warn!(pg.pid = pid, "scratch PostgreSQL did not stop after a fast shutdown; killing it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn expired_directories_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let old = ScratchRun::create(root.path(), now - chrono::Duration::hours(3), Duration::from_secs(3600)).unwrap();
        let fresh = ScratchRun::create(root.path(), now, Duration::from_secs(3600)).unwrap();
        std::fs::create_dir(root.path().join(format!("{RUN_PREFIX}no-marker"))).unwrap();
        std::fs::write(old.path.join("leftover"), b"x").unwrap();

        let result = remove_expired(root.path(), now).await.unwrap();
        assert_eq!(result.len(), 3, "{result:?}");
        assert!(!old.path.exists());
        assert!(fresh.path.exists());
        assert!(root.path().join(format!("{RUN_PREFIX}no-marker")).exists());
        let removed: Vec<&Leftover> = result.iter().filter(|l| l.removed).collect();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].path, old.path);
    }

    #[test]
    fn same_second_runs_get_distinct_dirs() {
        let root = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let a = ScratchRun::create(root.path(), now, Duration::from_secs(60)).unwrap();
        let b = ScratchRun::create(root.path(), now, Duration::from_secs(60)).unwrap();
        assert_ne!(a.path, b.path);
        assert!(b.path.to_string_lossy().ends_with("-2"), "{}", b.path.display());
    }

    #[test]
    fn keep_extends_the_time_to_live() {
        let root = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let mut run = ScratchRun::create(root.path(), now, Duration::from_secs(60)).unwrap();
        run.keep(now).unwrap();
        let stored: Marker = serde_json::from_slice(&std::fs::read(run.path.join(MARKER)).unwrap()).unwrap();
        assert!(stored.kept);
        assert_eq!(stored.expires, now + chrono::Duration::hours(24));
    }

    #[tokio::test]
    async fn remove_stops_processes_inside() {
        let root = tempfile::tempdir().unwrap();
        let run = ScratchRun::create(root.path(), Utc::now(), Duration::from_secs(60)).unwrap();
        let file = run.path.join("busy");
        std::fs::write(&file, b"").unwrap();
        let mut child = std::process::Command::new("tail").arg("-f").arg(&file).spawn().unwrap();
        let pid = child.id() as i32;
        // Until exec, the child's command line is still the test's own.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while processes_using(&run.path).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let found = processes_using(&run.path);
        if found != vec![pid] {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert_eq!(found, vec![pid]);
        run.remove().await.unwrap();
        let _ = child.wait();
        assert!(!run.path.exists());
        assert!(!process_alive(pid));
    }

    #[test]
    fn file_name_stays_inside() {
        let cases = [("uploads", "uploads"), ("a/b", "a_b"), ("..", "_.."), (".", "_."), ("", "_"), ("bild ä", "bild__")];
        for (name, expected) in cases {
            assert_eq!(file_name(name), expected, "{name:?}");
        }
    }

    #[test]
    fn own_process_is_alive() {
        assert!(process_alive(std::process::id() as i32));
        assert!(!process_alive(i32::MAX));
    }
}
