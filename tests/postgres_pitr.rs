//! Point-in-time recovery with the `local` driver against real PostgreSQL 15, real
//! barman-cloud and Garage: backup, the archive's catalogue and window, rejected targets,
//! a restore to an instant between two commits, and the source archive left untouched.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use common::pg::{self, PgServer};
use common::*;
use serde_json::Value;
use visage_dr::postgres::records::{list_postgres_records, RunStatus};
use visage_dr::repository::{RepoOptions, RepoUrl, Repository};

/// Stops a restored instance by its PID when the test ends, passed or not.
struct RestoredPid(u32);

impl Drop for RestoredPid {
    fn drop(&mut self) {
        pg::stop_postgres_pid(self.0);
    }
}

fn setup() -> Option<S3Server> {
    let server = garage()?;
    pg::tools_present().then_some(server)
}

/// Writes a policy with one local database `app` whose archive is `s3://<bucket>/pg/main`.
fn write_policy(dir: &Path, s3: &S3Server, bucket: &str, port: u16) -> PathBuf {
    let (key_file, secret_file) = write_key_files(dir, s3);
    let policy = format!(
        "repository:\n  url: file://{}/repo\n\
         postgres:\n\
         - name: app\n  driver: local\n  object_store:\n    destination_path: s3://{bucket}/pg\n    server_name: main\n\
         \x20   endpoint: {}\n    region: {}\n    access_key_id_file: {}\n    secret_access_key_file: {}\n\
         \x20 connection:\n    host: 127.0.0.1\n    port: {port}\n    user: postgres\n",
        dir.display(),
        s3.endpoint,
        s3.region,
        key_file.display(),
        secret_file.display()
    );
    let path = dir.join("policy.yaml");
    std::fs::write(&path, policy).unwrap();
    path
}

/// Keys and sizes of every object under `prefix`.
async fn list_prefix(s3: &S3Server, bucket: &str, prefix: &str) -> BTreeMap<String, i64> {
    let page = s3.client().list_objects_v2().bucket(bucket).prefix(prefix).send().await.unwrap();
    assert_ne!(page.is_truncated(), Some(true), "listing of {prefix} is longer than one page");
    page.contents().iter().map(|o| (o.key().unwrap().to_owned(), o.size().unwrap_or(0))).collect()
}

fn run(args: &[&str]) -> (i32, String, String) {
    run_visage_dr(args, &[])
}

fn window_json(policy: &Path) -> Value {
    let (code, stdout, stderr) = run(&["postgres", "window", "--policy", policy.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "postgres window failed: {stderr}");
    let reports: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(reports.as_array().unwrap().len(), 1, "{stdout}");
    reports[0].clone()
}

fn time_of(value: &Value) -> DateTime<Utc> {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{value} is not a time: {e}"))
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}


async fn take_backup(policy: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["backup", "postgres", "--policy", policy.to_str().unwrap(), "--name", "app", "--json"];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = run(&args);
    assert_eq!(code, 0, "backup postgres failed: {stderr}\n{stdout}");
    serde_json::from_str(&stdout).unwrap()
}

#[tokio::test]
async fn pitr_restores_between_commits() {
    let Some(s3) = setup() else { return };
    let bucket = s3.new_bucket("pg-pitr").await;
    let mut source = PgServer::start(&s3, &bucket, "main").await;
    let work = pg::postgres_dir(&visage_dr::postgres::local::OsUser::lookup("postgres").unwrap());
    let policy = write_policy(work.path(), &s3, &bucket, source.port);
    let repo_dir = work.path().join("repo");
    let repo_url = format!("file://{}", repo_dir.display());

    let client = source.client().await;
    client.batch_execute("CREATE TABLE t (id text PRIMARY KEY); INSERT INTO t VALUES ('A')").await.unwrap();
    let record = take_backup(&policy, &["--repo", &repo_url]).await;
    assert_eq!(record["status"], "complete", "{record}");
    let backup_id = record["backup_id"].as_str().expect("the record names the backup id").to_owned();

    client.batch_execute("INSERT INTO t VALUES ('B')").await.unwrap();
    let target = pg::server_now(&client).await;
    client.batch_execute("INSERT INTO t VALUES ('C')").await.unwrap();
    source.switch_and_wait_archived().await;
    drop(client);
    // Stopped, so that nothing but the restore could change the archive from here on.
    source.stop();

    let repo = Repository::open(&RepoUrl::Local(repo_dir.clone()), RepoOptions::default()).await.unwrap();
    let records = list_postgres_records(&repo, "app").await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].backup_id.as_deref(), Some(backup_id.as_str()));
    assert_eq!(records[0].status, RunStatus::Complete);
    assert!(records[0].end_wal.is_some());

    let window = window_json(&policy);
    assert_eq!(window["backups"][0]["id"], backup_id.as_str(), "{window}");
    assert_eq!(window["backups"][0]["usable"], true, "{window}");
    assert!(window["gaps"].as_array().unwrap().is_empty(), "{window}");
    assert!(time_of(&window["window"]["until"]) >= time_of(&Value::String(target.clone())), "{window}");

    let server_prefix = "pg/main/";
    let before = list_prefix(&s3, &bucket, server_prefix).await;
    let into = work.path().join("restored");
    let (code, stdout, stderr) = run(&[
        "restore", "postgres", "--policy", policy.to_str().unwrap(), "--name", "app",
        "--target-time", &target, "--into", into.to_str().unwrap(), "--json",
    ]);
    assert_eq!(code, 0, "restore failed: {stderr}\n{stdout}");
    assert!(stderr.contains("target time: "), "{stderr}");
    let output: Value = serde_json::from_str(&stdout).unwrap();
    let pid = output["instance"]["pid"].as_u64().unwrap() as u32;
    let _restored = RestoredPid(pid);
    let port = output["instance"]["port"].as_u64().unwrap() as u16;
    assert_eq!(output["plan"]["backup"]["id"], backup_id.as_str(), "{stdout}");

    let restored = pg::connect(port).await.unwrap();
    let rows = restored.query("SELECT id FROM t ORDER BY id", &[]).await.unwrap();
    let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, ["A", "B"]);
    let in_recovery: bool = restored.query_one("SELECT pg_is_in_recovery()", &[]).await.unwrap().get(0);
    assert!(!in_recovery);
    let archive_mode: String = restored.query_one("SHOW archive_mode", &[]).await.unwrap().get(0);
    assert_eq!(archive_mode, "off");

    // Force WAL on the new timeline; with archiving on it would reach the source's prefix.
    restored.batch_execute("INSERT INTO t VALUES ('D'); SELECT pg_switch_wal()").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let after = list_prefix(&s3, &bucket, server_prefix).await;
    assert_eq!(before, after, "the restore changed the source's archive");
    assert!(!after.keys().any(|k| k.contains("00000002")), "{after:?}");
}

#[tokio::test]
async fn window_gaps_and_rejected_targets() {
    let Some(s3) = setup() else { return };
    let bucket = s3.new_bucket("pg-window").await;
    let mut source = PgServer::start(&s3, &bucket, "main").await;
    let work = pg::postgres_dir(&visage_dr::postgres::local::OsUser::lookup("postgres").unwrap());
    let policy = write_policy(work.path(), &s3, &bucket, source.port);
    let policy_arg = policy.to_str().unwrap();

    let client = source.client().await;
    client.batch_execute("CREATE TABLE t (id text PRIMARY KEY); INSERT INTO t VALUES ('A')").await.unwrap();
    let record = take_backup(&policy, &[]).await;
    let backup_id = record["backup_id"].as_str().unwrap().to_owned();
    for id in ["B", "C", "D"] {
        client.execute("INSERT INTO t VALUES ($1)", &[&id]).await.unwrap();
        source.switch_and_wait_archived().await;
    }
    drop(client);
    // Stopped, so that the last archived segment stays the last one.
    source.stop();

    let window = window_json(&policy);
    let backup = &window["backups"][0];
    assert_eq!(backup["id"], backup_id.as_str(), "{window}");
    assert_eq!(backup["usable"], true, "{window}");
    assert!(window["gaps"].as_array().unwrap().is_empty(), "{window}");
    let end_time = time_of(&backup["end_time"]);
    let begin_time = time_of(&backup["begin_time"]);
    let last_wal_time = time_of(&window["last_wal"]["estimated_time"]);
    assert_eq!(time_of(&window["window"]["after"]), end_time, "{window}");

    // A dry run inside the window plans and creates nothing.
    let dry_into = work.path().join("dry");
    let inside = rfc3339(end_time + Duration::milliseconds(1));
    let (code, stdout, stderr) = run(&[
        "restore", "postgres", "--policy", policy_arg, "--name", "app", "--target-time", &inside,
        "--into", dry_into.to_str().unwrap(), "--dry-run",
    ]);
    assert_eq!(code, 0, "dry run failed: {stderr}");
    assert!(stdout.contains(&backup_id), "{stdout}");
    assert!(stdout.contains("archive_mode = off"), "{stdout}");
    assert!(stdout.contains("recovery_target_time = '"), "{stdout}");
    assert!(stdout.contains("barman-cloud-wal-restore --endpoint-url"), "{stdout}");
    assert!(!dry_into.exists());

    // A PostgreSQL that exits during start-up is reported with its own reason.
    let holder = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let busy_port = holder.local_addr().unwrap().port().to_string();
    let busy_into = work.path().join("busy");
    let (code, _, stderr) = run(&[
        "restore", "postgres", "--policy", policy_arg, "--name", "app", "--target-time", &inside,
        "--into", busy_into.to_str().unwrap(), "--port", &busy_port,
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("PostgreSQL exited during recovery"), "{stderr}");
    assert!(stderr.contains("could not create any TCP/IP sockets"), "{stderr}");
    drop(holder);

    // Targets rejected before any directory is created or process started.
    let rejected = |name: &str, target: String, expected: &'static str| {
        let into = work.path().join(name);
        let (code, _, stderr) = run(&[
            "restore", "postgres", "--policy", policy_arg, "--name", "app", "--target-time", &target,
            "--into", into.to_str().unwrap(),
        ]);
        assert_eq!(code, 2, "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(!into.exists(), "{name}: {} was created", into.display());
    };
    rejected("before-backup", rfc3339(begin_time), "is not after the end of the first usable base backup");
    rejected("future", rfc3339(Utc::now() + Duration::hours(1)), "in the future");
    let after_archive = last_wal_time + Duration::seconds(1);
    while Utc::now() <= after_archive {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    rejected("after-archive", rfc3339(after_archive), "after the last archived WAL segment");

    // Delete the segment after the backup's end WAL: a gap, and targets beyond it fail.
    let end_wal = backup["end_wal"].as_str().unwrap();
    let segments: Vec<String> = list_prefix(&s3, &bucket, "pg/main/wals/")
        .await
        .into_keys()
        .filter(|k| k.rsplit('/').next().is_some_and(|name| name.len() == 24 && name > end_wal))
        .collect();
    assert!(segments.len() >= 3, "{segments:?}");
    s3.delete(&bucket, &segments[0]).await;
    let missing = segments[0].rsplit('/').next().unwrap().to_owned();

    let window = window_json(&policy);
    let gaps = window["gaps"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{window}");
    assert_eq!(gaps[0]["first_missing"], missing.as_str(), "{window}");
    rejected("beyond-gap", rfc3339(last_wal_time), "is missing from the archive");

    // A bucket that does not exist is named in the error.
    let missing_bucket = format!("{bucket}-absent");
    let other_policy = std::fs::read_to_string(&policy).unwrap().replace(&bucket, &missing_bucket);
    std::fs::write(&policy, other_policy).unwrap();
    let (code, _, stderr) = run(&["postgres", "window", "--policy", policy_arg]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(&missing_bucket), "{stderr}");
    assert!(stderr.contains("barman-cloud does not create buckets"), "{stderr}");
}
