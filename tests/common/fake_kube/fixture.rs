//! Pieces shared by the tests that run the cnpg driver against the fake API
//! server: the source database the simulated operator backs up, and a guard
//! that stops its restored instances.

use std::path::Path;
use std::sync::Arc;

use visage_dr::postgres::config::{Connection, DatabaseSpec, Driver, ObjectStore};

use super::operator::Operator;
use crate::common::S3Server;

/// Name of the source CNPG Cluster in the fake API server.
pub const CLUSTER: &str = "pg-main";

/// Returns the local-driver spec with which the simulated operator backs up the source server.
pub fn source_spec(s3: &S3Server, bucket: &str, dir: &Path, port: u16) -> DatabaseSpec {
    DatabaseSpec {
        name: CLUSTER.into(),
        driver: Driver::Local,
        object_store: ObjectStore {
            destination_path: format!("s3://{bucket}/pg"),
            server_name: "main".into(),
            endpoint: Some(s3.endpoint.clone()),
            region: Some(s3.region.clone()),
            credentials_secret: None,
            access_key_id_file: Some(dir.join("access-key")),
            secret_access_key_file: Some(dir.join("secret-key")),
            barman_object_name: None,
        },
        schedule: None,
        retention: None,
        connection: Some(Connection {
            host: "127.0.0.1".into(),
            port,
            user: "postgres".into(),
            dbname: "postgres".into(),
            password_file: None,
        }),
        cluster: None,
        namespace: None,
        method: None,
    }
}

/// Stops the operator's restored instances when the test ends, passed or not.
pub struct StopRestored(pub Arc<Operator>);

impl Drop for StopRestored {
    fn drop(&mut self) {
        self.0.kill_restored();
    }
}
