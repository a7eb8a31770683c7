//! A simulated CNPG operator that does the real work through the local driver.
//!
//! For a new Backup of a known cluster it runs a real barman-cloud base backup of the test
//! PostgreSQL server and writes the status fields CNPG writes (phase, backupId, WAL, LSN,
//! times, instanceID, location). For a Cluster with `bootstrap.recovery` it creates the
//! recovery Job and its pod, and runs a real point-in-time restore from the archive named by
//! its `externalClusters` entry. The restored instance listens on a loopback port, which the
//! `<name>-superuser` Secret publishes, and the Cluster gets the ready status. Like a CNPG
//! instance, it serves TLS with a server certificate from the cluster's own CA, which the
//! `<name>-ca` Secret publishes as `ca.crt`; the `pg_hba.conf` of a verify scratch cluster
//! accepts TCP connections only over TLS (`hostssl`), and that of other clusters also plain. Faults are scripted per test step.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use visage_dr::postgres::config::{DatabaseSpec, Driver, ObjectStore};
use visage_dr::postgres::local::{self, RestoreRequest, RestoredInstance, Tools};
use visage_dr::postgres::store::ArchiveStore;
use visage_dr::postgres::target_time::TargetTime;

use super::Store;

const BACKUPS: &str = "postgresql.cnpg.io/backups";
const CLUSTERS: &str = "postgresql.cnpg.io/clusters";
const PODS: &str = "/pods";
const JOBS: &str = "batch/jobs";
const SECRETS: &str = "/secrets";

/// A faulty behaviour for the next Backup or recovery Cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// The instance's container is replaced while the Backup is `running`; the Backup stays
    /// `running`, as CNPG leaves it when the instance manager dies.
    PodRestartMidBackup,
    /// The Backup reaches `walArchivingFailing` and stays there.
    WalArchivingFailing,
    /// The Backup fails with this `status.error`.
    BackupFails(String),
    /// The recovery Job fails as PostgreSQL does when the WAL ends before the target, and
    /// the cluster becomes unrecoverable.
    RestoreCannotReachTarget,
    /// The `<name>-ca` Secret of the next recovery Cluster contains a CA that did not sign the
    /// server certificate.
    WrongCa,
}

/// A source cluster the operator backs up: a local-driver spec that reaches the test server.
#[derive(Debug, Clone)]
pub struct SourceCluster {
    pub name: String,
    pub namespace: String,
    pub spec: DatabaseSpec,
}

pub struct Operator {
    store: Arc<Store>,
    sources: Vec<SourceCluster>,
    faults: Mutex<Vec<Fault>>,
    restored: Mutex<Vec<RestoredInstance>>,
    work_dir: PathBuf,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

impl Operator {
    /// Starts the operator. Each source cluster gets a Cluster resource and its primary pod
    /// `<name>-1` in the store. `work_dir` must be writable by the `postgres` OS user.
    pub fn start(store: Arc<Store>, sources: Vec<SourceCluster>, work_dir: &Path) -> Arc<Operator> {
        for source in &sources {
            store.put(CLUSTERS, json!({
                "metadata": {"name": source.name, "namespace": source.namespace},
                "spec": {"instances": 1, "storage": {"size": "1Gi"}},
                "status": {"phase": "Cluster in healthy state", "instances": 1, "readyInstances": 1},
            }));
            put_pod(&store, &source.namespace, &format!("{}-1", source.name), "containerd://source-1", BTreeMap::new());
        }
        let operator = Arc::new(Operator {
            store: store.clone(),
            sources,
            faults: Mutex::new(Vec::new()),
            restored: Mutex::new(Vec::new()),
            work_dir: work_dir.to_path_buf(),
            task: Mutex::new(None),
        });
        let running = operator.clone();
        let task = tokio::spawn(async move { running.reconcile_loop().await });
        *operator.task.lock().unwrap() = Some(task);
        operator
    }

    /// Makes the next Backup or recovery Cluster that this fault applies to misbehave.
    pub fn inject(&self, fault: Fault) {
        self.faults.lock().unwrap().push(fault);
    }

    fn take_fault(&self, matches: impl Fn(&Fault) -> bool) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap();
        let i = faults.iter().position(matches)?;
        Some(faults.remove(i))
    }

    /// Stops the reconcile loop and every restored instance.
    pub async fn shutdown(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
        let instances: Vec<RestoredInstance> = self.restored.lock().unwrap().drain(..).collect();
        for instance in instances {
            let pid = instance.pid;
            if instance.stop().await.is_err() {
                crate::common::pg::stop_postgres_pid(pid);
            }
        }
    }

    /// Stops every restored instance by its PID, for a test that ends without
    /// [`Operator::shutdown`], such as one that panicked.
    pub fn kill_restored(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
        for instance in self.restored.lock().unwrap().drain(..) {
            crate::common::pg::stop_postgres_pid(instance.pid);
        }
    }

    async fn reconcile_loop(self: Arc<Self>) {
        let mut changed = self.store.subscribe();
        let mut seen = std::collections::HashSet::new();
        loop {
            for source in &self.sources {
                for backup in self.store.list(BACKUPS, &source.namespace) {
                    let uid = backup["metadata"]["uid"].as_str().unwrap_or_default().to_string();
                    if backup["spec"]["cluster"]["name"] == source.name.as_str() && seen.insert(uid) {
                        let operator = self.clone();
                        let source = source.clone();
                        tokio::spawn(async move { operator.run_backup(&source, backup).await });
                    }
                }
                for cluster in self.store.list(CLUSTERS, &source.namespace) {
                    let uid = cluster["metadata"]["uid"].as_str().unwrap_or_default().to_string();
                    if cluster["spec"]["bootstrap"]["recovery"].is_object() && seen.insert(uid) {
                        let operator = self.clone();
                        tokio::spawn(async move { operator.run_recovery(cluster).await });
                    }
                }
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    fn backup_status(&self, namespace: &str, name: &str, status: Value) {
        self.store.patch(BACKUPS, namespace, name, &json!({ "status": status }));
    }

    async fn run_backup(&self, source: &SourceCluster, backup: Value) {
        let namespace = &source.namespace;
        let name = backup["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let method = backup["spec"]["method"].as_str().unwrap_or("barmanObjectStore").to_string();
        let pod_name = format!("{}-1", source.name);
        let container = self.store.get(PODS, namespace, &pod_name).map(|p| p["status"]["containerStatuses"][0]["containerID"].clone());
        let store = &source.spec.object_store;
        let mut running = json!({
            "phase": "started",
            "method": method,
            "instanceID": {"podName": pod_name, "ContainerID": container, "sessionID": "5e5510f0-0000-4000-8000-000000000001"},
            "majorVersion": 15,
            "reconciliationStartedAt": rfc3339(chrono::Utc::now()),
        });
        if method == "barmanObjectStore" {
            running["destinationPath"] = json!(store.destination_path);
            running["serverName"] = json!(store.server_name);
            running["endpointURL"] = json!(store.endpoint);
        }
        self.backup_status(namespace, &name, running);
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.backup_status(namespace, &name, json!({"phase": "running"}));

        let fault = self.take_fault(|f| !matches!(f, Fault::RestoreCannotReachTarget | Fault::WrongCa));
        match fault {
            Some(Fault::PodRestartMidBackup) => {
                put_pod(&self.store, namespace, &pod_name, "containerd://source-1-restarted", BTreeMap::new());
                return;
            }
            Some(Fault::WalArchivingFailing) => {
                self.backup_status(namespace, &name, json!({"phase": "walArchivingFailing"}));
                return;
            }
            Some(Fault::BackupFails(error)) => {
                self.backup_status(namespace, &name, json!({"phase": "failed", "error": error, "reconciliationTerminatedAt": rfc3339(chrono::Utc::now())}));
                return;
            }
            _ => {}
        }

        match local::backup(&source.spec, &Tools::from_env()).await {
            Ok(record) => {
                let (begin_lsn, end_lsn) = self.lsns(store, record.backup_id.as_deref()).await;
                self.backup_status(namespace, &name, json!({
                    "phase": "completed",
                    "backupId": record.backup_id,
                    "backupName": record.backup_name,
                    "beginWal": record.begin_wal,
                    "endWal": record.end_wal,
                    "beginLSN": begin_lsn,
                    "endLSN": end_lsn,
                    "startedAt": record.begin_time.map(rfc3339),
                    "stoppedAt": record.end_time.map(rfc3339),
                    "reconciliationTerminatedAt": rfc3339(chrono::Utc::now()),
                }));
            }
            Err(failure) => {
                self.backup_status(namespace, &name, json!({"phase": "failed", "error": failure.error.to_string()}));
            }
        }
    }

    /// Reads the begin and end LSN of a base backup from the archive's catalogue.
    async fn lsns(&self, store: &ObjectStore, backup_id: Option<&str>) -> (Option<String>, Option<String>) {
        let Ok(catalogue) = ArchiveStore::open(store).unwrap().read_catalogue().await else {
            return (None, None);
        };
        catalogue
            .backups
            .iter()
            .find(|b| Some(b.backup.id.as_str()) == backup_id)
            .map(|b| (Some(b.backup.begin_lsn.to_string()), Some(b.backup.end_lsn.to_string())))
            .unwrap_or((None, None))
    }

    fn cluster_status(&self, namespace: &str, name: &str, status: Value) {
        self.store.patch(CLUSTERS, namespace, name, &json!({ "status": status }));
    }

    async fn run_recovery(&self, cluster: Value) {
        let namespace = cluster["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = cluster["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let job_name = format!("{name}-1-full-recovery");
        let job_pod = format!("{job_name}-x7k2p");
        self.cluster_status(&namespace, &name, json!({"phase": "Setting up primary", "instances": 1, "readyInstances": 0}));
        self.store.put(JOBS, json!({
            "metadata": {"name": job_name, "namespace": namespace, "labels": {"cnpg.io/cluster": name, "cnpg.io/jobRole": "full-recovery"}},
            "spec": {"backoffLimit": 6},
            "status": {"active": 1},
        }));
        put_pod(&self.store, &namespace, &job_pod, "containerd://recovery-1", BTreeMap::from([("job-name".to_string(), job_name.clone())]));

        let result = match self.take_fault(|f| *f == Fault::RestoreCannotReachTarget) {
            Some(_) => Err("FATAL:  recovery ended before configured recovery target was reached".to_string()),
            None => self.restore(&namespace, &name, &cluster).await,
        };
        let wrong_ca = self.take_fault(|f| *f == Fault::WrongCa).is_some();
        let result = match result {
            // Scratch clusters of verify require TLS, to prove verify uses it; recovery
            // clusters offer it, as CNPG's default pg_hba does.
            Ok(instance) => match serve_tls(&self.work_dir.join(&name), &name, &namespace, &instance, wrong_ca, name.starts_with("visage-dr-verify-")).await {
                Ok(ca) => {
                    self.store.put(SECRETS, json!({
                        "metadata": {"name": format!("{name}-ca"), "namespace": namespace, "labels": {"cnpg.io/cluster": name}},
                        "type": "Opaque",
                        "data": {"ca.crt": base64::engine::general_purpose::STANDARD.encode(ca)},
                    }));
                    Ok(instance)
                }
                Err(error) => {
                    eprintln!("fake operator: cannot set up TLS for Cluster {namespace}/{name}: {error}");
                    self.restored.lock().unwrap().push(instance);
                    Err(format!("cannot set up TLS: {error}"))
                }
            },
            Err(error) => Err(error),
        };
        match result {
            Ok(instance) => {
                let port = instance.port.to_string();
                self.restored.lock().unwrap().push(instance);
                self.store.put(SECRETS, json!({
                    "metadata": {"name": format!("{name}-superuser"), "namespace": namespace, "labels": {"cnpg.io/cluster": name}},
                    "type": "kubernetes.io/basic-auth",
                    "data": {
                        "username": b64("postgres"), "user": b64("postgres"), "password": b64(""),
                        "host": b64("127.0.0.1"), "port": b64(&port), "dbname": b64("postgres"),
                        "uri": b64(&format!("postgresql://postgres@127.0.0.1:{port}/postgres")),
                    },
                }));
                self.store.patch(JOBS, &namespace, &job_name, &json!({"status": {"active": null, "succeeded": 1,
                    "conditions": [{"type": "Complete", "status": "True"}]}}));
                put_pod(&self.store, &namespace, &format!("{name}-1"), "containerd://restored-1", BTreeMap::new());
                self.cluster_status(&namespace, &name, json!({"phase": "Cluster in healthy state", "instances": 1, "readyInstances": 1}));
            }
            Err(error) => {
                self.store.set_log(&namespace, &job_pod, &format!("{{\"level\":\"info\",\"msg\":\"Starting recovery\"}}\n{error}"));
                self.store.patch(JOBS, &namespace, &job_name, &json!({"status": {"active": null, "failed": 7,
                    "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}}));
                tokio::time::sleep(Duration::from_millis(300)).await;
                self.cluster_status(&namespace, &name, json!({
                    "phase": "Cluster is unrecoverable and needs manual intervention",
                    "phaseReason": format!("Job {job_name} failed"),
                }));
            }
        }
    }

    /// Restores the archive named in the Cluster's `externalClusters` entry to the target in
    /// `bootstrap.recovery.recoveryTarget`, checking that the planned base backup is the
    /// pinned `backupID`.
    async fn restore(&self, namespace: &str, name: &str, cluster: &Value) -> Result<RestoredInstance, String> {
        let recovery = &cluster["spec"]["bootstrap"]["recovery"];
        let source = recovery["source"].as_str().ok_or("bootstrap.recovery.source is missing")?;
        let external = cluster["spec"]["externalClusters"]
            .as_array()
            .and_then(|list| list.iter().find(|e| e["name"] == source))
            .ok_or_else(|| format!("no externalClusters entry named {source}"))?;
        let barman = &external["barmanObjectStore"];
        let credentials = &barman["s3Credentials"];
        let secret_value = |selector: &Value| -> Result<String, String> {
            let secret_name = selector["name"].as_str().ok_or("s3Credentials selector has no name")?;
            let secret = self.store.get(SECRETS, namespace, secret_name).ok_or_else(|| format!("Secret {secret_name} not found"))?;
            let encoded = secret["data"][selector["key"].as_str().unwrap_or_default()].as_str().ok_or("key missing in Secret")?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };

        let dir = self.work_dir.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let key_file = dir.join("access-key");
        let secret_file = dir.join("secret-key");
        std::fs::write(&key_file, secret_value(&credentials["accessKeyId"])?).map_err(|e| e.to_string())?;
        std::fs::write(&secret_file, secret_value(&credentials["secretAccessKey"])?).map_err(|e| e.to_string())?;
        let spec = DatabaseSpec {
            name: name.to_string(),
            driver: Driver::Local,
            object_store: ObjectStore {
                destination_path: barman["destinationPath"].as_str().ok_or("destinationPath missing")?.to_string(),
                server_name: barman["serverName"].as_str().unwrap_or(source).to_string(),
                endpoint: barman["endpointURL"].as_str().map(str::to_string),
                region: Some("us-east-1".into()),
                credentials_secret: None,
                access_key_id_file: Some(key_file),
                secret_access_key_file: Some(secret_file),
                barman_object_name: None,
            },
            schedule: None,
            retention: None,
            connection: None,
            cluster: None,
            namespace: None,
            method: None,
        };

        let target_text = recovery["recoveryTarget"]["targetTime"].as_str();
        let now = chrono::Utc::now();
        let target = match target_text {
            Some(text) => TargetTime::parse(text, now).map_err(|e| e.to_string())?,
            None => TargetTime::parse(&now.to_rfc3339(), now).unwrap(),
        };
        let store = ArchiveStore::open(&spec.object_store).map_err(|e| e.to_string())?;
        let catalogue = store.read_catalogue().await.map_err(|e| e.to_string())?;
        let request = RestoreRequest {
            target,
            to_end_of_archive: target_text.is_none(),
            into: dir.join("pg"),
            port: None,
            timeout: Duration::from_secs(120),
        };

        let plan = local::plan_restore(&spec, &Tools::from_env(), &store, &catalogue, &request, now).map_err(|e| e.to_string())?;
        let pinned = recovery["recoveryTarget"]["backupID"].as_str();
        if pinned.is_some_and(|id| id != plan.plan.backup.id.as_str()) {
            return Err(format!("backupID {pinned:?} is not the backup the target needs ({})", plan.plan.backup.id));
        }
        local::restore(&plan, &store).await.map_err(|e| e.to_string())
    }
}

/// Runs the `openssl` CLI in `dir`.
async fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new("openssl").args(args).current_dir(dir).output().await.map_err(|e| format!("cannot run openssl: {e}"))?;
    if !out.status.success() {
        return Err(format!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// Creates a self-signed CA certificate `<stem>.crt` with the key `<stem>.key` in `dir`.
async fn make_ca(dir: &Path, stem: &str, common_name: &str) -> Result<(), String> {
    let (key, crt, subject) = (format!("{stem}.key"), format!("{stem}.crt"), format!("/CN={common_name}"));
    openssl(dir, &[
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-keyout", &key, "-out", &crt, "-subj", &subject,
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    ])
    .await
}

/// Makes `instance` serve TLS as a CNPG instance does: a server certificate for 127.0.0.1 and
/// the `-rw`, `-r` and `-ro` service names, signed by a CA made for the cluster, and a
/// `pg_hba.conf` whose only TCP rule is `hostssl` when `require` is set, or `host` (TLS
/// offered, not required) otherwise. Returns the PEM to publish as `ca.crt`: the cluster's
/// CA, or with `wrong_ca` one that did not sign the server certificate.
async fn serve_tls(dir: &Path, name: &str, namespace: &str, instance: &RestoredInstance, wrong_ca: bool, require: bool) -> Result<Vec<u8>, String> {
    let dir = dir.join("tls");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    make_ca(&dir, "ca", &format!("{name}-ca")).await?;
    let subject = format!("/CN={name}-rw");
    openssl(&dir, &["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", &subject]).await?;
    let services = ["rw", "r", "ro"]
        .iter()
        .flat_map(|s| [format!("DNS:{name}-{s}"), format!("DNS:{name}-{s}.{namespace}.svc")])
        .collect::<Vec<_>>()
        .join(",");
    let extensions = format!(
        "subjectAltName=IP:127.0.0.1,{services}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
    );
    std::fs::write(dir.join("server.ext"), extensions).map_err(|e| e.to_string())?;
    openssl(&dir, &[
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "server.ext", "-out", "server.crt",
    ])
    .await?;

    // PostgreSQL reads the key only when the database's OS user owns it with mode 0600.
    let data = &instance.data_dir;
    let owner = std::fs::metadata(data).map_err(|e| e.to_string())?;
    for file in ["server.crt", "server.key"] {
        let target = data.join(file);
        std::fs::copy(dir.join(file), &target).map_err(|e| format!("copy {file}: {e}"))?;
        std::os::unix::fs::chown(&target, Some(owner.uid()), Some(owner.gid())).map_err(|e| format!("chown {file}: {e}"))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).map_err(|e| format!("chmod {file}: {e}"))?;
    }
    let hba = if require { "local all all trust\nhostssl all all 127.0.0.1/32 trust\n" } else { "local all all trust\nhost all all 127.0.0.1/32 trust\n" };
    std::fs::write(data.join("pg_hba.conf"), hba).map_err(|e| format!("write pg_hba.conf: {e}"))?;

    let mut config = tokio_postgres::Config::new();
    config.host_path(&instance.socket_dir).port(instance.port).user(&instance.user).dbname(&instance.dbname);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| format!("connect through the socket: {e}"))?;
    tokio::spawn(connection);
    // One statement a call, because ALTER SYSTEM cannot run in the implicit transaction of a
    // multi-statement query.
    for statement in [
        "ALTER SYSTEM SET ssl = on",
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "SELECT pg_reload_conf()",
    ] {
        client.batch_execute(statement).await.map_err(|e| format!("{statement}: {}", visage_dr::verify::database::error_text(&e)))?;
    }
    // The postmaster applies the reload asynchronously; a new session shows when it has.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(|e| format!("connect through the socket: {e}"))?;
        tokio::spawn(connection);
        let ssl: String = client.query_one("SHOW ssl", &[]).await.map_err(|e| e.to_string())?.get(0);
        if ssl == "on" {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err("ssl is still off 10 s after pg_reload_conf(); see the instance log".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    if wrong_ca {
        make_ca(&dir, "other-ca", &format!("{name}-ca")).await?;
        return std::fs::read(dir.join("other-ca.crt")).map_err(|e| e.to_string());
    }
    std::fs::read(dir.join("ca.crt")).map_err(|e| e.to_string())
}

/// Creates or replaces a running pod with one container of id `container_id`.
fn put_pod(store: &Store, namespace: &str, name: &str, container_id: &str, labels: BTreeMap<String, String>) {
    store.put(PODS, json!({
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "postgres", "image": "postgres:15"}]},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "postgres", "containerID": container_id, "image": "postgres:15", "imageID": "",
            "ready": true, "restartCount": 0,
        }]},
    }));
}
