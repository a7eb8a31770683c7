//! Prune and garbage collection on real repositories: freed space, guard
//! rails, and a prune that runs while a snapshot is being written.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use common::*;
use visage_dr::id::SnapshotId;
use visage_dr::prune::{self, PruneSettings};
use visage_dr::repository::check::{check, ReadData};
use visage_dr::repository::gc::collect_garbage;
use visage_dr::repository::lock::LockKind;
use visage_dr::repository::manifest::{SnapshotKind, SnapshotStatus, SnapshotSummary};
use visage_dr::repository::{RepoOptions, Repository};
use visage_dr::retention::RetentionRules;
use visage_dr::sources::bucket::{self, SnapshotOptions};

fn opts(server: &S3Server, dir: &tempfile::TempDir, bucket: &str) -> SnapshotOptions {
    SnapshotOptions { bucket: bucket.into(), prefix: String::new(), s3: server.overrides(dir.path()), concurrency: 4, tags: false, progress: false }
}

#[tokio::test]
async fn gc_frees_forgotten_data_and_keeps_the_rest() {
    let server = match garage() {
        Some(s) => s,
        None => return,
    };
    for place in repo_places("gc").await {
        let label = place.name();
        let dir = tempfile::tempdir().unwrap();
        let src = server.new_bucket("gc-src").await;
        for i in 0..8u64 {
            server.put(&src, &format!("f/{i}"), random_bytes(200_000, i)).await;
        }
        let options = RepoOptions { pack_size: 300_000, ..place.options() };
        let repo = Arc::new(Repository::open_or_init(&place.url(), options.clone()).await.unwrap());
        let first = bucket::snapshot(repo.clone(), opts(&server, &dir, &src)).await.unwrap();
        // Replace half of the objects, so some packs become partly used.
        for i in 0..4u64 {
            server.put(&src, &format!("f/{i}"), random_bytes(200_000, 1000 + i)).await;
        }
        let second = bucket::snapshot(repo.clone(), opts(&server, &dir, &src)).await.unwrap();
        let before = server.contents(&src).await;

        let forgotten = prune::forget(&repo, &[first.snapshot.clone()], false).await.unwrap();
        assert_eq!(forgotten, vec![first.snapshot.clone()]);
        let err = prune::forget(&repo, &[second.snapshot.clone()], false).await.unwrap_err();
        assert!(err.to_string().contains("--force"), "{label}: {err}");

        // Everything is younger than the default grace period: nothing goes.
        let lock = repo.lock(LockKind::Exclusive, "gc test").await.unwrap();
        let young = collect_garbage(&repo, &lock, visage_dr::repository::gc::DEFAULT_GRACE, false).await.unwrap();
        assert_eq!(young.packs_deleted + young.packs_rewritten, 0, "{label}: {young:?}");
        assert!(young.young_packs_kept > 0, "{label}");

        let done = collect_garbage(&repo, &lock, Duration::ZERO, false).await.unwrap();
        lock.release().await.unwrap();
        assert_eq!(done.blobs_freed, 4, "{label}: {done:?}");
        assert!(done.bytes_freed >= 4 * 190_000, "{label}: {done:?}");
        assert_eq!(repo.backend().list("index/").await.unwrap().len(), 1, "{label}: one consolidated index");

        let fresh = Arc::new(Repository::open(&place.url(), options.clone()).await.unwrap());
        let report = check(&fresh, ReadData::All).await.unwrap();
        assert!(report.ok(), "{label}: {:?}", report.problems);
        assert_eq!(report.unindexed_packs, 0, "{label}");
        let m = fresh.load_manifest(&second.snapshot).await.unwrap();
        let dst = server.new_bucket("gc-dst").await;
        bucket::restore(fresh.clone(), &m, restore_options(&server, &dir, &dst)).await.unwrap();
        assert_eq!(server.contents(&dst).await, before, "{label}");
    }
}

#[tokio::test]
async fn prune_during_a_snapshot_loses_nothing() {
    let server = match garage() {
        Some(s) => s,
        None => return,
    };
    let place = RepoPlace::Local(tempfile::tempdir().unwrap());
    let src = server.new_bucket("race-src").await;
    futures::future::join_all((0..80u64).map(|i| {
        let (server, src) = (&server, &src);
        async move { server.put(src, &format!("img/{i:03}"), random_bytes(1024 * 1024, i)).await }
    }))
    .await;
    let repo = place.open().await;
    let mut args: Vec<String> = vec!["snapshot".into(), "bucket".into()];
    args.extend(place.cli_args());
    args.extend(["--bucket", &src, "--pack-size", "1048576", "--concurrency", "2", "--uploads", "1"].iter().map(|s| s.to_string()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_visage-dr"))
        .args(&args)
        .envs(server.env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while repo.backend().list("data/").await.unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "the snapshot did not start uploading");
        assert!(child.try_wait().unwrap().is_none(), "the snapshot ended before it uploaded three packs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The exclusive lock is refused while the snapshot holds its shared lock.
    let err = repo.lock(LockKind::Exclusive, "prune").await.err().expect("prune must not run beside a snapshot");
    assert!(err.to_string().contains("snapshot"), "{err}");

    // Even when the snapshot's lock is removed (as if it had gone stale), the
    // grace period keeps garbage collection away from its fresh packs.
    for l in repo.backend().list("locks/").await.unwrap() {
        repo.backend().delete(&l.key).await.unwrap();
    }
    let lock = repo.lock(LockKind::Exclusive, "prune").await.unwrap();
    let gc = collect_garbage(&repo, &lock, visage_dr::repository::gc::DEFAULT_GRACE, false).await.unwrap();
    lock.release().await.unwrap();
    assert_eq!(gc.packs_deleted + gc.unindexed_packs_deleted + gc.packs_rewritten, 0, "{gc:?}");

    let status = child.wait().unwrap();
    assert!(status.success());
    let fresh = place.open().await;
    let report = check(&fresh, ReadData::All).await.unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(report.snapshots, 1);
}

fn summary(source: &str, t: chrono::DateTime<Utc>, ok: bool) -> SnapshotSummary {
    SnapshotSummary {
        id: SnapshotId::new(t),
        kind: SnapshotKind::Bucket,
        source: source.into(),
        started: t,
        time: t,
        objects: 1,
        bytes: 1,
        status: if ok { SnapshotStatus::Complete } else { SnapshotStatus::Failed },
        parent: None,
        error: None,
        labels: Default::default(),
    }
}

#[test]
fn plan_groups_by_source_and_applies_guard_rails() {
    let days: Vec<_> = (11..=15).map(|d| Utc.with_ymd_and_hms(2026, 6, d, 3, 43, 0).unwrap()).collect();
    let mut snaps: Vec<SnapshotSummary> = days.iter().map(|t| summary("s3:visage-uploads", *t, true)).collect();
    snaps.push(summary("s3:visage-uploads", Utc.with_ymd_and_hms(2026, 6, 15, 9, 0, 0).unwrap(), false));
    snaps.push(summary("s3:other", days[0], true));
    let rules = RetentionRules { keep_daily: Some(2), ..Default::default() };
    let rules_for = |s: &str| (s == "s3:visage-uploads").then(|| rules.clone());
    let now = Utc.with_ymd_and_hms(2026, 6, 15, 12, 0, 0).unwrap();
    let settings = PruneSettings {
        rules_for: &rules_for,
        tz: chrono_tz::UTC,
        now,
        max_snapshot_age: Some(chrono::Duration::days(3)),
        force: false,
    };
    // The oldest one passed verification and is kept for that reason.
    let verified: HashSet<SnapshotId> = [snaps[0].id.clone()].into();
    let plan = prune::plan(&snaps, &verified, &settings).unwrap();
    let uploads = plan.sources.iter().find(|s| s.source == "s3:visage-uploads").unwrap();
    let kept: Vec<_> = uploads.snapshots.iter().filter(|p| p.keep).map(|p| p.time).collect();
    assert_eq!(kept, vec![days[0], days[3], days[4]]);
    assert!(uploads.snapshots[0].reasons.iter().any(|r| r == "newest verified"), "{:?}", uploads.snapshots[0].reasons);
    assert!(uploads.snapshots.iter().any(|p| !p.keep && p.status == SnapshotStatus::Failed && p.reasons == vec!["failed".to_owned()]));
    let other = plan.sources.iter().find(|s| s.source == "s3:other").unwrap();
    assert!(other.skipped.is_some() && other.snapshots.iter().all(|p| p.keep));

    // Ten days later without a new good snapshot, pruning is refused.
    let late = PruneSettings { now: now + chrono::Duration::days(10), ..settings };
    let plan = prune::plan(&snaps, &HashSet::new(), &late).unwrap();
    let uploads = plan.sources.iter().find(|s| s.source == "s3:visage-uploads").unwrap();
    assert!(uploads.skipped.as_deref().unwrap().contains("--force"));
    assert!(plan.removals().is_empty());
    let forced = PruneSettings { force: true, ..late };
    assert_eq!(prune::plan(&snaps, &HashSet::new(), &forced).unwrap().removals().len(), 4);
}

#[tokio::test]
async fn prune_command_plans_then_deletes() {
    let server = match garage() {
        Some(s) => s,
        None => return,
    };
    let dir = tempfile::tempdir().unwrap();
    let repo_url = format!("file://{}", dir.path().join("repo").display());
    let src = server.new_bucket("prune-cli").await;
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "repository:\n  url: {repo_url}\nsource_s3:\n  endpoint: {}\nbuckets:\n  - name: uploads\n    bucket: {src}\n    schedule: \"0 */6 * * *\"\n    retention:\n      keep_last: 1\nprune:\n  schedule: \"30 3 * * *\"\n  gc_grace: 0s\n",
            server.endpoint
        ),
    )
    .unwrap();
    let env = server.env();
    for i in 0..3u64 {
        server.put(&src, "photo.jpg", random_bytes(50_000, i)).await;
        let out = visage_dr(&["snapshot", "bucket", "--repo", &repo_url, "--bucket", &src], &env);
        assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    }
    let policy_arg = policy.to_str().unwrap();
    let out = visage_dr(&["prune", "--policy", policy_arg], &env);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout.matches("remove").count(), 2 + 1, "{stdout}");
    assert!(stdout.contains("nothing was deleted"), "{stdout}");
    let listed = |env: &Vec<(&'static str, String)>| {
        let out = visage_dr(&["snapshots", "--repo", &repo_url, "--json"], env);
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap().len()
    };
    assert_eq!(listed(&env), 3);

    let out = visage_dr(&["prune", "--policy", policy_arg, "--confirm", "--json"], &env);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let result: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(result["result"]["snapshots_removed"].as_array().unwrap().len(), 2);
    assert_eq!(result["result"]["gc"]["blobs_freed"], 2);
    assert_eq!(listed(&env), 1);
    let out = visage_dr(&["check", "--repo", &repo_url, "--read-data"], &env);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));

    // An invalid policy is a configuration error.
    std::fs::write(&policy, "repository:\n  url: file:///tmp/x\nbuckets:\n  - name: a\n    bucket: b-b-b\n    retention: {keep_dayly: 2}\n").unwrap();
    let out = visage_dr(&["prune", "--policy", policy_arg], &env);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("keep_daily"), "{stderr}");
    assert!(stderr.contains(":6:"), "{stderr}");
}

#[test]
fn retention_simulate_prints_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.yaml");
    std::fs::write(
        &policy,
        "repository:\n  url: file:///var/lib/visage-dr/repo\nbuckets:\n  - name: uploads\n    bucket: visage-uploads\n    retention: {keep_daily: 2}\n",
    )
    .unwrap();
    let list = dir.path().join("snaps.txt");
    std::fs::write(&list, (11..=15).map(|d| format!("2026-06-{d}T03:43:00Z\n")).collect::<String>()).unwrap();
    let out = visage_dr(
        &["retention", "simulate", "--policy", policy.to_str().unwrap(), "--source", "s3:visage-uploads", "--snapshots", list.to_str().unwrap(), "--json"],
        &[],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    let actions: Vec<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, vec!["remove", "remove", "remove", "keep", "keep"]);
    assert_eq!(rows[4]["reasons"][0], "daily 2026-06-15");
    assert_eq!(rows[0]["time"], "2026-06-11T03:43:00Z");
}

#[test]
fn checkpoint_retention_keeps_final_ones() {
    let t0 = Utc.with_ymd_and_hms(2026, 6, 1, 10, 0, 0).unwrap();
    let mut snaps: Vec<SnapshotSummary> = (0..6)
        .map(|i| {
            let mut s = summary("checkpoints:lora-alice", t0 + chrono::Duration::minutes(10 * i), true);
            s.kind = SnapshotKind::Checkpoint;
            s
        })
        .collect();
    snaps[1].labels.insert("final".into(), "true".into());
    let rules = RetentionRules { keep_last: Some(2), ..Default::default() };
    let rules_for = |s: &str| s.starts_with("checkpoints:").then(|| rules.clone());
    let settings = PruneSettings {
        rules_for: &rules_for,
        tz: chrono_tz::UTC,
        now: t0 + chrono::Duration::hours(1),
        max_snapshot_age: None,
        force: false,
    };
    let plan = prune::plan(&snaps, &HashSet::new(), &settings).unwrap();
    let source = &plan.sources[0];
    let kept: Vec<usize> = source.snapshots.iter().enumerate().filter(|(_, p)| p.keep).map(|(i, _)| i).collect();
    assert_eq!(kept, vec![1, 4, 5]);
    assert_eq!(source.snapshots[1].reasons, vec!["final".to_owned()]);
}
