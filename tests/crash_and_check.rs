//! Crash safety and damage detection. A snapshot killed with SIGKILL leaves
//! no visible snapshot and a consistent repository. `check` finds and names
//! damaged packs, and the next snapshot repairs them.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use visage_dr::repository::check::{check, ReadData};
use visage_dr::repository::RepoOptions;
use visage_dr::sources::bucket::{self, SnapshotOptions};

fn cli_env(server: &S3Server, place: &RepoPlace) -> Vec<(&'static str, String)> {
    let env = server.env();
    // Repositories on S3 in these tests live on the same server as the source.
    let _ = place;
    env
}

#[tokio::test]
async fn sigkill_mid_snapshot_leaves_no_snapshot() {
    let server = match garage() {
        Some(s) => s,
        None => return,
    };
    for place in [
        RepoPlace::Local(tempfile::tempdir().unwrap()),
        RepoPlace::S3 { server: server.clone(), bucket: server.new_bucket("kill-repo").await, dir: tempfile::tempdir().unwrap() },
    ] {
        let label = place.name();
        let src = server.new_bucket("kill-src").await;
        let objects = 120;
        futures::future::join_all((0..objects).map(|i| {
            let (server, src) = (&server, &src);
            async move { server.put(src, &format!("img/{i:04}.png"), random_bytes(1024 * 1024, i)).await }
        }))
        .await;
        let repo = place.open().await;

        let mut args: Vec<String> = vec!["snapshot".into(), "bucket".into()];
        args.extend(place.cli_args());
        args.extend(
            ["--bucket", &src, "--pack-size", "1048576", "--index-flush-packs", "4", "--concurrency", "2", "--uploads", "1", "--json"]
                .iter()
                .map(|s| s.to_string()),
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_visage-dr"))
            .args(&args)
            .envs(cli_env(&server, &place))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill it once it has flushed at least one index file.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let indexed = repo.backend().list("index/").await.unwrap().len();
            if indexed >= 1 {
                break;
            }
            assert!(child.try_wait().unwrap().is_none(), "{label}: the snapshot finished before it could be killed");
            assert!(Instant::now() < deadline, "{label}: no index file appeared");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // SIGKILL, as the OOM killer or a node failure would.
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(repo.backend().list("snapshots/").await.unwrap().is_empty(), "{label}: a killed run left a snapshot");

        let mut check_args: Vec<String> = vec!["check".into(), "--read-data".into()];
        check_args.extend(place.cli_args());
        let refs: Vec<&str> = check_args.iter().map(String::as_str).collect();
        let out = visage_dr(&refs, &cli_env(&server, &place));
        assert_eq!(out.status.code(), Some(0), "{label}: check after the kill: {:?}", text(&out));

        // The rerun completes and reuses what the killed run indexed.
        let mut rerun = args.clone();
        // The killed run's lock is still there; it is shared, so it does not block.
        rerun.retain(|a| a != "--index-flush-packs" && a != "4");
        let refs: Vec<&str> = rerun.iter().map(String::as_str).collect();
        let out = visage_dr(&refs, &cli_env(&server, &place));
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{label}: {stderr}");
        let stats: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(stats["objects"], objects, "{label}");
        let new = stats["bytes_new"].as_u64().unwrap();
        assert!(new < objects * 1024 * 1024, "{label}: the rerun stored everything again ({new} bytes)");

        let out = visage_dr(&check_args.iter().map(String::as_str).collect::<Vec<_>>(), &cli_env(&server, &place));
        assert_eq!(out.status.code(), Some(0), "{label}: check after the rerun: {:?}", text(&out));
    }
}

#[tokio::test]
async fn check_names_damage_and_snapshot_repairs_it() {
    let server = match garage() {
        Some(s) => s,
        None => return,
    };
    for place in [
        RepoPlace::Local(tempfile::tempdir().unwrap()),
        RepoPlace::S3 { server: server.clone(), bucket: server.new_bucket("dmg-repo").await, dir: tempfile::tempdir().unwrap() },
    ] {
        let label = place.name();
        let dir = tempfile::tempdir().unwrap();
        let src = server.new_bucket("dmg-src").await;
        for i in 0..6u64 {
            server.put(&src, &format!("obj/{i}"), random_bytes(100_000, 100 + i)).await;
        }
        let options = RepoOptions { pack_size: 64 * 1024, ..place.options() };
        let repo = std::sync::Arc::new(
            visage_dr::repository::Repository::open_or_init(&place.url(), options.clone()).await.unwrap(),
        );
        let snapshot_opts = SnapshotOptions {
            bucket: src.clone(),
            prefix: String::new(),
            s3: server.overrides(dir.path()),
            concurrency: 1,
            tags: false,
            progress: false,
        };
        let stats = bucket::snapshot(repo.clone(), snapshot_opts.clone()).await.unwrap();
        let snap_id = stats.snapshot.to_string();
        let packs = repo.backend().list("data/").await.unwrap();
        assert!(packs.len() >= 4, "{label}: {} packs", packs.len());
        let report = check(&repo, ReadData::All).await.unwrap();
        assert!(report.ok(), "{label}: {:?}", report.problems);

        // Four kinds of damage, one pack each.
        let b = repo.backend();
        let (empty, truncated, missing, flipped) = (&packs[0].key, &packs[1].key, &packs[2].key, &packs[3].key);
        b.put(empty, Bytes::new()).await.unwrap();
        let data = b.get(truncated).await.unwrap();
        b.put(truncated, data.slice(..data.len() / 2)).await.unwrap();
        b.delete(missing).await.unwrap();
        let mut data = b.get(flipped).await.unwrap().to_vec();
        let middle = data.len() / 2;
        data[middle] ^= 0x01;
        b.put(flipped, Bytes::from(data)).await.unwrap();

        let fresh = || async { std::sync::Arc::new(visage_dr::repository::Repository::open(&place.url(), options.clone()).await.unwrap()) };
        let sizes_only = check(&fresh().await, ReadData::None).await.unwrap();
        let find = |report: &visage_dr::repository::check::CheckReport, key: &str, kind: &str| {
            report.problems.iter().any(|p| p.key.as_deref() == Some(key) && p.kind == kind && p.snapshots.iter().any(|s| s.to_string() == snap_id))
        };
        assert!(find(&sizes_only, empty, "size-mismatch"), "{label}: {:#?}", sizes_only.problems);
        assert!(find(&sizes_only, truncated, "size-mismatch"), "{label}: {:#?}", sizes_only.problems);
        assert!(find(&sizes_only, missing, "missing-pack"), "{label}: {:#?}", sizes_only.problems);
        assert!(!sizes_only.problems.iter().any(|p| p.key.as_deref() == Some(flipped.as_str())), "{label}: a size check cannot see a flipped bit");
        let empty_problem = sizes_only.problems.iter().find(|p| p.key.as_deref() == Some(empty.as_str())).unwrap();
        assert_eq!(empty_problem.actual_size, Some(0), "{label}");
        assert!(empty_problem.expected_size.unwrap() > 0, "{label}");

        // With read-data the flipped bit is found, with both hashes named.
        let mut args: Vec<String> = vec!["check".into(), "--read-data".into()];
        args.extend(place.cli_args());
        let out = visage_dr(&args.iter().map(String::as_str).collect::<Vec<_>>(), &server.env());
        let (stdout, _) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{label}: {stdout}");
        for key in [empty, truncated, missing, flipped] {
            assert!(stdout.contains(key.as_str()), "{label}: {key} not named in {stdout}");
        }
        assert!(stdout.contains("bad-content"), "{label}: {stdout}");
        assert!(stdout.contains("expected sha256"), "{label}: {stdout}");
        assert!(stdout.contains(&snap_id), "{label}: {stdout}");

        // The next snapshot meets the same content and stores it again.
        assert_eq!(repo.backend().list("damaged/").await.unwrap().len(), 4, "{label}: one record per damaged copy");
        let repaired = bucket::snapshot(fresh().await, snapshot_opts.clone()).await.unwrap();
        assert!(repaired.objects_read >= 1, "{label}");
        assert!(repaired.blobs_new >= 1, "{label}");
        let after = check(&fresh().await, ReadData::All).await.unwrap();
        assert!(after.ok(), "{label}: {:#?}", after.problems);
        // Each damaged pack was written again under its own id with verified
        // bytes, which voids its damage record.
        assert!(repo.backend().list("damaged/").await.unwrap().is_empty(), "{label}");

        // Both snapshots restore byte-identical objects.
        let before = server.contents(&src).await;
        for id in [&stats.snapshot, &repaired.snapshot] {
            let repo = fresh().await;
            let m = repo.load_manifest(id).await.unwrap();
            let dst = server.new_bucket("dmg-dst").await;
            let mut o = restore_options(&server, &dir, &dst);
            o.concurrency = 2;
            bucket::restore(repo, &m, o).await.unwrap();
            assert_eq!(server.contents(&dst).await, before, "{label}: restore of {id}");
        }
    }
}

#[tokio::test]
async fn cli_lists_snapshots_objects_and_diffs() {
    let server = match garage() {
        Some(s) => s,
        None => return,
    };
    let repo_dir = tempfile::tempdir().unwrap();
    let repo = format!("file://{}", repo_dir.path().join("repo").display());
    let src = server.new_bucket("cli-src").await;
    server.put(&src, "run 1/step+100.pt", b"one".to_vec()).await;
    server.put(&src, "keep", b"same".to_vec()).await;
    server.put(&src, "gone", b"bye".to_vec()).await;
    let env = server.env();
    let snap = |env: &Vec<(&'static str, String)>| {
        let out = visage_dr(&["snapshot", "bucket", "--repo", &repo, "--bucket", &src, "--json"], env);
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["snapshot"].as_str().unwrap().to_owned()
    };
    let a = snap(&env);
    server.put(&src, "run 1/step+100.pt", b"changed".to_vec()).await;
    server.delete(&src, "gone").await;
    server.put(&src, "new", b"hello".to_vec()).await;
    let b = snap(&env);

    let out = visage_dr(&["snapshots", "--repo", &repo, "--json"], &env);
    assert_eq!(out.status.code(), Some(0));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.len(), 2);
    for s in &list {
        for field in ["id", "source", "started", "time", "objects", "bytes", "status"] {
            assert!(s.get(field).is_some(), "{field} missing in {s}");
        }
        assert_eq!(s["source"], format!("s3:{src}"));
        assert_eq!(s["status"], "complete");
        let time = s["time"].as_str().unwrap();
        assert!(time.ends_with('Z'), "{time}");
        assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
    }
    assert_eq!(list[0]["id"], a);
    assert_eq!(list[1]["objects"], 3);

    let out = visage_dr(&["snapshots", "--repo", &repo], &env);
    let (table, _) = text(&out);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(&a), "{table}");
    assert!(table.contains("complete"), "{table}");

    let out = visage_dr(&["ls", "--repo", &repo, &b, "--prefix", "run 1/"], &env);
    let (listing, _) = text(&out);
    assert!(listing.contains("run 1/step+100.pt"), "{listing}");
    assert!(!listing.contains("keep"), "{listing}");

    let out = visage_dr(&["diff", "--repo", &repo, &a, &b, "--json"], &env);
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["added"], serde_json::json!(["new"]));
    assert_eq!(d["changed"], serde_json::json!(["run 1/step+100.pt"]));
    assert_eq!(d["removed"], serde_json::json!(["gone"]));

    let out = visage_dr(&["ls", "--repo", &repo, "20990101T000000Z-00000000"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("not found"), "{:?}", text(&out));

    // Restore by target time through the CLI, naming the skew.
    let dst = server.new_bucket("cli-dst").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let out = visage_dr(&["restore", "bucket", "--repo", &repo, "--target-time", &now, "--to-bucket", &dst], &env);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(&b), "{stderr}");
    assert!(stderr.contains("before the target"), "{stderr}");
    assert!(stdout.contains("restored 3 of 3 objects"), "{stdout}");
    let out = visage_dr(&["restore", "bucket", "--repo", &repo, "--target-time", "2026-01-15 10:00:00", "--to-bucket", &dst], &env);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
}

#[tokio::test]
async fn unlock_removes_stale_locks_and_names_them() {
    let repo_dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", repo_dir.path().join("repo").display());
    let out = visage_dr(&["repo", "init", "--repo", &url], &[]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let old = chrono::Utc::now() - chrono::Duration::hours(2);
    let lock = serde_json::json!({
        "id": visage_dr::id::LockId::new(old).to_string(), "kind": "exclusive", "purpose": "prune",
        "hostname": "visage-dr-29471040-abcde", "pid": 1, "created": old, "refreshed": old,
    });
    let path = repo_dir.path().join("repo/locks");
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(path.join(lock["id"].as_str().unwrap()), lock.to_string()).unwrap();
    let out = visage_dr(&["unlock", "--repo", &url], &[]);
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout.contains("visage-dr-29471040-abcde"), "{stdout}");
    assert!(stdout.contains("prune"), "{stdout}");
    assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0);
}
