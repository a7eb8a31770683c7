//! The policy section that describes one PostgreSQL database: which driver
//! backs it up, where barman-cloud keeps its base backups and WAL, and how to
//! reach the server.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::retention::RetentionRules;

/// One database of a policy's `postgres:` list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSpec {
    /// Name used on the command line (`--name`) and in reports.
    pub name: String,
    pub driver: Driver,
    /// Object store in which barman-cloud keeps base backups and WAL.
    pub object_store: ObjectStore,
    /// Backup schedule (5-field crontab); a database without one can still be restored.
    #[serde(default)]
    pub schedule: Option<String>,
    #[serde(default)]
    pub retention: Option<RetentionRules>,
    /// Connection settings of the local driver (`driver: local` only).
    #[serde(default)]
    pub connection: Option<Connection>,
    /// CNPG Cluster name (`driver: cnpg` only).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Namespace of the CNPG Cluster (`driver: cnpg` only).
    #[serde(default)]
    pub namespace: Option<String>,
    /// CNPG backup method (`driver: cnpg` only).
    #[serde(default)]
    pub method: Option<CnpgMethod>,
}

/// Driver that takes backups and performs restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    /// barman-cloud and PostgreSQL binaries run by visage-dr itself.
    Local,
    /// CloudNativePG `Backup` and `Cluster` resources.
    Cnpg,
}

/// CNPG's backup methods that write to the object store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CnpgMethod {
    #[serde(rename = "barmanObjectStore")]
    BarmanObjectStore,
    #[serde(rename = "plugin")]
    Plugin,
}

/// The barman-cloud object store of a database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStore {
    /// `s3://bucket/prefix` under which barman keeps `<server_name>/base` and `<server_name>/wals`.
    pub destination_path: String,
    /// barman's server name: the folder under `destination_path`.
    pub server_name: String,
    /// S3 endpoint URL of the object store.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// Kubernetes Secret (keys `ACCESS_KEY_ID` and `ACCESS_SECRET_KEY`) that
    /// generated CNPG manifests refer to. visage-dr itself reads the store
    /// with credentials from the environment or the `*_file` settings.
    #[serde(default)]
    pub credentials_secret: Option<String>,
    /// File holding the access key id visage-dr uses for this store.
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    /// File holding the secret access key visage-dr uses for this store.
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// Name of the barman-cloud plugin's `ObjectStore` resource that describes this store
    /// (`driver: cnpg` with `method: plugin`); restores and retention checks refer to it.
    #[serde(default)]
    pub barman_object_name: Option<String>,
}

/// Connection settings of the local driver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub user: String,
    #[serde(default = "default_dbname")]
    pub dbname: String,
    /// File holding the password; none for trust or peer authentication.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

fn default_dbname() -> String {
    "postgres".into()
}
