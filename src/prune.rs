//! Pruning a repository: the retention rules of each source decide which
//! snapshots stay, the guard rails that depend on the current time and on
//! verification records are applied, and garbage collection frees the data
//! that no remaining snapshot needs.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use tracing::{info, warn};

use crate::id::SnapshotId;
use crate::repository::gc::{self, GcReport};
use crate::repository::lock::LockKind;
use crate::repository::manifest::{SnapshotStatus, SnapshotSummary};
use crate::repository::{RepoError, Repository};
use crate::retention::{Candidate, RetentionError, RetentionRules};

/// Errors of prune and forget.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("retention rules of {source_id}: {source}")]
    Rules {
        source_id: String,
        #[source]
        source: RetentionError,
    },
    #[error("snapshot {id} is the newest successful snapshot of {source_id}; pass --force to remove it anyway")]
    NewestSuccessful { id: SnapshotId, source_id: String },
}

/// Key under which a snapshot that passed restore verification is recorded.
pub fn verified_key(id: &SnapshotId) -> String {
    format!("catalogue/verified/{id}")
}

/// Snapshots that passed restore verification.
pub async fn verified_snapshots(repo: &Repository) -> Result<HashSet<SnapshotId>, RepoError> {
    Ok(repo
        .backend()
        .list("catalogue/verified/")
        .await?
        .iter()
        .filter_map(|o| o.key.trim_start_matches("catalogue/verified/").parse().ok())
        .collect())
}

/// One snapshot in a prune plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedSnapshot {
    pub id: SnapshotId,
    #[serde(serialize_with = "crate::repository::manifest::rfc3339_utc")]
    pub time: DateTime<Utc>,
    pub status: SnapshotStatus,
    pub keep: bool,
    /// Reasons for keeping it (`daily 2026-06-14`, `newest verified`) or removing it (`failed`).
    pub reasons: Vec<String>,
}

/// The plan for one source.
#[derive(Debug, Clone, Serialize)]
pub struct SourcePlan {
    pub source: String,
    /// Set when the source is left alone, with the reason.
    pub skipped: Option<String>,
    pub snapshots: Vec<PlannedSnapshot>,
}

/// Snapshots that prune keeps and removes, per source.
#[derive(Debug, Clone, Serialize)]
pub struct PrunePlan {
    pub sources: Vec<SourcePlan>,
}

impl PrunePlan {
    pub fn removals(&self) -> Vec<SnapshotId> {
        self.sources
            .iter()
            .flat_map(|s| s.snapshots.iter().filter(|p| !p.keep).map(|p| p.id.clone()))
            .collect()
    }
}

/// Settings of a prune run.
pub struct PruneSettings<'a> {
    /// Rules for a source identity, or `None` when the policy does not name it.
    pub rules_for: &'a dyn Fn(&str) -> Option<RetentionRules>,
    /// Time zone of day, week and month boundaries.
    pub tz: Tz,
    pub now: DateTime<Utc>,
    /// Refuse to prune a source whose newest successful snapshot is older.
    pub max_snapshot_age: Option<chrono::Duration>,
    /// Prune even when the newest successful snapshot is too old.
    pub force: bool,
}

/// Decides, per source, which snapshots stay. Deletes nothing.
pub fn plan(
    snapshots: &[SnapshotSummary],
    verified: &HashSet<SnapshotId>,
    settings: &PruneSettings<'_>,
) -> Result<PrunePlan, PruneError> {
    let mut by_source: BTreeMap<&str, Vec<&SnapshotSummary>> = BTreeMap::new();
    for s in snapshots {
        by_source.entry(s.source.as_str()).or_default().push(s);
    }
    let mut sources = Vec::new();
    for (source, mut list) in by_source {
        list.sort_by_key(|s| (s.time, s.id.clone()));
        let keep_all = |reason: String| SourcePlan {
            source: source.to_owned(),
            skipped: Some(reason),
            snapshots: list
                .iter()
                .map(|s| PlannedSnapshot { id: s.id.clone(), time: s.time, status: s.status, keep: true, reasons: vec!["source skipped".into()] })
                .collect(),
        };
        let Some(rules) = (settings.rules_for)(source) else {
            sources.push(keep_all("no retention rules in the policy for this source".into()));
            continue;
        };
        let newest_ok = list.iter().filter(|s| s.status == SnapshotStatus::Complete).map(|s| s.time).max();
        if let (Some(max_age), Some(newest)) = (settings.max_snapshot_age, newest_ok) {
            let age = settings.now.signed_duration_since(newest);
            if age > max_age && !settings.force {
                warn!(snapshot.source = %source, age_hours = age.num_hours(), "newest successful snapshot is too old; not pruning this source");
                sources.push(keep_all(format!(
                    "the newest successful snapshot is from {} ({} h ago, more than the {} h allowed); a failing backup job must not let retention remove the last good snapshots; fix the job or pass --force",
                    newest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    age.num_hours(),
                    max_age.num_hours()
                )));
                continue;
            }
        }
        let candidates: Vec<Candidate> = list
            .iter()
            .map(|s| Candidate {
                time: s.time,
                ok: s.status == SnapshotStatus::Complete,
                is_final: s.labels.get("final").map(String::as_str) == Some("true"),
                verified: verified.contains(&s.id),
            })
            .collect();
        let decisions = rules
            .apply(&candidates, settings.tz)
            .map_err(|source_err| PruneError::Rules { source_id: source.to_owned(), source: source_err })?;
        sources.push(SourcePlan {
            source: source.to_owned(),
            skipped: None,
            snapshots: list
                .iter()
                .zip(decisions)
                .map(|(s, d)| PlannedSnapshot {
                    id: s.id.clone(),
                    time: s.time,
                    status: s.status,
                    keep: d.keep,
                    reasons: d.reasons.iter().map(|r| r.to_string()).collect(),
                })
                .collect(),
        });
    }
    Ok(PrunePlan { sources })
}

/// Result of a confirmed prune.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub snapshots_removed: Vec<SnapshotId>,
    pub gc: GcReport,
}

/// Removes the plan's snapshots and collects garbage, under the exclusive lock.
pub async fn execute(repo: &Arc<Repository>, plan: &PrunePlan, grace: Duration) -> Result<PruneReport, PruneError> {
    let lock = repo.lock(LockKind::Exclusive, "prune").await?;
    let result = async {
        let removed = plan.removals();
        for id in &removed {
            repo.backend().delete(&format!("snapshots/{id}")).await.map_err(RepoError::from)?;
            info!(snapshot.id = %id, "snapshot removed");
        }
        let gc = gc::collect_garbage(repo, &lock, grace, false).await?;
        Ok(PruneReport { snapshots_removed: removed, gc })
    }
    .await;
    if let Err(e) = lock.release().await {
        warn!(error = %e, "could not remove the repository lock; it turns stale by itself");
    }
    result
}

/// Removes the named snapshots. The newest successful snapshot of a source
/// is kept unless `force`.
pub async fn forget(repo: &Arc<Repository>, ids: &[SnapshotId], force: bool) -> Result<Vec<SnapshotId>, PruneError> {
    let lock = repo.lock(LockKind::Exclusive, "forget").await?;
    let result = async {
        let all: Vec<SnapshotSummary> = repo.load_manifests().await?.iter().map(|m| m.summary()).collect();
        for id in ids {
            let Some(s) = all.iter().find(|s| &s.id == id) else {
                return Err(RepoError::SnapshotNotFound(id.to_string()).into());
            };
            let newest = all
                .iter()
                .filter(|o| o.source == s.source && o.status == SnapshotStatus::Complete)
                .max_by_key(|o| o.time);
            if !force && newest.map(|n| &n.id) == Some(id) {
                return Err(PruneError::NewestSuccessful { id: id.clone(), source_id: s.source.clone() });
            }
        }
        for id in ids {
            repo.backend().delete(&format!("snapshots/{id}")).await.map_err(RepoError::from)?;
            info!(snapshot.id = %id, "snapshot forgotten");
        }
        Ok(ids.to_vec())
    }
    .await;
    if let Err(e) = lock.release().await {
        warn!(error = %e, "could not remove the repository lock; it turns stale by itself");
    }
    result
}
