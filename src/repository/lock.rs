//! Repository locks: shared for snapshots, restores and checks, exclusive for
//! prune and garbage collection. The protocol is in `docs/design.md`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::backend::{BackendError, DynBackend};
use crate::id::LockId;

/// How often a held lock is rewritten.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// A lock not refreshed for this long is stale. Ten refresh intervals leave
/// room for a slow S3 server without letting a dead run block others long.
pub const STALE_AFTER: Duration = Duration::from_secs(600);

/// Errors of the lock protocol.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the repository is locked by {holder}; wait for it to finish, or if that process is gone run `visage-dr unlock` once the lock is older than {stale_minutes} minutes")]
    Conflict { holder: String, stale_minutes: u64 },
    #[error("the repository lock {id} could not be refreshed for {seconds} s, so another process may treat it as stale; the run stops")]
    Lost { id: LockId, seconds: u64 },
    #[error("lock file {key} is not valid JSON: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockKind {
    Shared,
    Exclusive,
}

/// A lock file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub id: LockId,
    pub kind: LockKind,
    /// Work the holder is doing, such as `snapshot s3:visage-uploads`.
    pub purpose: String,
    pub hostname: String,
    pub pid: u32,
    pub created: DateTime<Utc>,
    pub refreshed: DateTime<Utc>,
}

impl LockInfo {
    pub fn is_stale(&self, now: DateTime<Utc>, stale_after: Duration) -> bool {
        now.signed_duration_since(self.refreshed)
            > chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX)
    }

    /// Holder description for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} lock {} ({}, host {}, pid {}, created {}, refreshed {})",
            match self.kind {
                LockKind::Shared => "shared",
                LockKind::Exclusive => "exclusive",
            },
            self.id,
            self.purpose,
            self.hostname,
            self.pid,
            self.created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.refreshed.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
    }
}

fn lock_key(id: &LockId) -> String {
    format!("locks/{id}")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Timing of the lock protocol.
#[derive(Debug, Clone, Copy)]
pub struct LockTiming {
    pub refresh_interval: Duration,
    pub stale_after: Duration,
}

impl Default for LockTiming {
    fn default() -> Self {
        Self { refresh_interval: REFRESH_INTERVAL, stale_after: STALE_AFTER }
    }
}

/// Reads every lock file. Unreadable ones are reported as errors.
pub async fn list_locks(backend: &DynBackend) -> Result<Vec<(String, LockInfo)>, LockError> {
    let mut out = Vec::new();
    for obj in backend.list("locks/").await? {
        let data = match backend.get(&obj.key).await {
            Ok(d) => d,
            // Released between the listing and the read.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        let info: LockInfo = serde_json::from_slice(&data)
            .map_err(|source| LockError::Corrupt { key: obj.key.clone(), source })?;
        out.push((obj.key, info));
    }
    Ok(out)
}

/// A held lock. Refreshes itself in the background until released.
pub struct LockGuard {
    backend: DynBackend,
    info: Arc<Mutex<LockInfo>>,
    last_refresh_ok: Arc<Mutex<std::time::Instant>>,
    timing: LockTiming,
    refresher: tokio::task::JoinHandle<()>,
}

impl LockGuard {
    /// Takes a lock of `kind`, waiting up to `wait` for conflicting locks to go.
    pub async fn acquire(
        backend: DynBackend,
        kind: LockKind,
        purpose: &str,
        timing: LockTiming,
        wait: Duration,
    ) -> Result<LockGuard, LockError> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match Self::try_acquire(backend.clone(), kind, purpose, timing).await {
                Err(LockError::Conflict { holder, stale_minutes }) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(LockError::Conflict { holder, stale_minutes });
                    }
                    info!(lock.holder = %holder, "repository locked, waiting");
                    tokio::time::sleep(Duration::from_secs(2).min(wait)).await;
                }
                other => return other,
            }
        }
    }

    async fn try_acquire(
        backend: DynBackend,
        kind: LockKind,
        purpose: &str,
        timing: LockTiming,
    ) -> Result<LockGuard, LockError> {
        let now = Utc::now();
        let info = LockInfo {
            id: LockId::new(now),
            kind,
            purpose: purpose.to_owned(),
            hostname: hostname(),
            pid: std::process::id(),
            created: now,
            refreshed: now,
        };
        let key = lock_key(&info.id);
        backend.put(&key, Bytes::from(serde_json::to_vec_pretty(&info).expect("lock serialises"))).await?;

        let others = match list_locks(&backend).await {
            Ok(l) => l,
            Err(e) => {
                let _ = backend.delete(&key).await;
                return Err(e);
            }
        };
        for (other_key, other) in &others {
            if other.id == info.id {
                continue;
            }
            if other.is_stale(Utc::now(), timing.stale_after) {
                if kind == LockKind::Exclusive {
                    warn!(lock.id = %other.id, lock.holder = %other.describe(), "removing stale lock");
                    backend.delete(other_key).await?;
                }
                continue;
            }
            let conflict = kind == LockKind::Exclusive || other.kind == LockKind::Exclusive;
            if conflict {
                backend.delete(&key).await?;
                return Err(LockError::Conflict {
                    holder: other.describe(),
                    stale_minutes: timing.stale_after.as_secs() / 60,
                });
            }
        }

        let info = Arc::new(Mutex::new(info));
        let last_refresh_ok = Arc::new(Mutex::new(std::time::Instant::now()));
        let refresher = {
            let backend = backend.clone();
            let info = info.clone();
            let last = last_refresh_ok.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(timing.refresh_interval).await;
                    let mut guard = info.lock().await;
                    guard.refreshed = Utc::now();
                    let body = Bytes::from(serde_json::to_vec_pretty(&*guard).expect("lock serialises"));
                    let key = lock_key(&guard.id);
                    drop(guard);
                    match backend.put(&key, body).await {
                        Ok(()) => *last.lock().await = std::time::Instant::now(),
                        Err(e) => warn!(error = %e, s3.key = %key, "lock refresh failed, retrying at the next interval"),
                    }
                }
            })
        };
        Ok(LockGuard { backend, info, last_refresh_ok, timing, refresher })
    }

    pub async fn id(&self) -> LockId {
        self.info.lock().await.id.clone()
    }

    /// Fails when the lock has not been refreshed for the stale limit, since
    /// another process may then have taken over the repository.
    pub async fn ensure_held(&self) -> Result<(), LockError> {
        let elapsed = self.last_refresh_ok.lock().await.elapsed();
        if elapsed > self.timing.stale_after {
            return Err(LockError::Lost { id: self.id().await, seconds: elapsed.as_secs() });
        }
        Ok(())
    }

    /// Stops refreshing and deletes the lock file.
    pub async fn release(self) -> Result<(), LockError> {
        self.refresher.abort();
        let key = lock_key(&self.info.lock().await.id);
        self.backend.delete(&key).await?;
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // A guard dropped without `release` stops refreshing; its lock file
        // turns stale and is reclaimed by the next exclusive locker.
        self.refresher.abort();
    }
}

/// Removes the locks that this process holds, for a shutdown that abandoned
/// work in flight, and returns what was removed.
pub async fn remove_own_locks(backend: &DynBackend) -> Result<Vec<LockInfo>, LockError> {
    let (host, pid) = (hostname(), std::process::id());
    let mut removed = Vec::new();
    for (key, info) in list_locks(backend).await? {
        if info.hostname == host && info.pid == pid {
            backend.delete(&key).await?;
            info!(lock.id = %info.id, lock.purpose = %info.purpose, "lock of an abandoned run released");
            removed.push(info);
        }
    }
    Ok(removed)
}

/// Removes stale locks (or all locks with `all`) and returns what was removed.
pub async fn remove_locks(
    backend: &DynBackend,
    all: bool,
    stale_after: Duration,
) -> Result<Vec<LockInfo>, LockError> {
    let mut removed = Vec::new();
    for (key, info) in list_locks(backend).await? {
        if all || info.is_stale(Utc::now(), stale_after) {
            backend.delete(&key).await?;
            info!(lock.id = %info.id, lock.holder = %info.describe(), "lock removed");
            removed.push(info);
        }
    }
    Ok(removed)
}
