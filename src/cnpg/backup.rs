//! One scheduled backup through a CNPG `Backup` resource.
//!
//! The run lists the cluster's Backups first. CNPG runs one backup per cluster and queues the
//! rest behind any older non-terminal one, so a run that finds a live earlier backup skips its
//! slot, and one that finds a stale earlier backup deletes it and goes on. The Backup is named
//! after the schedule slot, `<cluster>-<YYYYMMDDHHMMSS>` in UTC, so a rerun of the same slot
//! finds and waits for the Backup it created before instead of creating a second one.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use serde::{Deserialize, Serialize};
use tracing::{info, info_span, warn, Instrument};

use super::phase::{PhaseTracker, Step, PHASE_COMPLETED, PHASE_FAILED, PHASE_WAL_ARCHIVING_FAILING};
use super::resources::{
    Backup, BackupSpec, Cluster, LocalObjectReference, ObjectStore, PluginConfiguration, BARMAN_CLOUD_PLUGIN,
    CNPG_API_VERSION, MANAGED_BY_LABEL, MANAGED_BY_VALUE,
};
use super::{status_code, CnpgError};
use crate::id::SnapshotId;
use crate::postgres::config::{CnpgMethod, DatabaseSpec, Driver};
use crate::postgres::records::{record_key, BackupRecord, RunStatus, RECORD_VERSION};
use crate::repository::{RepoError, Repository};
use crate::retention::{Candidate, RetentionRules};

/// Default time `walArchivingFailing` may persist before the backup counts as failed. CNPG
/// sets it when `archive_command` has not shipped the backup's WAL yet, which a healthy
/// cluster clears within a few `archive_timeout` periods (5 minutes by default).
pub const DEFAULT_WAL_FAILING_GRACE: Duration = Duration::from_secs(15 * 60);

/// Default hard deadline of one backup. A `running` Backup can outlive its pod (CNPG does not
/// always notice), so the wait ends here whatever the phase is.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(6 * 3600);

/// Interval of the checks that need no watch event: the pod, the grace period, the deadline.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Settings of one backup run.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub wal_failing_grace: Duration,
    pub deadline: Duration,
    /// Interval of the pod and deadline checks between watch events.
    pub check_interval: Duration,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            wal_failing_grace: DEFAULT_WAL_FAILING_GRACE,
            deadline: DEFAULT_DEADLINE,
            check_interval: CHECK_INTERVAL,
        }
    }
}

/// The outcome of one backup run.
#[derive(Debug)]
pub enum BackupOutcome {
    /// The Backup completed; its record is stored.
    Completed { record: CnpgBackupRecord, warnings: Vec<String> },
    /// An earlier Backup of the cluster is still running; nothing was created.
    Skipped { reason: String },
    /// The Backup failed, or an API request failed; the failed record is stored.
    Failed { record: Option<CnpgBackupRecord>, error: String },
}

/// A catalogue record of a cnpg backup: the common record plus the Backup's status fields.
///
/// It is stored at the same key as every PostgreSQL record, so readers of [`BackupRecord`]
/// read it too and ignore the extra fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CnpgBackupRecord {
    #[serde(flatten)]
    pub record: BackupRecord,
    pub namespace: String,
    pub cluster: String,
    /// `barmanObjectStore` or `plugin`.
    pub method: String,
    pub begin_lsn: Option<String>,
    pub end_lsn: Option<String>,
    /// The last phase seen.
    pub phase: String,
    /// CNPG's own name of the base backup (`status.backupName`).
    pub cnpg_backup_name: Option<String>,
}

/// The cnpg settings of a policy database, checked.
#[derive(Debug, Clone)]
pub struct Target {
    pub namespace: String,
    pub cluster: String,
    pub method: CnpgMethod,
}

impl Target {
    pub fn of(spec: &DatabaseSpec) -> Result<Target, CnpgError> {
        if spec.driver != Driver::Cnpg {
            return Err(CnpgError::WrongDriver { database: spec.name.clone(), driver: format!("{:?}", spec.driver).to_lowercase() });
        }
        let missing = |field| CnpgError::MissingSetting { database: spec.name.clone(), field };
        Ok(Target {
            namespace: spec.namespace.clone().ok_or_else(|| missing("namespace"))?,
            cluster: spec.cluster.clone().ok_or_else(|| missing("cluster"))?,
            method: spec.method.unwrap_or(CnpgMethod::BarmanObjectStore),
        })
    }
}

/// Name of the Backup of `cluster` for the schedule slot `slot`.
pub fn backup_name(cluster: &str, slot: DateTime<Utc>) -> String {
    format!("{cluster}-{}", slot.format("%Y%m%d%H%M%S"))
}

/// Method name as CNPG spells it.
pub fn method_name(method: CnpgMethod) -> &'static str {
    match method {
        CnpgMethod::BarmanObjectStore => "barmanObjectStore",
        CnpgMethod::Plugin => "plugin",
    }
}

/// Builds the Backup resource for `slot`.
pub fn backup_manifest(target: &Target, slot: DateTime<Utc>) -> Backup {
    let labels = BTreeMap::from([(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())]);
    Backup {
        api_version: CNPG_API_VERSION.into(),
        kind: "Backup".into(),
        metadata: ObjectMeta {
            name: Some(backup_name(&target.cluster, slot)),
            namespace: Some(target.namespace.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: BackupSpec {
            cluster: LocalObjectReference { name: target.cluster.clone() },
            method: Some(method_name(target.method).into()),
            plugin_configuration: (target.method == CnpgMethod::Plugin).then(|| PluginConfiguration {
                name: BARMAN_CLOUD_PLUGIN.into(),
                parameters: BTreeMap::new(),
            }),
        },
        status: None,
    }
}

/// Returns whether a phase ends a Backup for good.
fn is_terminal(phase: &str) -> bool {
    phase == PHASE_COMPLETED || phase == PHASE_FAILED
}

/// Takes one backup of `spec` for `slot`, records it in `repo` and applies Backup retention.
///
/// Returns an error only for a database whose cnpg settings are incomplete. A failed API
/// request is a failed outcome with a stored record, like a failed Backup.
pub async fn run(
    client: kube::Client,
    spec: &DatabaseSpec,
    repo: Option<&Repository>,
    slot: DateTime<Utc>,
    options: &BackupOptions,
) -> Result<BackupOutcome, CnpgError> {
    let target = Target::of(spec)?;
    let name = backup_name(&target.cluster, slot);
    let span = info_span!("cnpg.backup", pg.database = %spec.name, pg.cluster = %target.cluster, k8s.namespace = %target.namespace, cnpg.backup = %name);
    async {
        let run = Run { client, spec, target: &target, repo, options, name: name.clone() };
        let started = Utc::now();
        match run.execute(slot, started).await {
            Ok(outcome) => Ok(outcome),
            // An API error before or during the wait still leaves a failed record.
            Err(error) => {
                let error = error.to_string();
                warn!(error = %error, "backup failed");
                let record = run.record(&backup_manifest(&target, slot), started, RunStatus::Failed, Some(error.clone()));
                run.store(&record).await;
                Ok(BackupOutcome::Failed { record: Some(record), error })
            }
        }
    }
    .instrument(span)
    .await
}

struct Run<'a> {
    client: kube::Client,
    spec: &'a DatabaseSpec,
    target: &'a Target,
    repo: Option<&'a Repository>,
    options: &'a BackupOptions,
    name: String,
}

impl Run<'_> {
    fn backups(&self) -> Api<Backup> {
        Api::namespaced(self.client.clone(), &self.target.namespace)
    }

    async fn execute(&self, slot: DateTime<Utc>, started: DateTime<Utc>) -> Result<BackupOutcome, CnpgError> {
        let existing = self.cluster_backups().await?;

        // An earlier, unfinished Backup blocks CNPG's queue: skip, or clear it when stale.
        let mut resumed = None;
        for backup in &existing {
            if backup.name() == self.name {
                resumed = Some(backup.clone());
                continue;
            }
            if is_terminal(backup.phase()) {
                continue;
            }
            match self.staleness(backup, Utc::now()).await? {
                None => {
                    let reason = format!("previous backup {} still running", backup.name());
                    info!(cnpg.previous = %backup.name(), "skipped: {reason}");
                    return Ok(BackupOutcome::Skipped { reason });
                }
                Some(why) => {
                    warn!(cnpg.previous = %backup.name(), reason = %why, "deleting a stale Backup that blocks the cluster's queue");
                    self.backups()
                        .delete(backup.name(), &DeleteParams::default())
                        .await
                        .map_err(CnpgError::api(format!("delete stale Backup {}", backup.name())))?;
                    let error = format!("stale, deleted by visage-dr: {why}");
                    let record = self.record(backup, started, RunStatus::Failed, Some(error));
                    self.store(&record).await;
                }
            }
        }

        let backup = match resumed {
            Some(backup) => {
                info!(phase = %backup.phase(), "the Backup of this slot exists; waiting for it");
                backup
            }
            None => self.create(slot).await?,
        };

        let (backup, step, warnings) = self.wait(backup).await?;
        let outcome = match step {
            Ok(()) => {
                let record = self.record(&backup, started, RunStatus::Complete, None);
                info!(pg.backup_id = record.record.backup_id.as_deref().unwrap_or(""), "backup completed");
                self.store(&record).await;
                self.apply_retention().await;
                self.warn_object_store_retention().await;
                BackupOutcome::Completed { record, warnings }
            }
            Err(error) => {
                warn!(error = %error, "backup failed");
                let record = self.record(&backup, started, RunStatus::Failed, Some(error.clone()));
                self.store(&record).await;
                BackupOutcome::Failed { record: Some(record), error }
            }
        };
        Ok(outcome)
    }

    /// Lists the Backups of this cluster, oldest first.
    async fn cluster_backups(&self) -> Result<Vec<Backup>, CnpgError> {
        let list = self
            .backups()
            .list(&ListParams::default())
            .await
            .map_err(CnpgError::api(format!("list Backups in namespace {}", self.target.namespace)))?;
        let mut backups: Vec<Backup> = list.items.into_iter().filter(|b| b.spec.cluster.name == self.target.cluster).collect();
        backups.sort_by(|a, b| {
            let key = |b: &Backup| (b.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()), b.name().to_string());
            key(a).cmp(&key(b))
        });
        Ok(backups)
    }

    async fn create(&self, slot: DateTime<Utc>) -> Result<Backup, CnpgError> {
        let manifest = backup_manifest(self.target, slot);
        match self.backups().create(&PostParams::default(), &manifest).await {
            Ok(created) => {
                info!(cnpg.method = method_name(self.target.method), "Backup created");
                Ok(created)
            }
            // Created by an earlier attempt at the same slot after our list.
            Err(error) if status_code(&error) == Some(409) => self
                .backups()
                .get(&self.name)
                .await
                .map_err(CnpgError::api(format!("get Backup {}", self.name))),
            Err(error) => Err(CnpgError::api(format!("create Backup {}", self.name))(error)),
        }
    }

    /// Returns why a non-terminal Backup is stale, or `None` when it may still finish.
    async fn staleness(&self, backup: &Backup, now: DateTime<Utc>) -> Result<Option<String>, CnpgError> {
        let created = backup.metadata.creation_timestamp.as_ref().map(|t| DateTime::<Utc>::from_timestamp(t.0.as_second(), 0).unwrap_or(now));
        let age = created.map(|c| (now - c).to_std().unwrap_or_default()).unwrap_or_default();
        if age > self.options.deadline {
            return Ok(Some(format!("created {}s ago, past the deadline of {}s", age.as_secs(), self.options.deadline.as_secs())));
        }
        if backup.phase() == PHASE_WAL_ARCHIVING_FAILING && age > self.options.wal_failing_grace {
            return Ok(Some("WAL archiving has been failing past the grace period".into()));
        }
        self.instance_problem(backup).await
    }

    /// Checks the pod named in `status.instanceID`: gone, or a different container, means
    /// the backup process died with it.
    async fn instance_problem(&self, backup: &Backup) -> Result<Option<String>, CnpgError> {
        let Some(instance) = backup.status.as_ref().and_then(|s| s.instance_id.as_ref()) else {
            return Ok(None);
        };
        let Some(pod_name) = instance.pod_name.as_deref().filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.target.namespace);
        let pod = pods.get_opt(pod_name).await.map_err(CnpgError::api(format!("get Pod {pod_name}")))?;
        let Some(pod) = pod else {
            return Ok(Some(format!("its pod {pod_name} no longer exists")));
        };
        let Some(expected) = instance.container_id.as_deref().filter(|c| !c.is_empty()) else {
            return Ok(None);
        };
        let containers: Vec<String> = pod
            .status
            .and_then(|s| s.container_statuses)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.container_id)
            .collect();
        if containers.iter().any(|c| c == expected) {
            Ok(None)
        } else {
            Ok(Some(format!(
                "pod {pod_name} restarted: the backup ran in container {expected}, the pod now runs {}",
                if containers.is_empty() { "no container".to_string() } else { containers.join(", ") }
            )))
        }
    }

    /// Watches the Backup until the state machine decides, the pod check fails, or the
    /// deadline passes. Returns the last Backup seen and the outcome.
    async fn wait(&self, mut backup: Backup) -> Result<(Backup, Result<(), String>, Vec<String>), CnpgError> {
        let mut tracker = PhaseTracker::new(self.options.wal_failing_grace);
        let deadline = tokio::time::Instant::now() + self.options.deadline;
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        // The watcher lists again after a dropped watch or 410 Gone; the backoff spaces out
        // retries after errors.
        let mut events = watcher::watcher(self.backups(), config).default_backoff().boxed();
        let mut checks = tokio::time::interval(self.options.check_interval);
        let mut last_phase = None::<String>;

        let outcome = loop {
            tokio::select! {
                event = events.next() => {
                    let seen = match event {
                        Some(Ok(Event::Apply(b) | Event::InitApply(b))) => b,
                        Some(Ok(Event::Delete(_))) => break Err("the Backup was deleted while visage-dr waited for it".to_string()),
                        Some(Ok(Event::Init | Event::InitDone)) => continue,
                        Some(Err(error)) => {
                            warn!(error = %error, "Backup watch failed; listing again");
                            continue;
                        }
                        None => break Err("the Backup watch ended".to_string()),
                    };
                    backup = seen;
                    let phase = backup.phase().to_string();
                    if last_phase.as_deref() != Some(phase.as_str()) {
                        info!(cnpg.phase = %phase, "Backup phase");
                        last_phase = Some(phase.clone());
                    }
                    let error = backup.status.as_ref().and_then(|s| s.error.clone());
                    match tracker.observe(&phase, error.as_deref(), Utc::now()) {
                        Step::Completed => break Ok(()),
                        Step::Failed(reason) => break Err(reason),
                        Step::InProgress | Step::AlreadyCompleted => {}
                    }
                }
                _ = checks.tick() => {
                    if tokio::time::Instant::now() >= deadline {
                        break Err(format!(
                            "the backup did not finish within the deadline of {}s (last phase {:?})",
                            self.options.deadline.as_secs(),
                            backup.phase()
                        ));
                    }
                    if let Step::Failed(reason) = tracker.tick(Utc::now()) {
                        break Err(reason);
                    }
                    if let Some(problem) = self.instance_problem(&backup).await? {
                        break Err(format!("the backup is stuck: {problem}"));
                    }
                }
            }
        };
        for warning in tracker.warnings() {
            warn!("{warning}");
        }
        Ok((backup, outcome, tracker.warnings().to_vec()))
    }

    fn record(&self, backup: &Backup, started: DateTime<Utc>, status: RunStatus, error: Option<String>) -> CnpgBackupRecord {
        let s = backup.status.clone().unwrap_or_default();
        let time = |text: &Option<String>| text.as_deref().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc));
        let error = error.or_else(|| s.error.clone());
        CnpgBackupRecord {
            record: BackupRecord {
                version: RECORD_VERSION,
                id: SnapshotId::new(started).to_string(),
                database: self.spec.name.clone(),
                driver: "cnpg".into(),
                destination_path: s.destination_path.clone().unwrap_or_else(|| self.spec.object_store.destination_path.clone()),
                server_name: s.server_name.clone().unwrap_or_else(|| self.spec.object_store.server_name.clone()),
                backup_id: s.backup_id.clone(),
                backup_name: Some(backup.name().to_string()),
                started,
                finished: Utc::now(),
                begin_time: time(&s.started_at),
                end_time: time(&s.stopped_at),
                begin_wal: s.begin_wal.clone(),
                end_wal: s.end_wal.clone(),
                status,
                error,
            },
            namespace: self.target.namespace.clone(),
            cluster: self.target.cluster.clone(),
            method: s.method.clone().or_else(|| backup.spec.method.clone()).unwrap_or_else(|| "barmanObjectStore".into()),
            begin_lsn: s.begin_lsn.clone(),
            end_lsn: s.end_lsn.clone(),
            phase: backup.phase().to_string(),
            cnpg_backup_name: s.backup_name.clone(),
        }
    }

    /// Stores `record`; a failure to store is logged, since the backup itself is unaffected.
    async fn store(&self, record: &CnpgBackupRecord) {
        let Some(repo) = self.repo else { return };
        if let Err(error) = write_record(repo, record).await {
            warn!(error = %error, pg.record_id = %record.record.id, "catalogue record not stored");
        }
    }

    /// Deletes completed visage-dr Backups of this cluster that the retention rules do not
    /// keep. The newest completed Backup and every non-terminal one are always kept.
    async fn apply_retention(&self) {
        let Some(rules) = &self.spec.retention else { return };
        let backups = match self.cluster_backups().await {
            Ok(backups) => backups,
            Err(error) => {
                warn!(error = %error, "ignoring Backup retention this run: the Backups could not be listed");
                return;
            }
        };
        for name in retention_deletions(&backups, rules) {
            match self.backups().delete(&name, &DeleteParams::default()).await {
                Ok(_) => info!(cnpg.deleted = %name, "Backup removed by retention"),
                Err(error) if status_code(&error) == Some(404) => {}
                Err(error) => warn!(cnpg.deleted = %name, error = %error, "ignoring a failed delete of an expired Backup"),
            }
        }
    }

    /// Warns when the policy's recovery window is longer than the object store keeps base
    /// backups and WAL (`retentionPolicy` of the Cluster or of the plugin's ObjectStore).
    async fn warn_object_store_retention(&self) {
        let Some(window) = self.spec.retention.as_ref().and_then(|r| r.recovery_window).and_then(|w| w.to_std()) else {
            return;
        };
        let policy = match self.object_store_retention().await {
            Ok(policy) => policy,
            Err(error) => {
                warn!(error = %error, "could not read the object store's retentionPolicy; ignoring the recovery window check");
                return;
            }
        };
        if let Some(warning) = policy.and_then(|p| retention_warning(&p, window)) {
            warn!("{warning}");
        }
    }

    async fn object_store_retention(&self) -> Result<Option<String>, CnpgError> {
        match self.target.method {
            CnpgMethod::BarmanObjectStore => {
                let clusters: Api<Cluster> = Api::namespaced(self.client.clone(), &self.target.namespace);
                let cluster = clusters
                    .get_opt(&self.target.cluster)
                    .await
                    .map_err(CnpgError::api(format!("get Cluster {}", self.target.cluster)))?;
                Ok(cluster.and_then(|c| c.spec.backup).and_then(|b| b.retention_policy))
            }
            CnpgMethod::Plugin => {
                let Some(name) = self.spec.object_store.barman_object_name.as_deref() else {
                    return Ok(None);
                };
                let stores: Api<ObjectStore> = Api::namespaced(self.client.clone(), &self.target.namespace);
                let store = stores.get_opt(name).await.map_err(CnpgError::api(format!("get ObjectStore {name}")))?;
                Ok(store.and_then(|s| s.spec.retention_policy))
            }
        }
    }
}

/// Stores a cnpg record at the key of every PostgreSQL backup record.
pub async fn write_record(repo: &Repository, record: &CnpgBackupRecord) -> Result<String, RepoError> {
    let key = record_key(&record.record.database, &record.record.id);
    let json = serde_json::to_vec_pretty(record).expect("record serialises");
    repo.backend().put(&key, bytes::Bytes::from(json)).await?;
    Ok(key)
}

/// Names of the Backups that retention deletes: completed visage-dr Backups that `rules` do
/// not keep, never the newest completed one.
pub fn retention_deletions(backups: &[Backup], rules: &RetentionRules) -> Vec<String> {
    let completed: Vec<(&Backup, DateTime<Utc>)> = backups
        .iter()
        .filter(|b| b.is_managed() && b.phase() == PHASE_COMPLETED)
        .filter_map(|b| completion_time(b).map(|t| (b, t)))
        .collect();
    let Some(newest) = completed.iter().map(|(_, t)| *t).max() else {
        return Vec::new();
    };
    let candidates: Vec<Candidate> = completed.iter().map(|(_, t)| Candidate::succeeded(*t)).collect();
    let decisions = match rules.apply(&candidates, chrono_tz::UTC) {
        Ok(decisions) => decisions,
        Err(error) => {
            warn!(error = %error, "ignoring Backup retention: the rules cannot be applied");
            return Vec::new();
        }
    };
    completed
        .iter()
        .zip(decisions)
        .filter(|((_, time), decision)| !decision.keep && *time != newest)
        .map(|((backup, _), _)| backup.name().to_string())
        .collect()
}

/// `status.stoppedAt`, or the creation time when the operator did not set it.
fn completion_time(backup: &Backup) -> Option<DateTime<Utc>> {
    let stopped = backup.status.as_ref().and_then(|s| s.stopped_at.as_deref());
    if let Some(t) = stopped.and_then(|t| DateTime::parse_from_rfc3339(t).ok()) {
        return Some(t.with_timezone(&Utc));
    }
    backup.metadata.creation_timestamp.as_ref().and_then(|t| DateTime::<Utc>::from_timestamp(t.0.as_second(), 0))
}

/// Parses a CNPG `retentionPolicy` (`30d`, `4w`, `12m`) into a duration; a month counts as
/// 30 days, as an estimate.
pub fn parse_retention_policy(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.len().checked_sub(1)?);
    let count: u64 = number.parse().ok().filter(|n| *n > 0)?;
    let days = match unit {
        "d" => count,
        "w" => count * 7,
        "m" => count * 30,
        _ => return None,
    };
    Some(Duration::from_secs(days * 86_400))
}

/// Returns the warning for a recovery window longer than the object store's `retentionPolicy`,
/// or `None` when the window fits. A `retentionPolicy` that does not parse gets a warning too.
pub fn retention_warning(policy: &str, window: Duration) -> Option<String> {
    let Some(kept) = parse_retention_policy(policy) else {
        return Some(format!("the object store's retentionPolicy {policy:?} is not of the form 30d, 4w or 12m"));
    };
    (window > kept).then(|| {
        format!(
            "the policy's recovery window ({} days) is longer than the object store's retentionPolicy {policy:?}; \
             CNPG deletes base backups and WAL that the window needs, so raise retentionPolicy",
            window.as_secs() / 86_400
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn backup(name: &str, phase: &str, stopped: &str, managed: bool) -> Backup {
        let target = Target { namespace: "ns".into(), cluster: "db".into(), method: CnpgMethod::BarmanObjectStore };
        let mut b = backup_manifest(&target, Utc::now());
        b.metadata.name = Some(name.into());
        if !managed {
            b.metadata.labels = None;
        }
        b.metadata.creation_timestamp = Some(Time(stopped.parse().unwrap()));
        b.status = Some(super::super::resources::BackupStatus {
            phase: Some(phase.into()),
            stopped_at: Some(stopped.into()),
            ..Default::default()
        });
        b
    }

    #[test]
    fn backup_named_after_slot() {
        let slot = DateTime::parse_from_rfc3339("2026-08-21T02:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(backup_name("visage-db", slot), "visage-db-20260821020000");
    }

    #[test]
    fn plugin_manifest_names_plugin() {
        let target = Target { namespace: "ns".into(), cluster: "db".into(), method: CnpgMethod::Plugin };
        let manifest = backup_manifest(&target, Utc::now());
        assert_eq!(manifest.spec.method.as_deref(), Some("plugin"));
        assert_eq!(manifest.spec.plugin_configuration.unwrap().name, BARMAN_CLOUD_PLUGIN);
    }

    #[test]
    fn retention_keeps_newest_and_running() {
        let backups = vec![
            backup("db-1", "completed", "2026-08-01T02:00:00Z", true),
            backup("db-2", "completed", "2026-08-02T02:00:00Z", true),
            backup("db-3", "completed", "2026-08-03T02:00:00Z", false),
            backup("db-4", "running", "2026-08-04T02:00:00Z", true),
            backup("db-5", "completed", "2026-08-05T02:00:00Z", true),
        ];
        let rules = RetentionRules { keep_last: Some(1), ..RetentionRules::default() };
        let deleted = retention_deletions(&backups, &rules);
        assert_eq!(deleted, ["db-1", "db-2"]);
    }

    #[test]
    fn retention_policy_shorter_than_window_warns() {
        let window = Duration::from_secs(30 * 86_400);
        assert!(retention_warning("14d", window).is_some());
        assert!(retention_warning("30d", window).is_none());
        assert!(retention_warning("5w", window).is_none());
        assert!(retention_warning("weekly", window).unwrap().contains("not of the form"));
    }
}
