//! `visage-dr restore --policy --target-time` with the cnpg driver: the database, a bucket
//! and the checkpoints written at T1 < T2 < T3, restored to an instant between T2 and T3.
//! The database goes through the fake Kubernetes API server, whose simulated operator takes
//! real barman-cloud backups of PostgreSQL 15 into Garage and restores recovery Clusters.

mod common;
#[path = "common/fake_kube/mod.rs"]
mod fake_kube;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::pg::{self, PgServer};
use common::*;
use common::stack::{bucket_exists, components, push_checkpoint};
use fake_kube::fixture::{source_spec, start_operator, StopRestored, CLUSTER};
use fake_kube::operator::SourceCluster;
use fake_kube::FakeKube;
use serde_json::{json, Value};
use visage_dr::postgres::local::OsUser;
use visage_dr::repository::{RepoOptions, RepoUrl, Repository};
use visage_dr::server::auth::TokenSet;
use visage_dr::server::{self, ListenConfig, ServerConfig};

const NAMESPACE: &str = "db";
const CLUSTERS: &str = "postgresql.cnpg.io/clusters";
const PUSH_TOKEN: &str = "cnpg-stack-restore-push-token-0123456789";

/// Writes a policy with the cnpg database `app` for the Cluster `pg-main`, the bucket
/// `uploads`, the checkpoints, and a reference query from `app` to `uploads`.
fn write_policy(dir: &Path, s3: &S3Server, wal_bucket: &str, uploads: &str) -> String {
    let (key_file, secret_file) = write_key_files(dir, s3);
    let policy = format!(
        "repository:\n  url: file://{dir}/repo\n\
         postgres:\n\
         - name: app\n  driver: cnpg\n  cluster: {CLUSTER}\n  namespace: {NAMESPACE}\n  schedule: \"0 2 * * *\"\n\
         \x20 object_store:\n    destination_path: s3://{wal_bucket}/pg\n    server_name: main\n\
         \x20   endpoint: {endpoint}\n    region: {region}\n    credentials_secret: pg-creds\n\
         \x20   access_key_id_file: {key}\n    secret_access_key_file: {secret}\n\
         source_s3:\n  endpoint: {endpoint}\n\
         buckets:\n- name: uploads\n  bucket: {uploads}\n  retention: {{keep_last: 10}}\n\
         checkpoints:\n  retention: {{keep_last: 10}}\n\
         verification:\n  schedule: \"0 4 * * 0\"\n  timeout: 10min\n  scratch_namespace: scratch\n\
         \x20 references:\n  - database: app\n    bucket: uploads\n    query: SELECT storage_key FROM images\n",
        dir = dir.display(),
        endpoint = s3.endpoint,
        region = s3.region,
        key = key_file.display(),
        secret = secret_file.display(),
    );
    let path = dir.join("policy.yaml");
    std::fs::write(&path, policy).unwrap();
    path.to_str().unwrap().to_owned()
}

fn run(args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    run_visage_dr(args, env)
}

/// Prints the start of a test step, so that a hang or a failure names its step.
/// Returns the number of Cluster apply requests (server-side apply is a PATCH) served so far.
fn cluster_patches(kube: &FakeKube) -> u64 {
    let key = ("postgresql.cnpg.io".to_string(), "clusters".to_string(), "patch".to_string());
    kube.store.requests().get(&key).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cnpg_restore_brings_all_three_back() {
    let Some(s3) = garage() else { return };
    if !pg::tools_present() {
        return;
    }
    step("start PostgreSQL, the API servers and the operator");
    let wal_bucket = s3.new_bucket("cstack-wal").await;
    let uploads = s3.new_bucket("cstack-up").await;
    let mut source = PgServer::start(&s3, &wal_bucket, "main").await;
    let work = pg::postgres_dir(&OsUser::lookup("postgres").unwrap());
    let policy = write_policy(work.path(), &s3, &wal_bucket, &uploads);
    let kube = FakeKube::start(work.path(), NAMESPACE).await;
    let operator = start_operator(&kube, &s3, NAMESPACE, work.path(), vec![SourceCluster { name: CLUSTER.into(), namespace: NAMESPACE.into(), spec: source_spec(&s3, &wal_bucket, work.path(), source.port) }]);
    let _stop_restored = StopRestored(operator.clone());
    let kubeconfig = kube.kubeconfig.to_str().unwrap().to_owned();
    let mut env = s3.env();
    env.push(("KUBECONFIG", kubeconfig.clone()));

    // The checkpoint API writes into the policy's repository.
    let repo_url = RepoUrl::Local(work.path().join("repo"));
    let repo = Arc::new(Repository::open_or_init(&repo_url, RepoOptions::default()).await.unwrap());
    let tokens = TokenSet::parse("test tokens", &format!("{PUSH_TOKEN} push,read\n")).unwrap();
    let listen = ListenConfig { addr: "127.0.0.1:0".parse().unwrap(), tls: None, insecure_http: false };
    let api = server::start(repo, ServerConfig::new(tokens, 1 << 30, Duration::from_secs(10)), &listen).await.unwrap();
    let http = reqwest::Client::new();

    // T1: one image in the database, the bucket and a checkpoint; then a cnpg Backup and a
    // bucket snapshot.
    step("T1 and the backups");
    let client = source.client().await;
    client
        .batch_execute("CREATE TABLE images (id int PRIMARY KEY, storage_key text NOT NULL); INSERT INTO images VALUES (1, 'u/1.jpg')")
        .await
        .unwrap();
    let photo1 = random_bytes(50_000, 1);
    s3.put(&uploads, "u/1.jpg", photo1.clone()).await;
    push_checkpoint(&http, api.addr, PUSH_TOKEN, "lora-a", "step-100", &random_bytes(300_000, 11)).await;
    let (code, stdout, stderr) = run(&["run", "--policy", &policy, "--job", "postgres:app", "--json"], &env);
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    let (code, _, stderr) = run(&["run", "--policy", &policy, "--job", "bucket:uploads"], &env);
    assert_eq!(code, 0, "{stderr}");

    // T2: a second image, one row whose object was never uploaded, and a new checkpoint.
    step("T2 and the target");
    client.batch_execute("INSERT INTO images VALUES (2, 'u/2.jpg'), (3, 'u/ghost.jpg')").await.unwrap();
    let photo2 = random_bytes(60_000, 2);
    s3.put(&uploads, "u/2.jpg", photo2.clone()).await;
    let ckpt2 = random_bytes(300_000, 12);
    push_checkpoint(&http, api.addr, PUSH_TOKEN, "lora-a", "step-200", &ckpt2).await;
    let (code, _, stderr) = run(&["run", "--policy", &policy, "--job", "bucket:uploads"], &env);
    assert_eq!(code, 0, "{stderr}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let target = pg::server_now(&client).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // T3: changes after the target, in all three.
    step("T3");
    client.batch_execute("INSERT INTO images VALUES (4, 'u/3.jpg')").await.unwrap();
    s3.put(&uploads, "u/3.jpg", random_bytes(70_000, 3)).await;
    s3.put(&uploads, "u/1.jpg", random_bytes(50_000, 99)).await;
    push_checkpoint(&http, api.addr, PUSH_TOKEN, "lora-a", "step-300", &random_bytes(300_000, 13)).await;
    let (code, _, stderr) = run(&["run", "--policy", &policy, "--job", "bucket:uploads"], &env);
    assert_eq!(code, 0, "{stderr}");
    let after_t3 = pg::server_now(&client).await;
    source.switch_and_wait_archived().await;
    drop(client);
    api.shutdown(Duration::from_secs(5)).await.unwrap();

    let ckpt_dir = work.path().join("ckpt");
    let ckpt_arg = ckpt_dir.to_str().unwrap().to_owned();
    let args = |target: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["restore", "--policy", &policy, "--target-time", target, "--suffix", "r1", "--json"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(["--checkpoints-to".to_owned(), ckpt_arg.clone()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let call = |v: Vec<String>| {
        let parts: Vec<&str> = v.iter().map(String::as_str).collect();
        run(&parts, &env)
    };
    let restored_cluster = format!("{CLUSTER}-r1");
    let restored_bucket = format!("{uploads}-r1");

    // The dry run prints the plan, creates nothing and sends no request to the API server.
    step("dry run");
    let requests_before = kube.store.request_count();
    let (code, stdout, stderr) = call(args(&target, &["--dry-run", "--kubeconfig", &kubeconfig]));
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    assert_eq!(kube.store.request_count(), requests_before, "the dry run contacted the API server");
    let dry: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let database = &dry["plan"]["databases"][0];
    assert_eq!(database["name"], "app", "{database}");
    assert_eq!(database["into"]["driver"], "cnpg", "{database}");
    assert_eq!(database["into"]["cluster"], restored_cluster.as_str(), "{database}");
    assert_eq!(database["into"]["namespace"], NAMESPACE, "{database}");
    assert_eq!(database["into"]["service"], format!("{restored_cluster}-rw").as_str(), "{database}");
    assert!(database["base_backup"].as_str().unwrap().len() > 5, "{database}");
    assert!(database["wal_first"].as_str().unwrap().len() == 24, "{database}");
    assert!(database["wal_last"].as_str().unwrap() >= database["wal_first"].as_str().unwrap(), "{database}");
    assert_eq!(database["already_restored"], false, "{database}");
    assert!(dry["plan"]["buckets"][0]["skew_seconds"].as_i64().unwrap() >= 1, "the snapshot precedes the target: {dry}");
    assert_eq!(dry["plan"]["checkpoints"][0]["step"], "step-200", "{dry}");
    assert!(kube.store.get(CLUSTERS, NAMESPACE, &restored_cluster).is_none(), "the dry run created a Cluster");
    assert!(!bucket_exists(&s3, &restored_bucket).await, "the dry run created a bucket");
    assert!(!ckpt_dir.exists(), "the dry run created {}", ckpt_dir.display());
    // A dry run reads no source Cluster, so it shows the fallback size and image.
    assert_eq!(database["into"]["storage_size"], "10Gi", "{database}");
    assert!(database["into"].get("image_name").is_none(), "{database}");

    // --storage-size and --image-name set the new Cluster's size and image. A size that is
    // not a Kubernetes quantity is a usage error naming it.
    let image = "ghcr.io/cloudnative-pg/postgresql:15.8";
    let (code, stdout, stderr) = call(args(&target, &["--dry-run", "--storage-size", "20Gi", "--image-name", image]));
    assert_eq!(code, 0, "{stderr}");
    let sized: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(sized["plan"]["databases"][0]["into"]["storage_size"], "20Gi", "{sized}");
    assert_eq!(sized["plan"]["databases"][0]["into"]["image_name"], image, "{sized}");
    let (code, _, stderr) = call(args(&target, &["--dry-run", "--storage-size", "20GB"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("\"20GB\" is not a storage quantity"), "{stderr}");

    // The restore: exit 1, because the database references an object the bucket never had.
    step("restore");
    let (code, stdout, stderr) = call(args(&target, &[]));
    let result: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("1 object(s) that the restored database references"), "{stderr}");
    let outcome = &result["outcome"];
    for (component, ok, detail) in components(outcome) {
        assert!(ok, "{component}: {detail}");
    }
    let references = &outcome["references"][0];
    assert_eq!(references["keys_checked"], 3, "{references}");
    assert_eq!(references["missing"], json!(["u/ghost.jpg"]), "{references}");
    let switch_over = outcome["switch_over"].as_array().unwrap();
    let postgres_step = switch_over[0].as_str().unwrap();
    assert!(postgres_step.contains(&format!("Service {restored_cluster}-rw in namespace {NAMESPACE}")), "{postgres_step}");
    assert!(postgres_step.contains(&format!("Secret {restored_cluster}-superuser")), "{postgres_step}");

    // The applied Cluster records its target, and recovers from the planned backup.
    let applied = kube.store.get(CLUSTERS, NAMESPACE, &restored_cluster).expect("the recovery Cluster exists");
    let annotation = applied["metadata"]["annotations"]["visage-dr.io/restore-target"].as_str().unwrap_or_default();
    let base_backup = result["plan"]["databases"][0]["base_backup"].as_str().unwrap();
    assert!(annotation.ends_with(&format!("backup {base_backup}")), "{annotation}");
    assert_eq!(applied["spec"]["bootstrap"]["recovery"]["recoveryTarget"]["backupID"], base_backup);
    // Without --storage-size the new Cluster gets the source Cluster's storage.
    assert_eq!(applied["spec"]["storage"]["size"], "1Gi", "{applied}");
    assert_eq!(result["plan"]["databases"][0]["into"]["storage_size"], "1Gi", "{result}");

    // Database rows: exactly those of T1 and T2, read through the superuser Secret's port.
    let secret = kube.store.get("/secrets", NAMESPACE, &format!("{restored_cluster}-superuser")).unwrap();
    let port_bytes = base64::engine::general_purpose::STANDARD.decode(secret["data"]["port"].as_str().unwrap()).unwrap();
    let port: u16 = String::from_utf8(port_bytes).unwrap().parse().unwrap();
    let restored = pg::connect(port).await.unwrap();
    let rows = restored.query("SELECT storage_key FROM images ORDER BY id", &[]).await.unwrap();
    let keys: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(keys, vec!["u/1.jpg", "u/2.jpg", "u/ghost.jpg"]);
    drop(restored);

    // Bucket objects: byte-identical to T2, without the T3 changes.
    let contents = s3.contents(&restored_bucket).await;
    assert_eq!(contents.keys().collect::<Vec<_>>(), vec!["u/1.jpg", "u/2.jpg"]);
    assert_eq!(s3.get(&restored_bucket, "u/1.jpg").await, photo1);
    assert_eq!(s3.get(&restored_bucket, "u/2.jpg").await, photo2);

    // Checkpoints: the T2 one.
    assert_eq!(std::fs::read(ckpt_dir.join("lora-a").join("step-200")).unwrap(), ckpt2);
    assert!(!ckpt_dir.join("lora-a").join("step-300").exists());

    // An interrupted restore resumes: the Cluster is reused, present objects are kept, and
    // missing ones are written.
    step("resume");
    let patches_before = cluster_patches(&kube);
    s3.delete(&restored_bucket, "u/2.jpg").await;
    std::fs::remove_file(ckpt_dir.join("lora-a").join("step-200")).unwrap();
    let (code, stdout, stderr) = call(args(&target, &["--kubeconfig", &kubeconfig]));
    assert_eq!(code, 1, "still the one missing reference: {stderr}");
    let again: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    assert_eq!(again["plan"]["databases"][0]["already_restored"], true, "{again}");
    let details = components(&again["outcome"]);
    assert!(details.iter().all(|(_, ok, _)| *ok), "{details:?}");
    assert_eq!(details[0].2, format!("restored by an earlier run into Cluster {NAMESPACE}/{restored_cluster}"), "{details:?}");
    assert_eq!(details[1].2, "1 object(s) written, 1 already present", "{details:?}");
    assert!(details[2].2.starts_with("written to"), "{details:?}");
    assert_eq!(cluster_patches(&kube), patches_before, "the rerun applied the Cluster again");
    assert_eq!(again["outcome"]["references"][0]["missing"], json!(["u/ghost.jpg"]), "{again}");
    assert_eq!(s3.get(&restored_bucket, "u/2.jpg").await, photo2);
    assert_eq!(std::fs::read(ckpt_dir.join("lora-a").join("step-200")).unwrap(), ckpt2);

    // Another target under the same name is a plan problem that names the Cluster.
    step("same name, other target");
    let patches_before = cluster_patches(&kube);
    let (code, stdout, stderr) = call(args(&after_t3, &["--only", "postgres"]));
    assert_eq!(code, 1, "{stderr}\n{stdout}");
    let conflict = format!("Cluster {NAMESPACE}/{restored_cluster} already exists");
    assert!(stderr.contains(&conflict), "{stderr}");
    assert!(stderr.contains("choose another --suffix"), "{stderr}");
    assert_eq!(cluster_patches(&kube), patches_before, "a plan with a problem applied a Cluster");

    operator.shutdown().await;
    source.stop();
}
