//! `visage-dr verify` of a cnpg database against the fake Kubernetes API server, whose
//! simulated operator restores scratch Clusters with real PostgreSQL 15, barman-cloud and
//! Garage.
//!
//! One source server and one API server are shared by the steps, which run in order and print
//! their names. The steps are a passing run over TLS that deletes its scratch Cluster and an
//! expired leftover, a run with `--keep`, a restore that becomes unrecoverable, a scratch
//! Cluster whose CA Secret contains the wrong CA, one that times out, and a run stopped by
//! SIGTERM while it waits.

mod common;
#[path = "common/fake_kube/mod.rs"]
mod fake_kube;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use chrono::Utc;
use common::pg::{self, PgServer};
use common::*;
use fake_kube::fixture::{source_spec, start_operator, StopRestored, CLUSTER};
use fake_kube::operator::{Fault, SourceCluster};
use fake_kube::FakeKube;
use serde_json::{json, Value};
use visage_dr::cnpg::scratch::{self, EXPIRES_ANNOTATION, EXPIRES_LABEL, SCRATCH_LABEL, SCRATCH_VALUE};
use visage_dr::postgres::local::OsUser;

const NAMESPACE: &str = "db";
const CLUSTERS: &str = "postgresql.cnpg.io/clusters";

/// Writes a policy with the cnpg database `app` of the Cluster `pg-main`, verified in the
/// Cluster's own namespace, because the simulated operator only reconciles that one.
fn write_policy(dir: &Path, s3: &S3Server, bucket: &str) -> PathBuf {
    let (key_file, secret_file) = write_key_files(dir, s3);
    let policy = format!(
        r#"repository:
  url: file://{dir}/repo
postgres:
- name: app
  driver: cnpg
  cluster: {CLUSTER}
  namespace: {NAMESPACE}
  object_store:
    destination_path: s3://{bucket}/pg
    server_name: main
    endpoint: {endpoint}
    region: {region}
    credentials_secret: pg-creds
    access_key_id_file: {key}
    secret_access_key_file: {secret}
verification:
  schedule: "0 3 * * *"
  scratch_namespace: {NAMESPACE}
  scratch_dir: {dir}/scratch
  timeout: 2min
  sample_objects: 1
  data_boundary: {{ database: app, query: "SELECT max(created_at) FROM t" }}
  schema: {{ tables: [t], extensions: [plpgsql] }}
  checks:
    - {{ name: rows before target, database: app, query: "SELECT count(*) FROM t", expect: "= 2" }}
"#,
        dir = dir.display(),
        endpoint = s3.endpoint,
        region = s3.region,
        key = key_file.display(),
        secret = secret_file.display(),
    );
    let path = dir.join("policy.yaml");
    std::fs::write(&path, policy).unwrap();
    path
}

/// Prints the start of a test step, so that a hang or a failure names its step.
fn run(args: &[&str]) -> (i32, String, String) {
    run_visage_dr(args, &[("RUST_LOG", "info".into())])
}

/// Names of the scratch Clusters in the store.
fn scratch_clusters(kube: &FakeKube) -> Vec<String> {
    kube.store
        .list(CLUSTERS, NAMESPACE)
        .iter()
        .filter(|c| c["metadata"]["labels"][SCRATCH_LABEL] == SCRATCH_VALUE)
        .map(|c| c["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Stores a scratch Cluster of an earlier run that expires at `expires` (Unix seconds).
fn put_leftover(kube: &FakeKube, name: &str, expires: i64) {
    kube.store.put(CLUSTERS, json!({
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {
            "app.kubernetes.io/managed-by": "visage-dr", SCRATCH_LABEL: SCRATCH_VALUE, EXPIRES_LABEL: expires.to_string(),
        }},
        "spec": {"instances": 1, "storage": {"size": "1Gi"}},
        "status": {"phase": "Cluster in healthy state", "instances": 1, "readyInstances": 1},
    }));
}

/// Returns the name of the scratch Cluster in the details of a report's restore check.
fn cluster_of(report: &Value) -> String {
    let details = report_check(report, "restore app")["details"].as_str().unwrap();
    let start = details.find("visage-dr-verify-").unwrap_or_else(|| panic!("no Cluster name in {details}"));
    details[start..].split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cnpg_verify_scratch_clusters() {
    let Some(s3) = garage() else { return };
    if !pg::tools_present() {
        return;
    }
    step("start PostgreSQL and the API server");
    let bucket = s3.new_bucket("cnpg-verify").await;
    let source = PgServer::start(&s3, &bucket, "main").await;
    let work = pg::postgres_dir(&OsUser::lookup("postgres").unwrap());
    let policy = write_policy(work.path(), &s3, &bucket);
    let policy = policy.to_str().unwrap().to_owned();
    let kube = FakeKube::start(work.path(), NAMESPACE).await;
    let kubeconfig = kube.kubeconfig.to_str().unwrap().to_owned();
    let operator = start_operator(&kube, &s3, NAMESPACE, work.path(), vec![SourceCluster { name: CLUSTER.into(), namespace: NAMESPACE.into(), spec: source_spec(&s3, &bucket, work.path(), source.port) }]);
    let _stop_restored = StopRestored(operator.clone());

    step("rows, a base backup, the target and a later row");
    let client = source.client().await;
    client
        .batch_execute("CREATE TABLE t (id text PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT clock_timestamp()); INSERT INTO t VALUES ('A')")
        .await
        .unwrap();
    let repo_url = format!("file://{}", work.path().join("repo").display());
    let (code, stdout, stderr) = run(&[
        "backup", "postgres", "--policy", &policy, "--name", "app", "--json", "--kubeconfig", &kubeconfig, "--repo", &repo_url,
    ]);
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    client.batch_execute("INSERT INTO t VALUES ('B')").await.unwrap();
    let row = client
        .query_one(r#"SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#, &[])
        .await
        .unwrap();
    let target: String = row.get(0);
    client.batch_execute("INSERT INTO t VALUES ('C')").await.unwrap();
    source.switch_and_wait_archived().await;

    // Leftovers of earlier runs: the expired one goes, the other stays.
    let now = Utc::now().timestamp();
    put_leftover(&kube, "visage-dr-verify-20261101t030000z", now - 60);
    put_leftover(&kube, "visage-dr-verify-20261205t020000z", now + 3600);

    step("passing verify");
    let report_dir = work.path().join("report");
    let report_dir = report_dir.to_str().unwrap();
    let (code, stdout, stderr) = run(&[
        "verify", "--policy", &policy, "--target-time", &target, "--kubeconfig", &kubeconfig, "--json", "--report-dir", report_dir,
    ]);
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    let output: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let report = &output["report"];
    assert_eq!(report["result"], "pass", "{report:#}");
    for name in ["restore app", "recovery app", "data boundary app", "schema app", "check rows before target", "teardown"] {
        assert_eq!(report_check(report, name)["result"], "pass", "{name}: {report:#}");
    }
    assert_eq!(report["databases"][0]["driver"], "cnpg", "{report:#}");
    let port = report["databases"][0]["port"].as_u64().unwrap();
    assert_ne!(port, u64::from(source.port), "the checks ran against the source server");
    let name = cluster_of(report);
    let secret = kube.store.get("/secrets", NAMESPACE, &format!("{name}-superuser")).expect("the operator published the Secret");
    let secret_port = base64::engine::general_purpose::STANDARD.decode(secret["data"]["port"].as_str().unwrap()).unwrap();
    assert_eq!(String::from_utf8(secret_port).unwrap(), port.to_string(), "the checks did not use the scratch Cluster's instance");
    assert!(Path::new(report_dir).join("report.json").is_file(), "no report.json in {report_dir}");
    assert_eq!(report["databases"][0]["tls"], true, "the checks did not connect over TLS: {report:#}");
    let restore_details = report_check(report, "restore app")["details"].as_str().unwrap();
    assert!(restore_details.contains(&format!("over TLS verified with the CA of Secret {name}-ca")), "{restore_details}");

    // The scratch instance still runs until the operator stops, and rejects a plain connection,
    // so the run above could only have passed over TLS.
    let plain = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port as u16)
        .user("postgres")
        .dbname("postgres")
        .ssl_mode(tokio_postgres::config::SslMode::Disable)
        .connect(tokio_postgres::NoTls)
        .await;
    let plain_error = plain.err().expect("a plain connection to the scratch instance succeeded");
    let plain_error = plain_error.as_db_error().map(|e| e.message().to_owned()).unwrap_or_else(|| plain_error.to_string());
    assert!(plain_error.contains("no encryption"), "the plain connection failed for another reason: {plain_error}");

    // With the cluster's CA, the session is encrypted on the scratch instance, which offers
    // TLS, and plain on the source server, which does not.
    let ca_secret = kube.store.get("/secrets", NAMESPACE, &format!("{name}-ca")).expect("the operator published the CA Secret");
    let ca = base64::engine::general_purpose::STANDARD.decode(ca_secret["data"]["ca.crt"].as_str().unwrap()).unwrap();
    let connect = |port: u16| visage_dr::verify::database::connect_tcp("127.0.0.1", port, "postgres", "postgres", None, Some(ca.as_slice()));
    let scratch_session = connect(port as u16).await.unwrap_or_else(|e| panic!("TLS connection to the scratch instance: {e}"));
    assert!(scratch_session.tls, "the scratch instance session is not encrypted");
    let source_session = connect(source.port).await.unwrap_or_else(|e| panic!("connection to the source server without TLS: {e}"));
    assert!(!source_session.tls, "the source server offers no TLS, but the session reports TLS");
    assert!(kube.store.get(CLUSTERS, NAMESPACE, &name).is_none(), "the scratch Cluster {name} was not deleted");
    assert_eq!(scratch_clusters(&kube), ["visage-dr-verify-20261205t020000z"], "only the unexpired leftover remains");
    let requests = kube.store.requests();
    let applies = requests.get(&("postgresql.cnpg.io".into(), "clusters".into(), "patch".into())).copied().unwrap_or(0);
    assert!(applies >= 1, "the scratch Cluster was never applied: {requests:?}");

    step("verify with --keep");
    let (code, stdout, stderr) = run(&["verify", "--policy", &policy, "--target-time", &target, "--kubeconfig", &kubeconfig, "--keep"]);
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    let kept_line = stdout.lines().find(|l| l.starts_with("kept app: Cluster db/")).unwrap_or_else(|| panic!("no kept Cluster in {stdout}"));
    let kept_name = kept_line["kept app: Cluster db/".len()..].split(';').next().unwrap().to_owned();
    let kept = kube.store.get(CLUSTERS, NAMESPACE, &kept_name).unwrap_or_else(|| panic!("--keep deleted {kept_name}"));
    let expires: i64 = kept["metadata"]["labels"][EXPIRES_LABEL].as_str().unwrap().parse().unwrap();
    assert!(expires > Utc::now().timestamp() + 23 * 3600, "a kept Cluster expires after a day, not at {expires}");
    assert!(kept["metadata"]["annotations"][EXPIRES_ANNOTATION].is_string(), "{kept:#}");
    assert_eq!(kept["metadata"]["labels"]["app.kubernetes.io/managed-by"], "visage-dr", "{kept:#}");
    assert!(kept["spec"].get("backup").is_none(), "the scratch Cluster archives WAL: {kept:#}");
    assert_eq!(kept["spec"]["resources"]["requests"]["memory"], scratch::MEMORY_REQUEST, "{kept:#}");
    assert!(kept["spec"]["bootstrap"]["recovery"]["recoveryTarget"]["backupID"].is_string(), "{kept:#}");
    kube.store.delete(CLUSTERS, NAMESPACE, &kept_name);

    step("restore that never becomes healthy");
    operator.inject(Fault::RestoreCannotReachTarget);
    let (code, stdout, stderr) = run(&["verify", "--policy", &policy, "--target-time", &target, "--kubeconfig", &kubeconfig, "--json"]);
    assert_eq!(code, 1, "{stderr}\n{stdout}");
    assert!(stderr.contains("verification failed"), "{stderr}");
    let output: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let report = &output["report"];
    let restore = report_check(report, "restore app");
    assert_eq!(restore["result"], "fail", "{report:#}");
    let details = restore["details"].as_str().unwrap();
    assert!(details.contains("did not become ready"), "{details}");
    assert!(details.contains("unrecoverable"), "{details}");
    assert!(details.contains("full-recovery failed"), "{details}");
    assert_eq!(report_check(report, "recovery app")["result"], "fail", "{report:#}");
    assert_eq!(report_check(report, "teardown")["result"], "pass", "{report:#}");
    let failed_name = cluster_of(report);
    assert!(kube.store.get(CLUSTERS, NAMESPACE, &failed_name).is_none(), "the failed scratch Cluster {failed_name} was not deleted");
    assert_eq!(scratch_clusters(&kube), ["visage-dr-verify-20261205t020000z"]);

    step("CA Secret with the wrong CA");
    operator.inject(Fault::WrongCa);
    let (code, stdout, stderr) = run(&["verify", "--policy", &policy, "--target-time", &target, "--kubeconfig", &kubeconfig, "--json"]);
    assert_eq!(code, 1, "{stderr}\n{stdout}");
    let output: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let report = &output["report"];
    let restore = report_check(report, "restore app");
    assert_eq!(restore["result"], "fail", "{report:#}");
    let wrong_name = cluster_of(report);
    let details = restore["details"].as_str().unwrap();
    assert!(details.contains(&format!("cannot connect to scratch Cluster {NAMESPACE}/{wrong_name}")), "{details}");
    assert!(details.contains("invalid peer certificate"), "the failure does not name the certificate problem: {details}");
    assert!(details.contains(&format!("Check that Secret {NAMESPACE}/{wrong_name}-ca contains the CA")), "{details}");
    assert_eq!(report_check(report, "recovery app")["result"], "fail", "{report:#}");
    assert_eq!(report_check(report, "teardown")["result"], "pass", "{report:#}");
    assert!(kube.store.get(CLUSTERS, NAMESPACE, &wrong_name).is_none(), "the scratch Cluster {wrong_name} was not deleted");
    assert_eq!(scratch_clusters(&kube), ["visage-dr-verify-20261205t020000z"]);

    // Without the operator no Cluster ever gets a status, so a run waits until its timeout.
    operator.shutdown().await;
    let short_policy = work.path().join("policy-short.yaml");
    let short_text = std::fs::read_to_string(&policy).unwrap().replace("timeout: 2min", "timeout: 6s");
    std::fs::write(&short_policy, short_text).unwrap();
    let short_policy = short_policy.to_str().unwrap();

    step("restore that times out");
    let (code, stdout, stderr) = run(&["verify", "--policy", short_policy, "--target-time", &target, "--kubeconfig", &kubeconfig, "--json"]);
    assert_eq!(code, 1, "{stderr}\n{stdout}");
    let output: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let report = &output["report"];
    let failure = report["failure"].as_str().unwrap();
    assert!(failure.contains("not ready after") || failure.contains("did not finish within verification.timeout"), "{failure}");
    assert_eq!(report_check(report, "teardown")["result"], "pass", "{report:#}");
    assert_eq!(scratch_clusters(&kube), ["visage-dr-verify-20261205t020000z"], "the timed-out scratch Cluster was not deleted");

    step("SIGTERM while waiting for the scratch Cluster");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_visage-dr"))
        .args(["verify", "--policy", &policy, "--target-time", &target, "--kubeconfig", &kubeconfig, "--json"])
        .env_remove("VISAGE_DR_REPO")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while scratch_clusters(&kube).len() < 2 {
        assert!(std::time::Instant::now() < deadline, "verify created no scratch Cluster within 30 s");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success(), "kill -TERM failed");
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{stdout}");
    let output: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let report = &output["report"];
    assert!(report_check(report, "run")["details"].as_str().unwrap().contains("interrupted by SIGTERM"), "{report:#}");
    assert_eq!(report_check(report, "teardown")["result"], "pass", "{report:#}");
    assert_eq!(scratch_clusters(&kube), ["visage-dr-verify-20261205t020000z"], "the interrupted run left its scratch Cluster");

    // Every request verify sent is a call that the list of Kubernetes API calls grants.
    let granted: Vec<(String, String, String)> = visage_dr::kube_api::API_CALLS
        .iter()
        .map(|c| (c.group.to_string(), c.resource.to_string(), c.verb.to_string()))
        .collect();
    let served = kube.store.requests();
    for call in served.keys() {
        assert!(granted.contains(call), "visage-dr made the call {call:?}, which is missing from kube_api::API_CALLS");
    }
    let delete = ("postgresql.cnpg.io".to_string(), "clusters".to_string(), "delete".to_string());
    assert!(served.contains_key(&delete), "verify never deleted a Cluster: {served:?}");
}
