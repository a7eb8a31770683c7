//! One conformance suite for the storage backends and the repository on top
//! of them, run unchanged on a local directory, Garage and moto.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use common::*;
use visage_dr::id::{BlobId, SnapshotId};
use visage_dr::repository::lock::{LockGuard, LockInfo, LockKind, LockTiming};
use visage_dr::repository::manifest::{Manifest, SnapshotKind, SnapshotStatus, MANIFEST_VERSION};
use visage_dr::repository::RepoError;

#[tokio::test]
async fn backend_object_operations() {
    for place in repo_places("conf-ops").await {
        let name = place.name();
        let repo = place.open().await;
        let b = repo.backend();
        b.put("x/a", Bytes::from_static(b"hello world")).await.unwrap();
        assert_eq!(&b.get("x/a").await.unwrap()[..], b"hello world", "{name}");
        assert_eq!(&b.get_range("x/a", 6, 5).await.unwrap()[..], b"world", "{name}");
        assert_eq!(b.head("x/a").await.unwrap().map(|m| m.size), Some(11), "{name}");
        assert!(b.head("x/missing").await.unwrap().is_none(), "{name}");
        let err = b.get("x/missing").await.unwrap_err();
        assert!(err.is_not_found(), "{name}: {err}");

        b.put("x/a", Bytes::from_static(b"")).await.unwrap();
        assert_eq!(b.head("x/a").await.unwrap().map(|m| m.size), Some(0), "{name}");
        b.delete("x/a").await.unwrap();
        assert!(b.head("x/a").await.unwrap().is_none(), "{name}");
        b.delete("x/a").await.expect("deleting a missing key succeeds");
    }
}

#[tokio::test]
async fn backend_lists_past_one_page() {
    for place in repo_places("conf-list").await {
        let name = place.name();
        let repo = place.open().await;
        let b = repo.backend().clone();
        let keys: Vec<String> = (0..1100).map(|i| format!("many/{i:05}")).collect();
        futures::future::join_all(keys.iter().map(|k| {
            let b = b.clone();
            async move { b.put(k, Bytes::from(k.clone().into_bytes())).await.unwrap() }
        }))
        .await;
        b.put("manyother/x", Bytes::from_static(b"x")).await.unwrap();
        let listed = b.list("many/").await.unwrap();
        assert_eq!(listed.len(), 1100, "{name}");
        let listed_keys: Vec<_> = listed.iter().map(|o| o.key.clone()).collect();
        assert_eq!(listed_keys, keys, "{name}: keys relative to the root, in order");
        assert!(listed.iter().all(|o| o.size == 10), "{name}");
    }
}

#[tokio::test]
async fn blobs_round_trip_and_deduplicate() {
    for place in repo_places("conf-blobs").await {
        let name = place.name();
        let repo = place.open().await;
        let writer = repo.pack_writer();
        let a = Bytes::from(random_bytes(300_000, 1));
        let b = Bytes::from(random_bytes(5, 2));
        let id_a = writer.store(a.clone()).await.unwrap();
        let id_a2 = writer.store(a.clone()).await.unwrap();
        let id_b = writer.store(b.clone()).await.unwrap();
        let id_empty = writer.store(Bytes::new()).await.unwrap();
        writer.finish().await.unwrap();
        assert_eq!(id_a, id_a2);
        assert_eq!(id_a, BlobId::of(&a));
        assert_eq!(writer.stats.blobs_new.load(Ordering::Relaxed), 3, "{name}: a stored once");
        assert_eq!(writer.stats.packs.load(Ordering::Relaxed), 1, "{name}: small blobs share a pack");

        // A new session finds the blobs through the index files.
        let reopened = place.open().await;
        assert_eq!(reopened.read_blob(&id_a).await.unwrap(), a, "{name}");
        assert_eq!(reopened.read_blob(&id_b).await.unwrap(), b, "{name}");
        assert!(reopened.read_blob(&id_empty).await.unwrap().is_empty(), "{name}");
        let writer2 = reopened.pack_writer();
        writer2.store(a.clone()).await.unwrap();
        writer2.finish().await.unwrap();
        assert_eq!(writer2.stats.blobs_new.load(Ordering::Relaxed), 0, "{name}: deduplicated across runs");

        let unknown = BlobId::of(b"never stored");
        assert!(matches!(reopened.read_blob(&unknown).await, Err(RepoError::BlobMissing { .. })), "{name}");
    }
}

#[tokio::test]
async fn manifests_round_trip_in_order() {
    for place in repo_places("conf-manifest").await {
        let name = place.name();
        let repo = place.open().await;
        let t0 = Utc::now() - chrono::Duration::hours(2);
        let mut ids = Vec::new();
        for i in 0..3 {
            let id = SnapshotId::new(t0 + chrono::Duration::minutes(i * 10));
            let m = Manifest {
                version: MANIFEST_VERSION,
                id: id.clone(),
                kind: SnapshotKind::Bucket,
                source: "s3:example".into(),
                source_detail: Default::default(),
                started: t0,
                time: t0 + chrono::Duration::minutes(i * 10 + 1),
                status: SnapshotStatus::Complete,
                error: None,
                parent: None,
                objects: 0,
                bytes: 0,
                labels: Default::default(),
                entries: vec![],
            };
            repo.save_manifest(&m).await.unwrap();
            ids.push(id);
        }
        assert_eq!(repo.snapshot_ids().await.unwrap(), ids, "{name}");
        let loaded = repo.load_manifest(&ids[1]).await.unwrap();
        assert_eq!(loaded.id, ids[1], "{name}");
        let prefix = &ids[2].as_str()[..20];
        assert_eq!(repo.resolve_snapshot(prefix).await.unwrap(), ids[2], "{name}");
    }
}

#[tokio::test]
async fn locks_conflict_and_go_stale() {
    for place in repo_places("conf-locks").await {
        let name = place.name();
        let repo = place.open().await;
        let backend = repo.backend().clone();
        let timing = LockTiming::default();
        let shared1 = LockGuard::acquire(backend.clone(), LockKind::Shared, "snapshot one", timing, Duration::ZERO)
            .await
            .unwrap();
        let shared2 = LockGuard::acquire(backend.clone(), LockKind::Shared, "snapshot two", timing, Duration::ZERO)
            .await
            .expect("shared locks coexist");
        let err = LockGuard::acquire(backend.clone(), LockKind::Exclusive, "prune", timing, Duration::ZERO)
            .await
            .err()
            .expect("exclusive conflicts with shared");
        assert!(err.to_string().contains("snapshot"), "{name}: {err}");
        assert_eq!(backend.list("locks/").await.unwrap().len(), 2, "{name}: the failed locker removed its own lock");
        shared1.release().await.unwrap();
        shared2.release().await.unwrap();

        // A lock whose refresh time is old is stale: ignored and removed by
        // an exclusive locker, whatever its host and pid.
        let old = Utc::now() - chrono::Duration::hours(1);
        let stale = LockInfo {
            id: visage_dr::id::LockId::new(old),
            kind: LockKind::Exclusive,
            purpose: "prune".into(),
            hostname: "gone-pod".into(),
            pid: std::process::id(),
            created: old,
            refreshed: old,
        };
        backend
            .put(&format!("locks/{}", stale.id), Bytes::from(serde_json::to_vec(&stale).unwrap()))
            .await
            .unwrap();
        let ex = LockGuard::acquire(backend.clone(), LockKind::Exclusive, "prune", timing, Duration::ZERO)
            .await
            .expect("a stale lock does not block");
        let left = backend.list("locks/").await.unwrap();
        assert_eq!(left.len(), 1, "{name}: the stale lock was reclaimed");
        ex.release().await.unwrap();
        assert!(backend.list("locks/").await.unwrap().is_empty(), "{name}");
    }
}

#[tokio::test]
async fn unopened_repository_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let url = visage_dr::repository::RepoUrl::Local(dir.path().join("none"));
    let err = visage_dr::repository::Repository::open(&url, Default::default()).await.err().unwrap();
    let text = err.to_string();
    assert!(text.contains("repo init"), "{text}");
    assert!(text.contains(&dir.path().join("none").display().to_string()), "{text}");
}
