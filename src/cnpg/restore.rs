//! Point-in-time restores into a new CNPG Cluster bootstrapped with `bootstrap.recovery`.
//!
//! The base backup is chosen from the archive's catalogue before anything is applied, and is
//! pinned with `recoveryTarget.backupID`, so the operator restores exactly the planned backup.
//! The new cluster reads the archive through an `externalClusters` entry, so it works when
//! the source cluster no longer exists. It has no `backup` section and no WAL-archiving
//! plugin: a restored cluster archiving into the source's prefix fails with "Expected empty
//! archive", or mixes the WAL of two clusters.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, LogParams, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use serde::Serialize;
use tracing::{info, info_span, warn, Instrument};

use super::backup::Target;
use super::resources::{
    BarmanObjectStore, Bootstrap, BootstrapRecovery, Cluster, ClusterSpec, ExternalCluster, PluginConfiguration,
    RecoveryTarget, S3Credentials, SecretKeySelector, StorageConfiguration, BARMAN_CLOUD_PLUGIN, CNPG_API_VERSION,
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, PHASE_HEALTHY, PHASE_UNRECOVERABLE,
};
use super::{check_resource_name, CnpgError};
use crate::postgres::config::{CnpgMethod, DatabaseSpec};
use crate::postgres::target_time::TargetTime;

/// Field manager of server-side apply.
pub const FIELD_MANAGER: &str = "visage-dr";

/// Name of the `externalClusters` entry that points at the archive.
pub const SOURCE_NAME: &str = "archive";

/// Keys of the object-store credentials Secret, as CNPG's examples name them.
pub const ACCESS_KEY_ID_KEY: &str = "ACCESS_KEY_ID";
pub const SECRET_ACCESS_KEY_KEY: &str = "ACCESS_SECRET_KEY";

/// Longest Cluster name: CNPG derives pod, service and PVC names from it, which must stay
/// within Kubernetes' 63-character label limit.
pub const MAX_CLUSTER_NAME: usize = 50;

/// Annotation on a recovery Cluster that records its target time and base backup, so that a
/// rerun of the same restore recognises the Cluster and reuses it.
pub const RESTORE_TARGET_ANNOTATION: &str = "visage-dr.io/restore-target";

/// Interval of the recovery Job check while waiting for readiness.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// The recovery Cluster to create.
#[derive(Debug, Clone)]
pub struct RestoreSettings {
    /// Name of the new Cluster.
    pub name: String,
    pub namespace: String,
    pub target: TargetTime,
    /// Whether the target lies after the last archived WAL, so recovery replays the whole
    /// archive and `targetTime` is left out.
    pub recover_to_end_of_archive: bool,
    /// barman backup id of the planned base backup.
    pub backup_id: String,
    pub instances: i64,
    pub storage_size: String,
    /// PostgreSQL image; it must have the backup's major version. `None` leaves the
    /// operator's default.
    pub image_name: Option<String>,
}

/// Connection details of a restored cluster, from its `<name>-superuser` Secret.
#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    pub secret: String,
    pub host: Option<String>,
    pub port: Option<String>,
    pub dbname: Option<String>,
    pub username: Option<String>,
    /// Never serialised, so that no output shows it.
    #[serde(skip)]
    pub password: Option<String>,
}

impl RestoreSettings {
    /// Value of [`RESTORE_TARGET_ANNOTATION`] for this restore: the target time and the
    /// base backup id.
    pub fn restore_target(&self) -> String {
        format!("{} backup {}", self.target, self.backup_id)
    }
}

/// Builds the recovery Cluster for `spec`.
pub fn cluster_manifest(spec: &DatabaseSpec, settings: &RestoreSettings) -> Result<Cluster, CnpgError> {
    let source = Target::of(spec)?;
    check_resource_name("new cluster", &settings.name, MAX_CLUSTER_NAME)?;
    if settings.name == source.cluster {
        return Err(CnpgError::SameAsSource { name: settings.name.clone() });
    }
    let store = &spec.object_store;
    let missing = |field| CnpgError::MissingSetting { database: spec.name.clone(), field };
    let external = match source.method {
        CnpgMethod::BarmanObjectStore => {
            let secret = store.credentials_secret.clone().ok_or_else(|| missing("object_store.credentials_secret"))?;
            let selector = |key: &str| Some(SecretKeySelector { name: secret.clone(), key: key.into() });
            ExternalCluster {
                name: SOURCE_NAME.into(),
                barman_object_store: Some(BarmanObjectStore {
                    destination_path: store.destination_path.clone(),
                    server_name: Some(store.server_name.clone()),
                    endpoint_url: store.endpoint.clone(),
                    s3_credentials: Some(S3Credentials {
                        access_key_id: selector(ACCESS_KEY_ID_KEY),
                        secret_access_key: selector(SECRET_ACCESS_KEY_KEY),
                        region: None,
                    }),
                }),
                plugin: None,
            }
        }
        CnpgMethod::Plugin => {
            let object = store.barman_object_name.clone().ok_or_else(|| missing("object_store.barman_object_name"))?;
            ExternalCluster {
                name: SOURCE_NAME.into(),
                barman_object_store: None,
                plugin: Some(PluginConfiguration {
                    name: BARMAN_CLOUD_PLUGIN.into(),
                    parameters: BTreeMap::from([
                        ("barmanObjectName".to_string(), object),
                        ("serverName".to_string(), store.server_name.clone()),
                    ]),
                }),
            }
        }
    };
    let labels = BTreeMap::from([(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())]);
    Ok(Cluster {
        api_version: CNPG_API_VERSION.into(),
        kind: "Cluster".into(),
        metadata: ObjectMeta {
            name: Some(settings.name.clone()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(RESTORE_TARGET_ANNOTATION.to_string(), settings.restore_target())])),
            ..ObjectMeta::default()
        },
        spec: ClusterSpec {
            instances: settings.instances,
            image_name: settings.image_name.clone(),
            // Makes the operator publish the `<name>-superuser` Secret.
            enable_superuser_access: Some(true),
            storage: Some(StorageConfiguration { size: settings.storage_size.clone() }),
            bootstrap: Some(Bootstrap {
                recovery: Some(BootstrapRecovery {
                    source: Some(SOURCE_NAME.into()),
                    recovery_target: Some(RecoveryTarget {
                        backup_id: Some(settings.backup_id.clone()),
                        target_time: (!settings.recover_to_end_of_archive).then(|| settings.target.to_postgres()),
                    }),
                }),
            }),
            external_clusters: vec![external],
            backup: None,
        },
        status: None,
    })
}

/// Applies `cluster` with server-side apply, after checking that no Cluster of that name
/// exists, and waits until it is ready. `progress` receives one line per phase change.
pub async fn apply_and_wait(
    client: kube::Client,
    cluster: &Cluster,
    timeout: Duration,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Connection, CnpgError> {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let namespace = cluster.metadata.namespace.clone().unwrap_or_default();
    let span = info_span!("cnpg.restore", pg.cluster = %name, k8s.namespace = %namespace);
    async {
        let clusters: Api<Cluster> = Api::namespaced(client.clone(), &namespace);
        let existing = clusters.get_opt(&name).await.map_err(CnpgError::api(format!("get Cluster {name}")))?;
        if existing.is_some() {
            return Err(CnpgError::ClusterExists { namespace: namespace.clone(), name: name.clone() });
        }
        clusters
            .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(cluster))
            .await
            .map_err(CnpgError::api(format!("apply Cluster {name}")))?;
        info!("recovery Cluster applied");
        progress(&format!("applied Cluster {namespace}/{name}; waiting for it to become ready"));
        wait_ready(&client, &namespace, &name, timeout, progress).await?;
        read_connection(&client, &namespace, &name).await
    }
    .instrument(span)
    .await
}

/// Returns the [`RESTORE_TARGET_ANNOTATION`] of the Cluster `namespace/name`: `None` when
/// no such Cluster exists, `Some("")` when it exists without the annotation.
pub async fn existing_restore_target(client: &kube::Client, namespace: &str, name: &str) -> Result<Option<String>, CnpgError> {
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), namespace);
    let existing = clusters.get_opt(name).await.map_err(CnpgError::api(format!("get Cluster {name}")))?;
    Ok(existing.map(|cluster| {
        let annotations = cluster.metadata.annotations.unwrap_or_default();
        annotations.get(RESTORE_TARGET_ANNOTATION).cloned().unwrap_or_default()
    }))
}

/// Waits until the existing Cluster `namespace/name`, applied by an earlier run, is ready,
/// and returns its connection details. A Cluster that is healthy already returns at once.
pub async fn wait_existing(
    client: kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<Connection, CnpgError> {
    let span = info_span!("cnpg.restore", pg.cluster = %name, k8s.namespace = %namespace);
    async {
        info!("reusing the recovery Cluster of an earlier run");
        wait_ready(&client, namespace, name, timeout, progress).await?;
        read_connection(&client, namespace, name).await
    }
    .instrument(span)
    .await
}

async fn wait_ready(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), CnpgError> {
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(clusters, config).default_backoff().boxed();
    let mut checks = tokio::time::interval(CHECK_INTERVAL);
    let deadline = tokio::time::Instant::now() + timeout;
    let failed = |reason: String| CnpgError::RestoreFailed { namespace: namespace.into(), name: name.into(), reason };
    let mut last = String::new();
    let mut phase = String::new();
    loop {
        tokio::select! {
            event = events.next() => {
                let cluster = match event {
                    Some(Ok(Event::Apply(c) | Event::InitApply(c))) => c,
                    Some(Ok(Event::Delete(_))) => return Err(failed("the Cluster was deleted while visage-dr waited for it".into())),
                    Some(Ok(Event::Init | Event::InitDone)) => continue,
                    Some(Err(error)) => {
                        warn!(error = %error, "Cluster watch failed; listing again");
                        continue;
                    }
                    None => return Err(failed("the Cluster watch ended".into())),
                };
                let status = cluster.status.clone().unwrap_or_default();
                phase = status.phase.clone().unwrap_or_default();
                let ready = status.ready_instances.unwrap_or(0);
                let line = format!("phase {:?}, {ready} of {} instances ready", phase, cluster.spec.instances);
                if line != last {
                    info!(cnpg.phase = %phase, cnpg.ready_instances = ready, "Cluster status");
                    progress(&line);
                    last = line;
                }
                if phase == PHASE_UNRECOVERABLE {
                    let reason = status.phase_reason.unwrap_or_default();
                    let log = recovery_log(client, namespace, name).await;
                    return Err(failed(format!("{PHASE_UNRECOVERABLE}: {reason}{log}")));
                }
                let instances = cluster.spec.instances;
                if phase == PHASE_HEALTHY && ready == instances && status.instances.unwrap_or(instances) == instances {
                    return Ok(());
                }
            }
            _ = checks.tick() => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(CnpgError::RestoreTimedOut {
                        namespace: namespace.into(),
                        name: name.into(),
                        seconds: timeout.as_secs(),
                        phase: phase.clone(),
                    });
                }
                if let Some(reason) = recovery_job_failure(client, namespace, name).await? {
                    let log = recovery_log(client, namespace, name).await;
                    return Err(failed(format!("{reason}{log}")));
                }
            }
        }
    }
}

/// Name of the Job that runs the recovery of the first instance.
pub fn recovery_job_name(cluster: &str) -> String {
    format!("{cluster}-1-full-recovery")
}

/// Returns why the recovery Job failed, when it has a `Failed` condition.
async fn recovery_job_failure(client: &kube::Client, namespace: &str, cluster: &str) -> Result<Option<String>, CnpgError> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let job_name = recovery_job_name(cluster);
    let Some(job) = jobs.get_opt(&job_name).await.map_err(CnpgError::api(format!("get Job {job_name}")))? else {
        return Ok(None);
    };
    let conditions = job.status.and_then(|s| s.conditions).unwrap_or_default();
    Ok(conditions.into_iter().find(|c| c.type_ == "Failed" && c.status == "True").map(|c| {
        format!(
            "the recovery Job {job_name} failed ({}: {})",
            c.reason.unwrap_or_default(),
            c.message.unwrap_or_default()
        )
    }))
}

/// Number of lines of the recovery pod's log shown with a failure.
const LOG_TAIL_LINES: i64 = 20;

/// Returns the end of the recovery Job's newest pod log, formatted to append to an error,
/// or an empty string when there is none.
async fn recovery_log(client: &kube::Client, namespace: &str, cluster: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let job_name = recovery_job_name(cluster);
    let listed = match pods.list(&ListParams::default().labels(&format!("job-name={job_name}"))).await {
        Ok(list) => list.items,
        Err(error) => {
            warn!(error = %error, "ignoring the recovery log: its pods could not be listed");
            return String::new();
        }
    };
    let Some(pod) = listed.iter().max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0)) else {
        return String::new();
    };
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let params = LogParams { container: Some("full-recovery".into()), tail_lines: Some(LOG_TAIL_LINES), ..LogParams::default() };
    match pods.logs(&pod_name, &params).await {
        Ok(text) => format!("\nend of the log of pod {pod_name}:\n{}", text.trim_end()),
        Err(error) => {
            warn!(error = %error, k8s.pod = %pod_name, "ignoring the recovery log: it could not be read");
            String::new()
        }
    }
}

async fn read_connection(client: &kube::Client, namespace: &str, cluster: &str) -> Result<Connection, CnpgError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret_name = format!("{cluster}-superuser");
    let secret = secrets.get_opt(&secret_name).await.map_err(CnpgError::api(format!("get Secret {secret_name}")))?;
    let data = secret.and_then(|s| s.data).unwrap_or_default();
    let field = |key: &str| data.get(key).map(|v| String::from_utf8_lossy(&v.0).into_owned());
    Ok(Connection {
        secret: secret_name.clone(),
        host: field("host"),
        port: field("port"),
        dbname: field("dbname"),
        username: field("username"),
        password: field("password"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::config::{Driver, ObjectStore};

    fn spec(method: CnpgMethod) -> DatabaseSpec {
        DatabaseSpec {
            name: "app".into(),
            driver: Driver::Cnpg,
            object_store: ObjectStore {
                destination_path: "s3://pg/prod".into(),
                server_name: "app-db".into(),
                endpoint: Some("http://minio:9000".into()),
                region: None,
                credentials_secret: Some("pg-creds".into()),
                access_key_id_file: None,
                secret_access_key_file: None,
                barman_object_name: Some("store".into()),
            },
            schedule: None,
            retention: None,
            connection: None,
            cluster: Some("app-db".into()),
            namespace: Some("db".into()),
            method: Some(method),
        }
    }

    fn settings(name: &str) -> RestoreSettings {
        let target = TargetTime::parse("2026-05-28T12:00:00.25Z", chrono::Utc::now()).unwrap();
        RestoreSettings {
            name: name.into(),
            namespace: "db".into(),
            target,
            recover_to_end_of_archive: false,
            backup_id: "20260528T110000".into(),
            instances: 1,
            storage_size: "1Gi".into(),
            image_name: None,
        }
    }

    #[test]
    fn recovery_manifest_pins_backup() {
        let cluster = cluster_manifest(&spec(CnpgMethod::BarmanObjectStore), &settings("app-db-pitr")).unwrap();
        let recovery = cluster.spec.bootstrap.unwrap().recovery.unwrap();
        let target = recovery.recovery_target.unwrap();
        assert_eq!(target.backup_id.as_deref(), Some("20260528T110000"));
        assert_eq!(target.target_time.as_deref(), Some("2026-05-28 12:00:00.250000+00:00"));
        let store = cluster.spec.external_clusters[0].barman_object_store.clone().unwrap();
        assert_eq!(store.server_name.as_deref(), Some("app-db"));
        assert!(cluster.spec.backup.is_none());
        let annotations = cluster.metadata.annotations.unwrap();
        assert_eq!(annotations[RESTORE_TARGET_ANNOTATION], "2026-05-28T12:00:00.250000Z backup 20260528T110000");
    }

    #[test]
    fn plugin_manifest_points_at_object_store() {
        let cluster = cluster_manifest(&spec(CnpgMethod::Plugin), &settings("app-db-pitr")).unwrap();
        let plugin = cluster.spec.external_clusters[0].plugin.clone().unwrap();
        assert_eq!(plugin.name, BARMAN_CLOUD_PLUGIN);
        assert_eq!(plugin.parameters["barmanObjectName"], "store");
        assert_eq!(plugin.parameters["serverName"], "app-db");
    }

    #[test]
    fn same_name_as_source_rejected() {
        let error = cluster_manifest(&spec(CnpgMethod::BarmanObjectStore), &settings("app-db")).unwrap_err();
        assert!(error.to_string().contains("is the source cluster's name"), "{error}");
    }
}
