//! The manual restore procedure of docs/design.md, run as written with curl,
//! jq and zstd against a repository on Garage.

mod common;

use common::*;
use visage_dr::sources::bucket::{self, SnapshotOptions};

/// Returns the first `sh` block after the manual-restore heading of the design doc.
fn documented_procedure() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/design.md")).unwrap();
    let section = doc.split("## Manual restore without visage-dr").nth(1).expect("the design doc has the manual-restore section");
    let start = section.find("```sh\n").expect("the section has an sh block") + "```sh\n".len();
    let end = section[start..].find("```").unwrap() + start;
    section[start..end].to_owned()
}

/// Runs the documented procedure for one object of a snapshot.
fn run_procedure(script: &std::path::Path, server: &S3Server, repo_bucket: &str, snapshot: &str, key: &str, file: &std::path::Path) -> std::process::Output {
    std::process::Command::new("bash")
        .arg(script)
        .env("ENDPOINT", &server.endpoint)
        .env("BUCKET", repo_bucket)
        .env("PREFIX", "dr")
        .env("AWS_ACCESS_KEY_ID", &server.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &server.secret_key)
        .env("AWS_REGION", &server.region)
        .env("SNAP", snapshot)
        .env("KEY", key)
        .env("FILE", file)
        .output()
        .unwrap()
}

#[tokio::test]
async fn documented_manual_restore_works() {
    let server = match garage() {
        Some(s) => s,
        None => return,
    };
    for tool in ["curl", "jq", "zstd", "sha256sum"] {
        assert!(
            std::process::Command::new("sh").arg("-c").arg(format!("command -v {tool}")).status().unwrap().success(),
            "{tool} is needed by the manual procedure"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let src = server.new_bucket("manual-src").await;
    let objects = [
        ("run 1/step+100.pt", random_bytes(3 * 1024 * 1024 + 11, 1)),
        ("ünï/ñ.bin", random_bytes(70_000, 2)),
        ("empty", Vec::new()),
    ];
    for (k, v) in &objects {
        server.put(&src, k, v.clone()).await;
    }
    let repo_bucket = server.new_bucket("manual-repo").await;
    let place = RepoPlace::S3 { server: server.clone(), bucket: repo_bucket.clone(), dir: tempfile::tempdir().unwrap() };
    let repo = place.open().await;
    let stats = bucket::snapshot(
        repo.clone(),
        SnapshotOptions {
            bucket: src.clone(),
            prefix: String::new(),
            s3: server.overrides(dir.path()),
            concurrency: 4,
            tags: false,
            progress: false,
        },
    )
    .await
    .unwrap();
    let m = repo.load_manifest(&stats.snapshot).await.unwrap();
    let big = m.entries.iter().find(|e| e.key == "run 1/step+100.pt").unwrap();
    assert!(big.chunks.len() >= 2, "the large object spans several chunks");

    let script = dir.path().join("manual-restore.sh");
    std::fs::write(&script, documented_procedure()).unwrap();
    for (key, content) in &objects {
        let file = dir.path().join("restored.bin");
        let out = run_procedure(&script, &server, &repo_bucket, &stats.snapshot.to_string(), key, &file);
        assert!(out.status.success(), "{key}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(&std::fs::read(&file).unwrap(), content, "{key}");
    }

    // A bit flipped in a pack makes the procedure fail on the hash check.
    let pack = repo.backend().list("data/").await.unwrap().into_iter().max_by_key(|o| o.size).unwrap();
    let mut data = repo.backend().get(&pack.key).await.unwrap().to_vec();
    let n = data.len();
    data[n - 10] ^= 0x40;
    repo.backend().put(&pack.key, data.into()).await.unwrap();
    let mut failures = 0;
    for (key, _) in &objects {
        let out = run_procedure(&script, &server, &repo_bucket, &stats.snapshot.to_string(), key, &dir.path().join("restored.bin"));
        if !out.status.success() {
            failures += 1;
        }
    }
    assert!(failures >= 1, "a damaged pack went unnoticed by the manual procedure");
}
