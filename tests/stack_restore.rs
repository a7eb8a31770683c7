//! `visage-dr restore --policy --target-time` with the local driver: the
//! database, a bucket and the checkpoints written at T1 < T2 < T3, restored
//! to an instant between T2 and T3, against real PostgreSQL 15,
//! barman-cloud and Garage.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::pg::{self, PgServer};
use common::*;
use common::stack::{bucket_exists, components, push_checkpoint};
use serde_json::Value;
use visage_dr::repository::{RepoOptions, RepoUrl, Repository};
use visage_dr::server::auth::TokenSet;
use visage_dr::server::{self, ListenConfig, ServerConfig};

const PUSH_TOKEN: &str = "stack-restore-push-token-0123456789";

/// Stops a restored instance by its PID when the test ends, passed or not.
struct RestoredPid(u32);

impl Drop for RestoredPid {
    fn drop(&mut self) {
        pg::stop_postgres_pid(self.0);
    }
}

fn write_policy(dir: &Path, s3: &S3Server, wal_bucket: &str, uploads: &str, port: u16) -> String {
    let (key_file, secret_file) = write_key_files(dir, s3);
    let policy = format!(
        "repository:\n  url: file://{dir}/repo\n\
         postgres:\n\
         - name: app\n  driver: local\n  object_store:\n    destination_path: s3://{wal_bucket}/pg\n    server_name: main\n\
         \x20   endpoint: {endpoint}\n    region: {region}\n    access_key_id_file: {key}\n    secret_access_key_file: {secret}\n\
         \x20 connection:\n    host: 127.0.0.1\n    port: {port}\n    user: postgres\n\
         source_s3:\n  endpoint: {endpoint}\n\
         buckets:\n- name: uploads\n  bucket: {uploads}\n  retention: {{keep_last: 10}}\n\
         checkpoints:\n  retention: {{keep_last: 10}}\n\
         verification:\n  schedule: \"0 4 * * 0\"\n  timeout: 10min\n  scratch_dir: {dir}/scratch\n\
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


#[tokio::test(flavor = "multi_thread")]
async fn restore_brings_all_three_back_to_one_instant() {
    let Some(s3) = garage() else { return };
    if !pg::tools_present() {
        return;
    }
    let wal_bucket = s3.new_bucket("stack-wal").await;
    let uploads = s3.new_bucket("stack-up").await;
    let mut source = PgServer::start(&s3, &wal_bucket, "main").await;
    let work = pg::postgres_dir(&visage_dr::postgres::local::OsUser::lookup("postgres").unwrap());
    let policy = write_policy(work.path(), &s3, &wal_bucket, &uploads, source.port);
    let env = s3.env();

    // The checkpoint API writes into the policy's repository.
    let repo_url = RepoUrl::Local(work.path().join("repo"));
    let repo = Arc::new(Repository::open_or_init(&repo_url, RepoOptions::default()).await.unwrap());
    let tokens = TokenSet::parse("test tokens", &format!("{PUSH_TOKEN} push,read\n")).unwrap();
    let listen = ListenConfig { addr: "127.0.0.1:0".parse().unwrap(), tls: None, insecure_http: false };
    let api = server::start(repo, ServerConfig::new(tokens, 1 << 30, Duration::from_secs(10)), &listen).await.unwrap();
    let http = reqwest::Client::new();

    // T1: one image in the database, the bucket and a checkpoint; then the cycle backs up.
    let client = source.client().await;
    client
        .batch_execute("CREATE TABLE images (id int PRIMARY KEY, storage_key text NOT NULL); INSERT INTO images VALUES (1, 'u/1.jpg')")
        .await
        .unwrap();
    let photo1 = random_bytes(50_000, 1);
    s3.put(&uploads, "u/1.jpg", photo1.clone()).await;
    push_checkpoint(&http, api.addr, PUSH_TOKEN, "lora-a", "step-100", &random_bytes(300_000, 11)).await;
    let (code, stdout, stderr) = run(&["run", "--policy", &policy, "--all", "--except", "verification", "--json"], &env);
    assert_eq!(code, 0, "{stderr}\n{stdout}");

    // T2: a second image, one row whose object was never uploaded, and a new checkpoint.
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
    client.batch_execute("INSERT INTO images VALUES (4, 'u/3.jpg')").await.unwrap();
    s3.put(&uploads, "u/3.jpg", random_bytes(70_000, 3)).await;
    s3.put(&uploads, "u/1.jpg", random_bytes(50_000, 99)).await;
    push_checkpoint(&http, api.addr, PUSH_TOKEN, "lora-a", "step-300", &random_bytes(300_000, 13)).await;
    let (code, _, stderr) = run(&["run", "--policy", &policy, "--job", "bucket:uploads"], &env);
    assert_eq!(code, 0, "{stderr}");
    source.switch_and_wait_archived().await;
    drop(client);
    api.shutdown(Duration::from_secs(5)).await.unwrap();

    let restores = work.path().join("restores");
    let ckpt_dir = work.path().join("ckpt");
    let restores_arg = restores.to_str().unwrap().to_owned();
    let ckpt_arg = ckpt_dir.to_str().unwrap().to_owned();
    let args = |extra: &[&'static str]| -> Vec<String> {
        let mut a: Vec<String> = ["restore", "--policy", &policy, "--target-time", &target, "--suffix", "r1", "--json"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(["--databases-to".to_owned(), restores_arg.clone(), "--checkpoints-to".to_owned(), ckpt_arg.clone()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let call = |v: Vec<String>| {
        let parts: Vec<&str> = v.iter().map(String::as_str).collect();
        run(&parts, &env)
    };
    let restored_bucket = format!("{uploads}-r1");

    // The dry run prints the plan and creates nothing.
    let (code, stdout, stderr) = call(args(&["--dry-run"]));
    assert_eq!(code, 0, "{stderr}\n{stdout}");
    let dry: Value = serde_json::from_str(&stdout).unwrap();
    let plan = &dry["plan"];
    assert_eq!(plan["databases"][0]["name"], "app", "{plan}");
    assert!(plan["databases"][0]["base_backup"].as_str().unwrap().len() > 5, "{plan}");
    assert_eq!(plan["buckets"][0]["to_bucket"], restored_bucket.as_str(), "{plan}");
    assert!(plan["buckets"][0]["skew_seconds"].as_i64().unwrap() >= 1, "the snapshot precedes the target: {plan}");
    assert_eq!(plan["buckets"][0]["objects"], 2, "{plan}");
    assert_eq!(plan["checkpoints"][0]["step"], "step-200", "{plan}");
    assert!(!restores.exists(), "the dry run created {}", restores.display());
    assert!(!ckpt_dir.exists(), "the dry run created {}", ckpt_dir.display());
    assert!(!bucket_exists(&s3, &restored_bucket).await, "the dry run created a bucket");
    let postgres_for_restore = std::process::Command::new("pgrep").args(["-f", restores.to_str().unwrap()]).output().unwrap();
    assert!(postgres_for_restore.stdout.is_empty(), "the dry run started a process");

    // The restore: exit 1, because the database references an object the bucket never had.
    let (code, stdout, stderr) = call(args(&[]));
    let result: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    let marker: Value = serde_json::from_slice(&std::fs::read(restores.join("app-r1").join("visage-dr-restore.json")).unwrap()).unwrap();
    let _instance = RestoredPid(marker["pid"].as_u64().unwrap() as u32);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("1 object(s) that the restored database references"), "{stderr}");
    let outcome = &result["outcome"];
    for (component, ok, detail) in components(outcome) {
        assert!(ok, "{component}: {detail}");
    }
    let references = &outcome["references"][0];
    assert_eq!(references["keys_checked"], 3, "{references}");
    assert_eq!(references["missing"], serde_json::json!(["u/ghost.jpg"]), "{references}");
    assert!(outcome["switch_over"].as_array().unwrap().len() >= 3, "{outcome}");

    // Database rows: exactly those of T1 and T2.
    let restored = visage_dr::postgres::local::connect_socket(
        Path::new(marker["socket_dir"].as_str().unwrap()),
        marker["port"].as_u64().unwrap() as u16,
        marker["user"].as_str().unwrap(),
        marker["dbname"].as_str().unwrap(),
        None,
    )
    .await
    .unwrap();
    let rows = restored.query("SELECT storage_key FROM images ORDER BY id", &[]).await.unwrap();
    let keys: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(keys, vec!["u/1.jpg", "u/2.jpg", "u/ghost.jpg"]);

    // Bucket objects: byte-identical to T2, without the T3 changes.
    let contents = s3.contents(&restored_bucket).await;
    assert_eq!(contents.keys().collect::<Vec<_>>(), vec!["u/1.jpg", "u/2.jpg"]);
    assert_eq!(s3.get(&restored_bucket, "u/1.jpg").await, photo1);
    assert_eq!(s3.get(&restored_bucket, "u/2.jpg").await, photo2);

    // Checkpoints: the T2 one.
    assert_eq!(std::fs::read(ckpt_dir.join("lora-a").join("step-200")).unwrap(), ckpt2);
    assert!(!ckpt_dir.join("lora-a").join("step-300").exists());

    // An interrupted restore resumes: what is present is kept, what is missing is written.
    s3.delete(&restored_bucket, "u/2.jpg").await;
    std::fs::remove_file(ckpt_dir.join("lora-a").join("step-200")).unwrap();
    let (code, stdout, stderr) = call(args(&["--only", "buckets,checkpoints,postgres"]));
    assert_eq!(code, 1, "still the one missing reference: {stderr}");
    let again: Value = serde_json::from_str(&stdout).unwrap();
    let details = components(&again["outcome"]);
    assert!(details[0].2.contains("restored by an earlier run"), "{details:?}");
    assert_eq!(details[1].2, "1 object(s) written, 1 already present", "{details:?}");
    assert!(details[2].2.starts_with("written to"), "{details:?}");
    assert_eq!(s3.get(&restored_bucket, "u/2.jpg").await, photo2);
    assert_eq!(std::fs::read(ckpt_dir.join("lora-a").join("step-200")).unwrap(), ckpt2);

    // In place: the source bucket changed after the target, so the plan lists
    // what would be replaced and writes nothing without --overwrite.
    let in_place = |extra: &[&str]| {
        let mut a = vec!["restore", "--policy", &policy, "--target-time", &target, "--only", "buckets", "--in-place", "--json"];
        a.extend_from_slice(extra);
        run(&a, &env)
    };
    let (code, stdout, stderr) = in_place(&[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("add --overwrite"), "{stderr}");
    let plan: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(plan["plan"]["buckets"][0]["would_overwrite"], serde_json::json!(["u/1.jpg"]), "{plan}");
    assert_ne!(s3.get(&uploads, "u/1.jpg").await, photo1, "nothing was written");
    let (code, _, stderr) = in_place(&["--overwrite"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(s3.get(&uploads, "u/1.jpg").await, photo1);
    source.stop();
}

#[tokio::test]
async fn restore_rejects_bad_arguments_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = run(&["restore", "--target-time", "2026-01-15T10:00:00Z"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--policy"), "{stderr}");
    let policy = dir.path().join("p.yaml");
    std::fs::write(&policy, format!("repository:\n  url: file://{}/repo\n", dir.path().display())).unwrap();
    let policy = policy.to_str().unwrap();
    let (code, _, stderr) = run(&["restore", "--policy", policy, "--target-time", "2026-01-15T10:00:00Z", "--only", "postgres,disks"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("\"disks\""), "{stderr}");
    let (code, _, stderr) = run(&["restore", "--policy", policy, "--target-time", "2026-01-15T10:00:00Z", "--suffix", "Bad_Suffix"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("Bad_Suffix"), "{stderr}");
    let (code, _, stderr) = run(&["restore", "--policy", policy, "--target-time", "yesterday"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("yesterday"), "{stderr}");
    assert!(!dir.path().join("repo").exists(), "nothing was created");
}
