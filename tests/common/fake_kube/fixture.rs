//! Pieces shared by the tests that run the cnpg driver against the fake API
//! server: the source database the simulated operator backs up, and a guard
//! that stops its restored instances.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::json;
use visage_dr::postgres::config::{Connection, DatabaseSpec, Driver, ObjectStore};

use super::operator::{Operator, SourceCluster};
use super::FakeKube;
use crate::common::S3Server;

/// Name of the object-store credentials Secret that the test policies name.
pub const CREDENTIALS_SECRET: &str = "pg-creds";

/// Stores the object-store credentials Secret in `namespace`, creates
/// `<work>/operator` and starts the simulated operator for `sources` there.
pub fn start_operator(kube: &FakeKube, s3: &S3Server, namespace: &str, work: &Path, sources: Vec<SourceCluster>) -> Arc<Operator> {
    let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    kube.store.put("/secrets", json!({
        "metadata": {"name": CREDENTIALS_SECRET, "namespace": namespace},
        "data": {"ACCESS_KEY_ID": encode(&s3.access_key), "ACCESS_SECRET_KEY": encode(&s3.secret_key)},
    }));
    let operator_dir = work.join("operator");
    std::fs::create_dir(&operator_dir).unwrap();
    Operator::start(kube.store.clone(), sources, &operator_dir)
}

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
