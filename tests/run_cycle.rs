//! `visage-dr run`: the jobs of a policy in one cycle, idempotent per slot.

mod common;

use common::*;

fn write_policy(dir: &tempfile::TempDir, server: &S3Server, buckets: &[(&str, &str)]) -> String {
    let repo = format!("file://{}", dir.path().join("repo").display());
    let mut text = format!("repository:\n  url: {repo}\nsource_s3:\n  endpoint: {}\nbuckets:\n", server.endpoint);
    for (name, bucket) in buckets {
        text.push_str(&format!(
            "  - name: {name}\n    bucket: {bucket}\n    schedule: \"0 * * * *\"\n    retention: {{keep_last: 2}}\n"
        ));
    }
    text.push_str("prune:\n  schedule: \"0 * * * *\"\n  gc_grace: 0s\n");
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn summary(stdout: &str) -> Vec<serde_json::Value> {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test]
async fn run_all_then_due_is_idempotent() {
    let server = match garage() {
        Some(s) => s,
        None => return,
    };
    let dir = tempfile::tempdir().unwrap();
    let src = server.new_bucket("run-src").await;
    server.put(&src, "photo.jpg", random_bytes(40_000, 1)).await;
    let policy = write_policy(&dir, &server, &[("uploads", &src)]);
    let env = server.env();

    // The first --due run takes this hour's slot; a retry of it runs nothing.
    let out = visage_dr(&["run", "--policy", &policy, "--json"], &env);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let first = summary(&stdout);
    let jobs: Vec<&str> = first.iter().map(|r| r["job"].as_str().unwrap()).collect();
    assert_eq!(jobs, vec!["bucket:uploads", "prune"], "fixed order");
    assert_eq!(first[0]["result"], "succeeded", "{stdout}");
    assert_eq!(first[1]["result"], "succeeded", "{stdout}");
    let snapshot = first[0]["ids"][0].as_str().unwrap().to_owned();
    assert!(snapshot.len() > 20, "{snapshot}");

    let out = visage_dr(&["run", "--policy", &policy, "--due", "--json"], &env);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let retry = summary(&stdout);
    if retry[0]["slot"] != first[0]["slot"] && retry[0]["result"] == "succeeded" {
        eprintln!("note: an hour boundary passed between the two runs, so the retry had a new slot");
        return;
    }
    assert_eq!(retry[0]["result"], "skipped", "{stdout}");
    assert!(retry[0]["detail"].as_str().unwrap().contains("already completed"), "{stdout}");
    assert_eq!(retry[1]["result"], "skipped", "{stdout}");

    // --all runs every job now, whatever the schedule.
    let out = visage_dr(&["run", "--policy", &policy, "--all", "--json"], &env);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let rows = summary(&stdout);
    assert_eq!(rows[0]["result"], "succeeded", "{stdout}");
    assert_eq!(rows[1]["result"], "succeeded", "{stdout}");

    let repo = format!("file://{}", dir.path().join("repo").display());
    let out = visage_dr(&["snapshots", "--repo", &repo, "--json"], &env);
    let snapshots: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snapshots.len(), 2, "the retry took no snapshot");

    // The human summary is a table naming the job.
    let out = visage_dr(&["run", "--policy", &policy, "--job", "bucket:uploads"], &env);
    let (stdout, _) = text(&out);
    assert!(stdout.starts_with("JOB"), "{stdout}");
    assert!(stdout.contains("bucket:uploads"), "{stdout}");
    assert!(!stdout.contains("prune"), "--job runs one job: {stdout}");
}

#[tokio::test]
async fn failed_job_fails_the_run_but_others_run() {
    let server = match garage() {
        Some(s) => s,
        None => return,
    };
    let dir = tempfile::tempdir().unwrap();
    let src = server.new_bucket("run-ok").await;
    server.put(&src, "a", b"a".to_vec()).await;
    let policy = write_policy(&dir, &server, &[("missing", "no-such-bucket-run"), ("ok", &src)]);
    let out = visage_dr(&["run", "--policy", &policy, "--all", "--json"], &server.env());
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let rows = summary(&stdout);
    assert_eq!(rows[0]["result"], "failed");
    assert!(rows[0]["detail"].as_str().unwrap().contains("no-such-bucket-run"), "{stdout}");
    assert_eq!(rows[1]["result"], "succeeded");
    assert!(stderr.contains("1 job(s) failed"), "{stderr}");

    let out = visage_dr(&["run", "--policy", &policy, "--job", "bucket:nope"], &server.env());
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bucket:ok"), "the error lists the jobs: {stderr}");
}

#[tokio::test]
async fn except_leaves_a_job_out_of_the_cycle() {
    let server = match garage() {
        Some(s) => s,
        None => return,
    };
    let dir = tempfile::tempdir().unwrap();
    let src = server.new_bucket("run-except").await;
    server.put(&src, "a", b"a".to_vec()).await;
    let policy = write_policy(&dir, &server, &[("uploads", &src)]);
    let out = visage_dr(&["run", "--policy", &policy, "--all", "--except", "prune", "--json"], &server.env());
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let jobs: Vec<String> = summary(&stdout).iter().map(|r| r["job"].as_str().unwrap().to_owned()).collect();
    assert_eq!(jobs, vec!["bucket:uploads"]);

    let out = visage_dr(&["run", "--policy", &policy, "--except", "verify"], &server.env());
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("\"verify\""), "{stderr}");
    assert!(stderr.contains("prune"), "the error lists the jobs: {stderr}");
}
