//! The `cnpg` driver: PostgreSQL backups and point-in-time restores through CloudNativePG's
//! `Backup` and `Cluster` resources (`docs/cnpg.md`).
//!
//! - [`resources`]: typed views of the Backup, Cluster and ObjectStore fields visage-dr uses.
//! - [`phase`]: the state machine that turns Backup phases into an outcome.
//! - [`backup`]: one scheduled backup: queue checks, creation, the wait, the catalogue
//!   record, and retention of Backup resources.
//! - [`restore`]: recovery Cluster manifests, server-side apply and the wait for readiness.
//! - [`scratch`]: the scratch Clusters of `visage-dr verify`, their expiry and deletion.
//!
//! Every Kubernetes API call made here is listed in [`crate::kube_api`].

pub mod backup;
pub mod phase;
pub mod resources;
pub mod restore;
pub mod scratch;

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Errors of the `cnpg` driver.
#[derive(Debug, thiserror::Error)]
pub enum CnpgError {
    #[error("database {database:?} uses driver {driver:?}, but this is the cnpg driver")]
    WrongDriver { database: String, driver: String },
    #[error("database {database:?} has no `{field}`, which the cnpg driver needs; set it in the policy")]
    MissingSetting { database: String, field: &'static str },
    #[error("cannot read the kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error("no Kubernetes configuration found ({reason}); pass --kubeconfig, set KUBECONFIG, or run in a pod with a service account")]
    NoConfig { reason: String },
    #[error("Kubernetes API request failed: {what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("invalid name {name:?} for the {what}: {reason}")]
    InvalidName { what: &'static str, name: String, reason: String },
    #[error("the new cluster's name {name:?} is the source cluster's name; pick another with --into")]
    SameAsSource { name: String },
    #[error("Cluster {namespace}/{name} already exists; pick a new name with --into or delete it first")]
    ClusterExists { namespace: String, name: String },
    #[error("Cluster {namespace}/{name} did not become ready: {reason}")]
    RestoreFailed { namespace: String, name: String, reason: String },
    #[error("Cluster {namespace}/{name} is not ready after {seconds}s (phase {phase:?}); raise --recovery-timeout or inspect the Cluster")]
    RestoreTimedOut { namespace: String, name: String, seconds: u64, phase: String },
}

impl CnpgError {
    /// Wraps a kube error with the request that failed.
    pub fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> CnpgError {
        let what = what.into();
        move |source| CnpgError::Api { what, source }
    }
}

/// HTTP status code of an API server error, such as 404 or 409.
pub fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(response) => Some(response.code),
        _ => None,
    }
}

/// Builds a client from `kubeconfig` when given, else from `KUBECONFIG`, `~/.kube/config` or
/// the pod's service account, in kube's usual order.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, CnpgError> {
    // Both rustls providers are compiled in through other crates, so rustls cannot pick one
    // by itself. An error only means a provider is installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| CnpgError::Kubeconfig { path: path.to_path_buf(), reason: e.to_string() })?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| CnpgError::Kubeconfig { path: path.to_path_buf(), reason: e.to_string() })?
        }
        None => kube::Config::infer().await.map_err(|e| CnpgError::NoConfig { reason: e.to_string() })?,
    };
    kube::Client::try_from(config).map_err(|e| CnpgError::NoConfig { reason: e.to_string() })
}

/// Checks a name against Kubernetes' DNS-1123 subdomain rules, which CNPG resource names
/// follow, and against `max` characters.
pub fn check_resource_name(what: &'static str, name: &str, max: usize) -> Result<(), CnpgError> {
    let invalid = |reason: String| CnpgError::InvalidName { what, name: name.to_string(), reason };
    if name.is_empty() || name.len() > max {
        return Err(invalid(format!("use 1 to {max} characters")));
    }
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Err(invalid("use lowercase letters, digits and '-'".into()));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(invalid("start and end with a letter or digit".into()));
    }
    Ok(())
}
