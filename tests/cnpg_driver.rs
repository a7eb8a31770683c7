//! The cnpg driver end to end against a fake Kubernetes API server whose simulated operator
//! does the real work: real PostgreSQL 15, real barman-cloud and Garage.
//!
//! One source server, one bucket and one API server are shared by every step, because a
//! PostgreSQL start and a base backup cost seconds each. The steps run in order in one test
//! and print their names, so a failure or a hang names its step. They cover a failed backup,
//! a backup whose watch drops and returns 410, a dry run that contacts no API, and the A/B/C
//! data-boundary restore. Then come a restore that cannot reach its target and a pod restart
//! mid-backup, after which a scheduled run clears the stale Backup and applies retention.
//! The last steps are a sustained walArchivingFailing and a skipped slot.

mod common;
#[path = "common/fake_kube/mod.rs"]
mod fake_kube;

use std::path::{Path, PathBuf};

use common::pg::{self, PgServer};
use common::*;
use fake_kube::fixture::{source_spec, start_operator, StopRestored, CLUSTER};
use fake_kube::operator::{Fault, SourceCluster};
use fake_kube::FakeKube;
use serde_json::{json, Value};
use visage_dr::cnpg::backup::{self, BackupOptions, BackupOutcome};
use visage_dr::postgres::config::{DatabaseSpec, Driver};
use visage_dr::postgres::local::OsUser;
use visage_dr::postgres::records::{list_postgres_records, RunStatus};
use visage_dr::repository::{RepoOptions, RepoUrl, Repository};

const NAMESPACE: &str = "db";
const PLUGIN_CLUSTER: &str = "pg-plugin";
const BACKUPS: &str = "postgresql.cnpg.io/backups";
const CLUSTERS: &str = "postgresql.cnpg.io/clusters";

/// Writes a policy with the cnpg databases `app` for the Cluster `pg-main`, and
/// `app-plugin` for the Cluster `pg-plugin` with the barman-cloud plugin.
fn write_policy(dir: &Path, s3: &S3Server, bucket: &str) -> PathBuf {
    let (key_file, secret_file) = write_key_files(dir, s3);
    let (key, secret) = (key_file.display(), secret_file.display());
    let (endpoint, region) = (&s3.endpoint, &s3.region);
    let policy = format!(
        "repository:\n  url: file://{dir}/repo\n\
         postgres:\n\
         - name: app\n  driver: cnpg\n  cluster: {CLUSTER}\n  namespace: {NAMESPACE}\n  schedule: \"0 2 * * *\"\n\
         \x20 retention: {{ keep_last: 1 }}\n\
         \x20 object_store:\n    destination_path: s3://{bucket}/pg\n    server_name: main\n\
         \x20   endpoint: {endpoint}\n    region: {region}\n    credentials_secret: pg-creds\n\
         \x20   access_key_id_file: {key}\n    secret_access_key_file: {secret}\n\
         - name: app-plugin\n  driver: cnpg\n  cluster: {PLUGIN_CLUSTER}\n  namespace: {NAMESPACE}\n  method: plugin\n\
         \x20 retention: {{ recovery_window: 30d }}\n\
         \x20 object_store:\n    destination_path: s3://{bucket}/pg\n    server_name: main\n\
         \x20   endpoint: {endpoint}\n    region: {region}\n    barman_object_name: pg-store\n\
         \x20   access_key_id_file: {key}\n    secret_access_key_file: {secret}\n\
         verification:\n  schedule: \"0 3 * * *\"\n  scratch_namespace: scratch\n  timeout: 30min\n  sample_objects: 1\n",
        dir = dir.display(),
    );
    let path = dir.join("policy.yaml");
    std::fs::write(&path, policy).unwrap();
    path
}

struct Env {
    policy: String,
    kubeconfig: String,
}

impl Env {
    /// Runs visage-dr with `--kubeconfig` where the command takes it, else with KUBECONFIG.
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = visage_dr(args, &[("KUBECONFIG", self.kubeconfig.clone()), ("RUST_LOG", "info".into())]);
        let (stdout, stderr) = text(&out);
        (out.status.code().unwrap_or(-1), stdout, stderr)
    }

    fn backup(&self, extra: &[&str]) -> (i32, String, String) {
        let mut args = vec!["backup", "postgres", "--policy", &self.policy, "--name", "app", "--json", "--kubeconfig", &self.kubeconfig];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

/// Waits until the next whole second, so that consecutive backups get distinct slot names.
async fn next_second() {
    let now = chrono::Utc::now();
    let wait = 1_000 - now.timestamp_subsec_millis().min(999) as u64 + 20;
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
}

fn backups(kube: &FakeKube) -> Vec<Value> {
    kube.store.list(BACKUPS, NAMESPACE)
}

fn backup_names(kube: &FakeKube) -> Vec<String> {
    backups(kube).iter().map(|b| b["metadata"]["name"].as_str().unwrap().to_owned()).collect()
}

fn delete_non_terminal(kube: &FakeKube) {
    for backup in backups(kube) {
        let phase = backup["status"]["phase"].as_str().unwrap_or("");
        if phase != "completed" && phase != "failed" {
            kube.store.delete(BACKUPS, NAMESPACE, backup["metadata"]["name"].as_str().unwrap());
        }
    }
}

/// Prints the start of a test step, so that a hang or a failure names its step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cnpg_backup_and_restore() {
    let Some(s3) = garage() else { return };
    if !pg::tools_present() {
        return;
    }
    step("start PostgreSQL and the API server");
    let bucket = s3.new_bucket("cnpg").await;
    let source = PgServer::start(&s3, &bucket, "main").await;
    step("PostgreSQL started");
    let work = pg::postgres_dir(&OsUser::lookup("postgres").unwrap());
    let policy = write_policy(work.path(), &s3, &bucket);
    let kube = FakeKube::start(work.path(), NAMESPACE).await;
    let sources = [CLUSTER, PLUGIN_CLUSTER]
        .into_iter()
        .map(|name| SourceCluster { name: name.into(), namespace: NAMESPACE.into(), spec: source_spec(&s3, &bucket, work.path(), source.port) })
        .collect();
    let operator = start_operator(&kube, &s3, NAMESPACE, work.path(), sources);
    let _stop_restored = StopRestored(operator.clone());
    let env = Env { policy: policy.to_str().unwrap().to_owned(), kubeconfig: kube.kubeconfig.to_str().unwrap().to_owned() };
    let repo_url = format!("file://{}", work.path().join("repo").display());
    let repo_args = ["--repo", repo_url.as_str()];

    // A Backup that fails reports status.error, exits non-zero and is recorded.
    step("failed backup");
    operator.inject(Fault::BackupFails("exit status 1".into()));
    let (code, stdout, stderr) = env.backup(&repo_args);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("the backup failed: exit status 1"), "{stderr}");
    let failed: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(failed["status"], "failed", "{stdout}");
    assert_eq!(failed["phase"], "failed", "{stdout}");
    assert_eq!(failed["driver"], "cnpg", "{stdout}");

    // Row A, then a backup whose first watch drops; the client lists again after 410 Gone.
    step("watch drop and 410");
    let client = source.client().await;
    client.batch_execute("CREATE TABLE t (id text PRIMARY KEY); INSERT INTO t VALUES ('A')").await.unwrap();
    next_second().await;
    kube.store.drop_next_watch(BACKUPS);
    let (code, stdout, stderr) = env.backup(&repo_args);
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    assert!(kube.store.gone_served.load(std::sync::atomic::Ordering::SeqCst) >= 1, "no watch got 410 Gone");
    let record: Value = serde_json::from_str(&stdout).unwrap();
    let backup_id = record["backup_id"].as_str().expect("the record names the backup id").to_owned();
    let first_backup = record["backup_name"].as_str().unwrap().to_owned();
    assert!(first_backup.starts_with("pg-main-20"), "{first_backup}");
    assert_eq!(first_backup.len(), "pg-main-".len() + 14, "{first_backup}");
    for field in ["begin_wal", "end_wal", "begin_lsn", "end_lsn", "begin_time", "end_time"] {
        assert!(record[field].is_string(), "{field} missing: {stdout}");
    }
    assert_eq!(record["method"], "barmanObjectStore", "{stdout}");
    let created = kube.store.get(BACKUPS, NAMESPACE, &first_backup).unwrap();
    assert_eq!(created["metadata"]["labels"]["app.kubernetes.io/managed-by"], "visage-dr");
    assert_eq!(created["spec"]["cluster"]["name"], CLUSTER);

    let repo = Repository::open(&RepoUrl::Local(work.path().join("repo")), RepoOptions::default()).await.unwrap();
    let records = list_postgres_records(&repo, "app").await.unwrap();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0].status, RunStatus::Failed);
    assert_eq!(records[0].error.as_deref(), Some("the backup failed: exit status 1"));
    assert_eq!(records[1].status, RunStatus::Complete);
    assert_eq!(records[1].backup_id.as_deref(), Some(backup_id.as_str()));

    // B, the target, then C; everything archived.
    step("rows B and C");
    client.batch_execute("INSERT INTO t VALUES ('B')").await.unwrap();
    let target = pg::server_now(&client).await;
    client.batch_execute("INSERT INTO t VALUES ('C')").await.unwrap();
    source.switch_and_wait_archived().await;

    // A dry run prints the manifest and sends no request to the API server.
    step("dry run");
    let requests_before = kube.store.request_count();
    let (code, stdout, stderr) = env.run(&[
        "restore", "postgres", "--policy", &env.policy, "--name", "app", "--target-time", &target,
        "--into", "app-restored", "--dry-run", "-o", "yaml",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(kube.store.request_count(), requests_before, "the dry run contacted the API server");
    let manifest: Value = serde_saphyr::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(manifest["kind"], "Cluster", "{stdout}");
    assert_eq!(manifest["spec"]["bootstrap"]["recovery"]["recoveryTarget"]["backupID"], backup_id.as_str(), "{stdout}");
    let target_time = manifest["spec"]["bootstrap"]["recovery"]["recoveryTarget"]["targetTime"].as_str().unwrap().to_owned();
    assert!(target_time.ends_with("+00:00"), "{target_time}");
    assert_eq!(target_time.as_bytes()[10], b' ', "{target_time}");
    if let Some(schemas) = fake_kube::schema::CrdSchemas::from_env() {
        let errors = schemas.validate_cluster(&manifest);
        assert!(errors.is_empty(), "{errors:?}");
    }

    // A restore named like the source is rejected before anything is applied.
    step("same name as source");
    let (code, _, stderr) = env.run(&[
        "restore", "postgres", "--policy", &env.policy, "--name", "app", "--target-time", &target, "--into", CLUSTER,
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("is the source cluster's name"), "{stderr}");

    // The A/B/C boundary through a recovery Cluster.
    step("A/B/C restore");
    let (code, stdout, stderr) = env.run(&[
        "restore", "postgres", "--policy", &env.policy, "--name", "app", "--target-time", &target,
        "--into", "app-restored", "--kubeconfig", &env.kubeconfig, "--json",
    ]);
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    assert!(stderr.contains("Cluster in healthy state"), "{stderr}");
    let output: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(output["backup_id"], backup_id.as_str(), "{stdout}");
    let port: u16 = output["connection"]["port"].as_str().unwrap().parse().unwrap();
    assert_eq!(output["connection"]["host"], "127.0.0.1", "{stdout}");
    let applied = kube.store.get(CLUSTERS, NAMESPACE, "app-restored").unwrap();
    assert!(applied["spec"].get("backup").is_none(), "the restored cluster archives WAL: {applied}");
    let restored = pg::connect(port).await.unwrap();
    let rows = restored.query("SELECT id FROM t ORDER BY id", &[]).await.unwrap();
    let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, ["A", "B"]);
    drop(restored);

    // A recovery that cannot reach its target fails early with the Job's log.
    step("unreachable target");
    operator.inject(Fault::RestoreCannotReachTarget);
    let (code, _, stderr) = env.run(&[
        "restore", "postgres", "--policy", &env.policy, "--name", "app", "--target-time", &target,
        "--into", "app-unreachable", "--recovery-timeout", "60",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("recovery ended before configured recovery target was reached"), "{stderr}");
    assert!(stderr.contains("app-unreachable-1-full-recovery"), "{stderr}");

    // A pod restart in the middle of a backup: the Backup stays running, visage-dr fails it.
    step("pod restart mid-backup");
    operator.inject(Fault::PodRestartMidBackup);
    next_second().await;
    let (code, _, stderr) = env.backup(&repo_args);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("restarted"), "{stderr}");
    let stuck: Vec<Value> = backups(&kube).into_iter().filter(|b| b["status"]["phase"] == "running").collect();
    assert_eq!(stuck.len(), 1, "{:?}", backup_names(&kube));
    let stuck_name = stuck[0]["metadata"]["name"].as_str().unwrap().to_owned();

    // A scheduled run deletes the stale Backup, takes its own, and applies retention.
    step("scheduled run");
    next_second().await;
    let (code, stdout, stderr) = env.run(&["run", "--policy", &env.policy, "--job", "postgres:app", "--json"]);
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    assert!(stderr.contains("deleting a stale Backup"), "{stderr}");
    assert!(stdout.contains("\"succeeded\""), "{stdout}");
    let names = backup_names(&kube);
    assert!(!names.contains(&stuck_name), "{names:?}");
    // keep_last 1: the first completed Backup is gone, the newest completed one stays.
    assert!(!names.contains(&first_backup), "{names:?}");
    let completed: Vec<Value> = backups(&kube).into_iter().filter(|b| b["status"]["phase"] == "completed").collect();
    assert_eq!(completed.len(), 1, "{names:?}");

    // A walArchivingFailing that lasts past the grace period fails the backup.
    step("sustained walArchivingFailing");
    operator.inject(Fault::WalArchivingFailing);
    next_second().await;
    let (code, _, stderr) = env.backup(&["--wal-failing-grace", "2"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("grace period"), "{stderr}");
    delete_non_terminal(&kube);

    // An earlier Backup that is still running on a live pod: the slot is skipped.
    step("plugin backup");
    kube.store.put("barmancloud.cnpg.io/objectstores", json!({
        "metadata": {"name": "pg-store", "namespace": NAMESPACE},
        "spec": {"retentionPolicy": "14d", "configuration": {"destinationPath": format!("s3://{bucket}/pg")}},
    }));
    next_second().await;
    let (code, stdout, stderr) = env.run(&["backup", "postgres", "--policy", &env.policy, "--name", "app-plugin", "--json"]);
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    let record: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(record["method"], "plugin", "{stdout}");
    assert_eq!(record["status"], "complete", "{stdout}");
    let plugin_backup = kube.store.get(BACKUPS, NAMESPACE, record["backup_name"].as_str().unwrap()).unwrap();
    assert_eq!(plugin_backup["spec"]["pluginConfiguration"]["name"], "barman-cloud.cloudnative-pg.io");
    assert!(stderr.contains("longer than the object store's retentionPolicy \"14d\""), "{stderr}");

    step("library: same slot, deadline, forbidden");
    let client = visage_dr::cnpg::client(Some(&kube.kubeconfig)).await.unwrap();
    let cnpg_spec = |cluster: &str, namespace: &str| DatabaseSpec {
        name: "lib".into(),
        driver: Driver::Cnpg,
        cluster: Some(cluster.into()),
        namespace: Some(namespace.into()),
        connection: None,
        ..source_spec(&s3, &bucket, work.path(), source.port)
    };
    let options = BackupOptions { deadline: std::time::Duration::from_secs(3), ..BackupOptions::default() };
    // The same slot again finds the completed Backup of that slot and creates nothing.
    let plugin_name = record["backup_name"].as_str().unwrap();
    let slot_text = &plugin_name[plugin_name.len() - 14..];
    let slot = chrono::NaiveDateTime::parse_from_str(slot_text, "%Y%m%d%H%M%S").unwrap().and_utc();
    let count = backups(&kube).len();
    let outcome = backup::run(client.clone(), &cnpg_spec(PLUGIN_CLUSTER, NAMESPACE), None, slot, &options).await.unwrap();
    assert!(matches!(outcome, BackupOutcome::Completed { .. }), "{outcome:?}");
    assert_eq!(backups(&kube).len(), count, "{:?}", backup_names(&kube));
    // A Backup of a cluster that no operator serves stays pending until the deadline.
    let outcome = backup::run(client.clone(), &cnpg_spec("pg-ghost", NAMESPACE), None, chrono::Utc::now(), &options).await.unwrap();
    let BackupOutcome::Failed { error, .. } = outcome else { panic!("{outcome:?}") };
    assert!(error.contains("did not finish within the deadline of 3s"), "{error}");
    // A refused request is a failed outcome with a record, not a crash.
    kube.store.forbid("locked");
    let outcome = backup::run(client.clone(), &cnpg_spec(CLUSTER, "locked"), None, chrono::Utc::now(), &options).await.unwrap();
    let BackupOutcome::Failed { record: Some(record), error } = outcome else { panic!("{outcome:?}") };
    assert!(error.contains("list Backups in namespace locked"), "{error}");
    assert_eq!(record.record.status, RunStatus::Failed);

    step("skipped slot");
    let pod = kube.store.get("/pods", NAMESPACE, &format!("{CLUSTER}-1")).unwrap();
    let container = pod["status"]["containerStatuses"][0]["containerID"].clone();
    kube.store.put(BACKUPS, json!({
        "metadata": {"name": "pg-main-manual", "namespace": NAMESPACE},
        "spec": {"cluster": {"name": CLUSTER}, "method": "barmanObjectStore"},
        "status": {"phase": "running", "instanceID": {"podName": format!("{CLUSTER}-1"), "ContainerID": container}},
    }));
    let count = backups(&kube).len();
    next_second().await;
    let (code, stdout, stderr) = env.backup(&[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("skipped: previous backup pg-main-manual still running"), "{stdout}");
    assert_eq!(backups(&kube).len(), count, "{:?}", backup_names(&kube));

    // Every request visage-dr sent is a call that the list of Kubernetes API calls grants.
    let granted: Vec<(String, String, String)> = visage_dr::kube_api::API_CALLS
        .iter()
        .map(|c| (c.group.to_string(), c.resource.to_string(), c.verb.to_string()))
        .collect();
    let served = kube.store.requests();
    for call in served.keys() {
        assert!(granted.contains(call), "visage-dr made the call {call:?}, which is missing from kube_api::API_CALLS");
    }
    let unused: Vec<_> = granted.iter().filter(|c| !served.contains_key(*c)).collect();
    eprintln!("listed calls these steps did not make: {unused:?}");
    // Only verify deletes Clusters (its scratch Clusters); tests/cnpg_verify.rs makes that call.
    let expected_unused = [
        ("postgresql.cnpg.io".to_string(), "backups".to_string(), "get".to_string()),
        ("postgresql.cnpg.io".to_string(), "clusters".to_string(), "delete".to_string()),
    ];
    assert!(unused.iter().all(|c| expected_unused.contains(c)), "{unused:?}");

    operator.shutdown().await;
}
