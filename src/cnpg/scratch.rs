//! Scratch Clusters of `visage-dr verify`: a recovery Cluster per database, labelled with
//! its expiry so that a later run can remove it when a run died before its teardown.
//!
//! The manifest is the recovery Cluster of [`super::restore::cluster_manifest`] with small
//! resources, the scratch label and the expiry added. Like every recovery Cluster it has no
//! `backup` section and no WAL-archiving plugin, so a scratch cluster archives no WAL.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};
use tracing::{debug, info, info_span, Instrument};

use super::resources::{Cluster, MANAGED_BY_LABEL, MANAGED_BY_VALUE, PHASE_HEALTHY, PHASE_UNRECOVERABLE};
use super::backup::Target;
use super::restore::{cluster_manifest, RestoreSettings, FIELD_MANAGER};
use super::{status_code, CnpgError};
use crate::postgres::config::DatabaseSpec;

/// Label that marks a Cluster as a verification scratch cluster, so that expiry never
/// touches the recovery clusters of `visage-dr restore`, which carry the same managed-by label.
pub const SCRATCH_LABEL: &str = "visage-dr.io/scratch";
pub const SCRATCH_VALUE: &str = "verify";

/// Label with the expiry instant in Unix seconds. Label values cannot contain `:`, so the
/// readable RFC 3339 form is in [`EXPIRES_ANNOTATION`].
pub const EXPIRES_LABEL: &str = "visage-dr.io/expires";
pub const EXPIRES_ANNOTATION: &str = "visage-dr.io/expires-at";

/// Prefix of scratch Cluster names.
pub const NAME_PREFIX: &str = "visage-dr-verify-";

/// CPU and memory of a scratch instance: the checks run a few queries, so a small request
/// keeps a weekly run from competing with production workloads for the node.
pub const CPU_REQUEST: &str = "100m";
pub const MEMORY_REQUEST: &str = "256Mi";
pub const MEMORY_LIMIT: &str = "1Gi";

/// Interval of the Cluster status check while waiting for readiness.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Returns the scratch Cluster name of the `index`th cnpg database (from 0) of a run that
/// started at `started`: `visage-dr-verify-20261205t040000z`, then `-2`, `-3` and on.
/// Kubernetes names are lowercase, hence the lowercase stamp.
pub fn scratch_name(started: DateTime<Utc>, index: usize) -> String {
    let stamp = started.format("%Y%m%dt%H%M%Sz");
    match index {
        0 => format!("{NAME_PREFIX}{stamp}"),
        n => format!("{NAME_PREFIX}{stamp}-{}", n + 1),
    }
}

/// Builds the scratch Cluster manifest for `spec`: the recovery Cluster of `settings` with
/// small resources, the scratch labels and the expiry instant.
pub fn scratch_manifest(spec: &DatabaseSpec, settings: &RestoreSettings, expires: DateTime<Utc>) -> Result<Value, CnpgError> {
    let cluster = cluster_manifest(spec, settings)?;
    let mut manifest = serde_json::to_value(&cluster).expect("a Cluster serialises to JSON");
    manifest["metadata"]["labels"] = json!({
        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
        SCRATCH_LABEL: SCRATCH_VALUE,
        EXPIRES_LABEL: expires.timestamp().to_string(),
    });
    manifest["metadata"]["annotations"] = json!({
        EXPIRES_ANNOTATION: expires.to_rfc3339_opts(SecondsFormat::Secs, true),
    });
    manifest["spec"]["resources"] = json!({
        "requests": {"cpu": CPU_REQUEST, "memory": MEMORY_REQUEST},
        "limits": {"memory": MEMORY_LIMIT},
    });
    Ok(manifest)
}

/// Connection details of a scratch cluster, from its `<name>-superuser` Secret and, when
/// the cluster has one, the CA certificate of its `<name>-ca` Secret.
#[derive(Debug, Clone)]
pub struct ScratchConnection {
    pub secret: String,
    /// Name of the Secret with the cluster's CA, CNPG's `<name>-ca`.
    pub ca_secret: String,
    /// PEM of `ca.crt` in [`Self::ca_secret`], or `None` when that Secret does not exist.
    pub ca_certificate: Option<Vec<u8>>,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
}

/// Applies `manifest` with server-side apply and waits at most `timeout` until the Cluster
/// is healthy, then reads its superuser Secret.
pub async fn create_and_wait(client: &kube::Client, manifest: &Value, timeout: Duration) -> Result<ScratchConnection, CnpgError> {
    let name = manifest["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let namespace = manifest["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
    let span = info_span!("cnpg.scratch", pg.cluster = %name, k8s.namespace = %namespace);
    async {
        let clusters: Api<Cluster> = Api::namespaced(client.clone(), &namespace);
        clusters
            .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(manifest))
            .await
            .map_err(CnpgError::api(format!("apply Cluster {namespace}/{name}")))?;
        info!("scratch Cluster applied");
        wait_healthy(&clusters, &namespace, &name, timeout).await?;
        read_connection(client, &namespace, &name).await
    }
    .instrument(span)
    .await
}

async fn wait_healthy(clusters: &Api<Cluster>, namespace: &str, name: &str, timeout: Duration) -> Result<(), CnpgError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let failed = |reason: String| CnpgError::RestoreFailed { namespace: namespace.into(), name: name.into(), reason };
    let mut phase = String::new();
    loop {
        let cluster = clusters.get_opt(name).await.map_err(CnpgError::api(format!("get Cluster {namespace}/{name}")))?;
        let Some(cluster) = cluster else {
            return Err(failed("the Cluster was deleted while visage-dr waited for it".into()));
        };
        let status = cluster.status.clone().unwrap_or_default();
        let current = status.phase.clone().unwrap_or_default();
        if current != phase {
            debug!(cnpg.phase = %current, "scratch Cluster status");
            phase = current;
        }
        if phase == PHASE_UNRECOVERABLE {
            let reason = status.phase_reason.unwrap_or_default();
            return Err(failed(format!("{PHASE_UNRECOVERABLE}: {reason}")));
        }
        let instances = cluster.spec.instances;
        if phase == PHASE_HEALTHY && status.ready_instances.unwrap_or(0) == instances {
            return Ok(());
        }
        if tokio::time::Instant::now() + POLL_INTERVAL > deadline {
            return Err(CnpgError::RestoreTimedOut {
                namespace: namespace.into(),
                name: name.into(),
                seconds: timeout.as_secs(),
                phase,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn read_connection(client: &kube::Client, namespace: &str, cluster: &str) -> Result<ScratchConnection, CnpgError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret_name = format!("{cluster}-superuser");
    let secret = secrets.get_opt(&secret_name).await.map_err(CnpgError::api(format!("get Secret {namespace}/{secret_name}")))?;
    let data = secret.and_then(|s| s.data).unwrap_or_default();
    let field = |key: &str| data.get(key).map(|v| String::from_utf8_lossy(&v.0).into_owned());
    let missing = |key: &str| CnpgError::RestoreFailed {
        namespace: namespace.into(),
        name: cluster.into(),
        reason: format!("Secret {secret_name} has no `{key}` key; the Cluster needs enableSuperuserAccess: true"),
    };
    let port_text = field("port").unwrap_or_else(|| "5432".into());
    let port = port_text.parse().map_err(|_| CnpgError::RestoreFailed {
        namespace: namespace.into(),
        name: cluster.into(),
        reason: format!("Secret {secret_name} has the port {port_text:?}, which is not a TCP port number"),
    })?;
    let (ca_secret, ca_certificate) = read_ca(&secrets, namespace, cluster).await?;
    Ok(ScratchConnection {
        ca_secret,
        ca_certificate,
        host: field("host").ok_or_else(|| missing("host"))?,
        port,
        user: field("username").ok_or_else(|| missing("username"))?,
        password: field("password").filter(|p| !p.is_empty()),
        dbname: field("dbname").unwrap_or_else(|| "postgres".into()),
        secret: secret_name,
    })
}

/// Key of the CA certificate in CNPG's `<cluster>-ca` Secret.
const CA_KEY: &str = "ca.crt";

/// Reads the CA certificate from the `<cluster>-ca` Secret that CNPG creates for the
/// certificates it issues to the cluster's server. A missing Secret returns `None`, so the
/// connection is plain, but a Secret without `ca.crt` is an error.
async fn read_ca(secrets: &Api<Secret>, namespace: &str, cluster: &str) -> Result<(String, Option<Vec<u8>>), CnpgError> {
    let secret_name = format!("{cluster}-ca");
    let secret = secrets.get_opt(&secret_name).await.map_err(CnpgError::api(format!("get Secret {namespace}/{secret_name}")))?;
    let Some(secret) = secret else {
        debug!(k8s.secret = %secret_name, "no CA Secret, so the connection does not use TLS");
        return Ok((secret_name, None));
    };
    let certificate = secret.data.unwrap_or_default().remove(CA_KEY).map(|v| v.0);
    match certificate {
        Some(pem) => Ok((secret_name, Some(pem))),
        None => Err(CnpgError::RestoreFailed {
            namespace: namespace.into(),
            name: cluster.into(),
            reason: format!("Secret {secret_name} has no `{CA_KEY}` key, so the server certificate cannot be verified"),
        }),
    }
}

/// Storage of a scratch cluster when the source Cluster cannot be read.
pub const FALLBACK_STORAGE: &str = "1Gi";

/// Storage size and PostgreSQL image of the source Cluster of `spec`, so that the scratch
/// cluster fits the data and runs the backup's major version. A missing source (a restore
/// after a disaster) falls back to `fallback_storage` and the operator's default image.
pub async fn source_settings_or(
    client: &kube::Client,
    spec: &DatabaseSpec,
    fallback_storage: &str,
) -> Result<(String, Option<String>), CnpgError> {
    let source = Target::of(spec)?;
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), &source.namespace);
    let cluster = clusters
        .get_opt(&source.cluster)
        .await
        .map_err(CnpgError::api(format!("get Cluster {}/{}", source.namespace, source.cluster)))?;
    let Some(cluster) = cluster else {
        tracing::warn!(
            pg.cluster = %source.cluster,
            "the source Cluster was not found; the new Cluster gets {fallback_storage} of storage and the operator's default image"
        );
        return Ok((fallback_storage.into(), None));
    };
    let size = cluster.spec.storage.map(|s| s.size).unwrap_or_else(|| fallback_storage.into());
    Ok((size, cluster.spec.image_name))
}

/// Reads the source settings for a scratch cluster, with [`FALLBACK_STORAGE`]
/// when the source Cluster is missing.
pub async fn source_settings(client: &kube::Client, spec: &DatabaseSpec) -> Result<(String, Option<String>), CnpgError> {
    source_settings_or(client, spec, FALLBACK_STORAGE).await
}

/// Sets the expiry of a kept scratch Cluster with a JSON merge patch.
pub async fn set_expiry(client: &kube::Client, namespace: &str, name: &str, expires: DateTime<Utc>) -> Result<(), CnpgError> {
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), namespace);
    let patch = json!({"metadata": {
        "labels": {EXPIRES_LABEL: expires.timestamp().to_string()},
        "annotations": {EXPIRES_ANNOTATION: expires.to_rfc3339_opts(SecondsFormat::Secs, true)},
    }});
    clusters
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(CnpgError::api(format!("patch the expiry of Cluster {namespace}/{name}")))?;
    Ok(())
}

/// Deletes a scratch Cluster; returns false when it did not exist.
pub async fn delete(client: &kube::Client, namespace: &str, name: &str) -> Result<bool, CnpgError> {
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), namespace);
    match clusters.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(e) if status_code(&e) == Some(404) => Ok(false),
        Err(e) => Err(CnpgError::api(format!("delete Cluster {namespace}/{name}"))(e)),
    }
}

/// Deletes the scratch Clusters in `namespace` whose expiry is before `now`, and returns
/// their names. A scratch Cluster without a readable expiry label is left alone.
pub async fn remove_expired(client: &kube::Client, namespace: &str, now: DateTime<Utc>) -> Result<Vec<String>, CnpgError> {
    let clusters: Api<Cluster> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{SCRATCH_LABEL}={SCRATCH_VALUE}");
    let listed = clusters
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(CnpgError::api(format!("list scratch Clusters in {namespace}")))?;
    let mut removed = Vec::new();
    for cluster in listed.items {
        let name = cluster.metadata.name.clone().unwrap_or_default();
        let labels: BTreeMap<String, String> = cluster.metadata.labels.clone().unwrap_or_default();
        let Some(expires) = labels.get(EXPIRES_LABEL).and_then(|v| v.parse::<i64>().ok()) else {
            tracing::warn!(pg.cluster = %name, "ignoring a scratch Cluster without a readable {EXPIRES_LABEL} label");
            continue;
        };
        if expires > now.timestamp() {
            continue;
        }
        if delete(client, namespace, &name).await? {
            removed.push(name);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn scratch_names_are_valid() {
        let started = Utc.with_ymd_and_hms(2026, 12, 5, 4, 0, 0).unwrap();
        assert_eq!(scratch_name(started, 0), "visage-dr-verify-20261205t040000z");
        assert_eq!(scratch_name(started, 2), "visage-dr-verify-20261205t040000z-3");
        for index in [0, 1, 99] {
            let name = scratch_name(started, index);
            assert!(super::super::check_resource_name("scratch cluster", &name, super::super::restore::MAX_CLUSTER_NAME).is_ok(), "{name}");
        }
    }
}
