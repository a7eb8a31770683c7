//! Bucket snapshots and restores against real S3 servers (Garage and moto),
//! with repositories on a local directory and on S3.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use common::*;
use visage_dr::repository::Repository;
use visage_dr::sources::bucket::{self, BucketError, SnapshotOptions, SnapshotStats};

fn snapshot_options(server: &S3Server, dir: &tempfile::TempDir, bucket: &str) -> SnapshotOptions {
    SnapshotOptions {
        bucket: bucket.to_owned(),
        prefix: String::new(),
        s3: server.overrides(dir.path()),
        concurrency: 8,
        tags: true,
        progress: false,
    }
}

async fn snap(repo: &Arc<Repository>, server: &S3Server, dir: &tempfile::TempDir, bucket: &str) -> SnapshotStats {
    bucket::snapshot(repo.clone(), snapshot_options(server, dir, bucket))
        .await
        .unwrap_or_else(|e| panic!("snapshot of {bucket} on {}: {e}", server.name))
}

const KEYS: [&str; 6] = ["run 1/step+100.pt", "a%2Bb", "ünï/ñ.bin", "dir//file", "trailing/", "x"];

#[tokio::test]
async fn round_trip_is_byte_identical() {
    for server in s3_servers() {
        for place in repo_places(&format!("rt-{}", server.name)).await {
            let label = format!("source {} repo {}", server.name, place.name());
            let dir = tempfile::tempdir().unwrap();
            let src = server.new_bucket("rt-src").await;
            for (i, key) in KEYS.iter().enumerate() {
                server.put(&src, key, random_bytes(1000 * i + 17, i as u64)).await;
            }
            server.put(&src, "empty", Vec::new()).await;
            let before = server.contents(&src).await;

            let repo = place.open().await;
            let stats = snap(&repo, &server, &dir, &src).await;
            assert_eq!(stats.objects, 7, "{label}");

            let m = repo.load_manifest(&stats.snapshot).await.unwrap();
            let keys: Vec<&str> = m.entries.iter().map(|e| e.key.as_str()).collect();
            for key in KEYS.iter().chain(["empty"].iter()) {
                assert!(keys.contains(key), "{label}: {key:?} missing from {keys:?}");
            }
            let under: Vec<&str> = m.entries_with_prefix("run 1/").map(|e| e.key.as_str()).collect();
            assert_eq!(under, vec!["run 1/step+100.pt"], "{label}");
            let empty = m.entries.iter().find(|e| e.key == "empty").unwrap();
            assert!(empty.chunks.is_empty(), "{label}");
            assert_eq!(empty.size, 0, "{label}");
            assert_eq!(m.source, format!("s3:{src}"), "{label}");

            let dst = format!("{src}-restored");
            let report = bucket::restore(repo.clone(), &m, restore_options(&server, &dir, &dst)).await.unwrap();
            assert_eq!(report.objects_written, 7, "{label}");
            assert_eq!(server.contents(&dst).await, before, "{label}: restored bytes differ");
        }
    }
}

#[tokio::test]
async fn headers_metadata_and_tags_survive() {
    for server in s3_servers() {
        let dir = tempfile::tempdir().unwrap();
        let place = RepoPlace::Local(tempfile::tempdir().unwrap());
        let src = server.new_bucket("meta-src").await;
        let client = server.client();
        client
            .put_object()
            .bucket(&src)
            .key("img/face.png")
            .body(ByteStream::from(random_bytes(5000, 9)))
            .content_type("image/png")
            .cache_control("max-age=60")
            .content_disposition("attachment; filename=\"face.png\"")
            .content_encoding("identity")
            .metadata("owner", "alice")
            .metadata("step", "100")
            .send()
            .await
            .unwrap();
        let tags = BTreeMap::from([("job".to_owned(), "lora alice".to_owned()), ("kind".to_owned(), "face".to_owned())]);
        let tagged = client
            .put_object_tagging()
            .bucket(&src)
            .key("img/face.png")
            .tagging(bucket::to_tagging(&tags))
            .send()
            .await;
        let server_has_tags = tagged.is_ok();
        if !server_has_tags {
            eprintln!("note: {} does not support object tagging; tags are checked on the other server", server.name);
        }
        assert!(server_has_tags || server.name == "garage", "{}: tagging failed: {tagged:?}", server.name);

        let repo = place.open().await;
        let stats = snap(&repo, &server, &dir, &src).await;
        let m = repo.load_manifest(&stats.snapshot).await.unwrap();
        let e = &m.entries[0];
        assert_eq!(e.content_type.as_deref(), Some("image/png"), "{}", server.name);
        assert_eq!(e.metadata.get("owner").map(String::as_str), Some("alice"), "{}", server.name);
        if server_has_tags {
            assert_eq!(e.tags, tags, "{}", server.name);
        }

        let dst = server.new_bucket("meta-dst").await;
        bucket::restore(repo.clone(), &m, restore_options(&server, &dir, &dst)).await.unwrap();
        let head = client.head_object().bucket(&dst).key("img/face.png").send().await.unwrap();
        assert_eq!(head.content_type(), Some("image/png"), "{}", server.name);
        assert_eq!(head.cache_control(), Some("max-age=60"), "{}", server.name);
        assert_eq!(head.content_disposition(), Some("attachment; filename=\"face.png\""), "{}", server.name);
        let meta = head.metadata().cloned().unwrap_or_default();
        assert_eq!(meta.get("owner").map(String::as_str), Some("alice"), "{}", server.name);
        assert_eq!(meta.get("step").map(String::as_str), Some("100"), "{}", server.name);
        if server_has_tags {
            let got = client.get_object_tagging().bucket(&dst).key("img/face.png").send().await.unwrap();
            let got: BTreeMap<String, String> =
                got.tag_set().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect();
            assert_eq!(got, tags, "{}", server.name);
        }
    }
}

#[tokio::test]
async fn more_than_one_listing_page() {
    for server in s3_servers() {
        let dir = tempfile::tempdir().unwrap();
        let place = RepoPlace::Local(tempfile::tempdir().unwrap());
        let src = server.new_bucket("many").await;
        let client = server.client();
        futures::future::join_all((0..1100).map(|i| {
            let client = client.clone();
            let src = src.clone();
            async move {
                client
                    .put_object()
                    .bucket(&src)
                    .key(format!("json/{i:05}.json"))
                    .body(ByteStream::from(format!("{{\"id\": {i}}}").into_bytes()))
                    .send()
                    .await
                    .unwrap()
            }
        }))
        .await;
        let repo = place.open().await;
        let stats = snap(&repo, &server, &dir, &src).await;
        assert_eq!(stats.objects, 1100, "{}", server.name);
        assert!(
            stats.repository_puts < 20,
            "{}: 1100 small objects took {} repository PUTs",
            server.name,
            stats.repository_puts
        );
        let dst = server.new_bucket("many-dst").await;
        let m = repo.load_manifest(&stats.snapshot).await.unwrap();
        let report = bucket::restore(repo.clone(), &m, restore_options(&server, &dir, &dst)).await.unwrap();
        assert_eq!(report.objects_written, 1100, "{}", server.name);
        let listed = visage_dr::repository::backend::list_objects(
            &visage_dr::s3::S3Settings::resolve("test", &server.overrides(dir.path())).unwrap(),
            &client,
            &dst,
            "",
        )
        .await
        .unwrap();
        assert_eq!(listed.len(), 1100, "{}", server.name);
    }
}

#[tokio::test]
async fn incremental_uploads_only_changes() {
    let server = match garage() {
        Some(s) => s,
        None => return,
    };
    for place in repo_places("incr").await {
        let label = place.name();
        let dir = tempfile::tempdir().unwrap();
        let src = server.new_bucket("incr-src").await;
        let mut big = random_bytes(64 * 1024 * 1024, 42);
        server.put(&src, "weights/lora.safetensors", big.clone()).await;
        let same = random_bytes(1024 * 1024, 5);
        server.put(&src, "a/one.bin", same.clone()).await;
        server.put(&src, "b/two.bin", same.clone()).await;

        let repo = place.open().await;
        let first = snap(&repo, &server, &dir, &src).await;
        assert_eq!(first.objects_read, 3, "{label}");
        // Identical content under two keys is stored once.
        let m = repo.load_manifest(&first.snapshot).await.unwrap();
        let one = m.entries.iter().find(|e| e.key == "a/one.bin").unwrap();
        let two = m.entries.iter().find(|e| e.key == "b/two.bin").unwrap();
        assert_eq!(one.chunks, two.chunks, "{label}");
        let expected_new = 64 * 1024 * 1024 + 1024 * 1024;
        assert_eq!(first.bytes_new, expected_new, "{label}: the duplicate was stored again");

        // An unchanged second run reads nothing and uploads no data.
        let second = snap(&repo, &server, &dir, &src).await;
        assert_eq!(second.objects_read, 0, "{label}");
        assert_eq!(second.blobs_new, 0, "{label}");
        assert_eq!(second.packs_uploaded, 0, "{label}");

        // A change in the middle of the 64 MiB object uploads only the chunks around it.
        let mid = 32 * 1024 * 1024;
        big[mid..mid + 4096].iter_mut().for_each(|b| *b ^= 0xFF);
        server.put(&src, "weights/lora.safetensors", big.clone()).await;
        let third = snap(&repo, &server, &dir, &src).await;
        assert_eq!(third.objects_read, 1, "{label}");
        assert!(third.bytes_new > 0, "{label}");
        assert!(
            third.bytes_new <= 16 * 1024 * 1024,
            "{label}: a 4 KiB change re-uploaded {} bytes",
            third.bytes_new
        );
        assert!(third.pack_bytes_uploaded <= 17 * 1024 * 1024, "{label}: {} pack bytes", third.pack_bytes_uploaded);

        let m3 = repo.load_manifest(&third.snapshot).await.unwrap();
        let dst = server.new_bucket("incr-dst").await;
        bucket::restore(repo.clone(), &m3, restore_options(&server, &dir, &dst)).await.unwrap();
        assert_eq!(server.get(&dst, "weights/lora.safetensors").await, big, "{label}");
    }
}

#[tokio::test]
async fn multipart_restore_above_threshold() {
    for server in s3_servers() {
        let dir = tempfile::tempdir().unwrap();
        let place = RepoPlace::Local(tempfile::tempdir().unwrap());
        let src = server.new_bucket("mp-src").await;
        let data = random_bytes(12 * 1024 * 1024 + 3, 77);
        server.put(&src, "ckpt/step-300.pt", data.clone()).await;
        server.put(&src, "small.txt", b"hello".to_vec()).await;
        let repo = place.open().await;
        let stats = snap(&repo, &server, &dir, &src).await;
        let m = repo.load_manifest(&stats.snapshot).await.unwrap();
        let dst = server.new_bucket("mp-dst").await;
        let mut opts = restore_options(&server, &dir, &dst);
        opts.multipart_threshold = 1024 * 1024;
        opts.part_size = 5 * 1024 * 1024;
        let report = bucket::restore(repo.clone(), &m, opts).await.unwrap();
        assert_eq!(report.multipart_objects, 1, "{}", server.name);
        assert_eq!(server.get(&dst, "ckpt/step-300.pt").await, data, "{}", server.name);
        let head = server.client().head_object().bucket(&dst).key("ckpt/step-300.pt").send().await.unwrap();
        assert!(head.e_tag().unwrap_or("").ends_with("-3\""), "{}: etag {:?}", server.name, head.e_tag());
    }
}

#[tokio::test]
async fn overwrite_needs_the_flag() {
    let server = match garage() {
        Some(s) => s,
        None => return,
    };
    let dir = tempfile::tempdir().unwrap();
    let place = RepoPlace::Local(tempfile::tempdir().unwrap());
    let src = server.new_bucket("ow-src").await;
    server.put(&src, "same", b"same content".to_vec()).await;
    server.put(&src, "differs", b"original".to_vec()).await;
    server.put(&src, "new", b"only in the snapshot".to_vec()).await;
    let repo = place.open().await;
    let stats = snap(&repo, &server, &dir, &src).await;
    let m = repo.load_manifest(&stats.snapshot).await.unwrap();

    let dst = server.new_bucket("ow-dst").await;
    server.put(&dst, "same", b"same content".to_vec()).await;
    server.put(&dst, "differs", b"changed later".to_vec()).await;
    server.put(&dst, "unrelated", b"kept".to_vec()).await;

    let err = bucket::restore(repo.clone(), &m, restore_options(&server, &dir, &dst)).await.unwrap_err();
    match &err {
        BucketError::WouldOverwrite { count, sample, .. } => {
            assert_eq!(*count, 1);
            assert!(sample.contains("differs"), "{sample}");
        }
        other => panic!("expected WouldOverwrite, got {other}"),
    }
    assert!(err.to_string().contains("--overwrite"), "{err}");
    assert_eq!(server.get(&dst, "differs").await, b"changed later", "nothing was written");
    assert!(server.client().head_object().bucket(&dst).key("new").send().await.is_err(), "nothing was written");

    let mut dry = restore_options(&server, &dir, &dst);
    dry.dry_run = true;
    let plan = bucket::restore(repo.clone(), &m, dry).await.unwrap();
    assert_eq!(plan.overwritten, vec!["differs".to_owned()]);
    assert_eq!(plan.identical, 1);
    assert_eq!(plan.objects_written, 0);

    let mut ow = restore_options(&server, &dir, &dst);
    ow.overwrite = true;
    let done = bucket::restore(repo.clone(), &m, ow).await.unwrap();
    assert_eq!(done.objects_written, 2);
    assert_eq!(done.identical, 1);
    assert_eq!(server.get(&dst, "differs").await, b"original");
    assert_eq!(server.get(&dst, "unrelated").await, b"kept");
}

#[tokio::test]
async fn target_time_picks_newest_before() {
    let server = match garage() {
        Some(s) => s,
        None => return,
    };
    let dir = tempfile::tempdir().unwrap();
    let place = RepoPlace::Local(tempfile::tempdir().unwrap());
    let src = server.new_bucket("tt-src").await;
    server.put(&src, "k", b"v1".to_vec()).await;
    let repo = place.open().await;
    let first = snap(&repo, &server, &dir, &src).await;
    let t1 = repo.load_manifest(&first.snapshot).await.unwrap().time;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    server.put(&src, "k", b"v2".to_vec()).await;
    let second = snap(&repo, &server, &dir, &src).await;
    let t2 = repo.load_manifest(&second.snapshot).await.unwrap().time;

    let source = format!("s3:{src}");
    let between = t1 + (t2 - t1) / 2;
    assert_eq!(bucket::snapshot_at(&repo, Some(&source), between).await.unwrap().id, first.snapshot);
    assert_eq!(bucket::snapshot_at(&repo, Some(&source), t2).await.unwrap().id, second.snapshot);
    let err = bucket::snapshot_at(&repo, Some(&source), t1 - chrono::Duration::seconds(5)).await.unwrap_err();
    assert!(matches!(err, BucketError::NoSnapshotBefore { .. }), "{err}");
}

#[tokio::test]
async fn listing_truncated_without_token_is_an_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A minimal HTTP server on loopback that returns, for every request, a
    // listing page marked truncated but carrying no continuation token.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        for _ in 0..10 {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let mut buf = vec![0u8; 8192];
            let _ = sock.read(&mut buf).await;
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                <Name>b</Name><Prefix></Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>\
                <IsTruncated>true</IsTruncated>\
                <Contents><Key>only-one</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>\
                <ETag>\"abc\"</ETag><Size>3</Size><StorageClass>STANDARD</StorageClass></Contents>\
                </ListBucketResult>";
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                body.len(),
                body
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ak"), "AKID").unwrap();
    std::fs::write(dir.path().join("sk"), "secret").unwrap();
    let settings = visage_dr::s3::S3Settings::resolve(
        "test",
        &visage_dr::s3::S3Overrides {
            endpoint: Some(format!("http://{addr}")),
            region: None,
            access_key_id_file: Some(dir.path().join("ak")),
            secret_access_key_file: Some(dir.path().join("sk")),
            path_style: Some(true),
        },
    )
    .unwrap();
    let err = visage_dr::repository::backend::list_objects(&settings, &settings.client(), "b", "")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("truncated"), "{err}");
    assert!(err.contains("continuation token"), "{err}");
    server.abort();
}

#[tokio::test]
async fn bad_credentials_and_unreachable_endpoint() {
    let server = match garage() {
        Some(s) => s,
        None => return,
    };
    let repo_dir = tempfile::tempdir().unwrap();
    let repo = format!("file://{}", repo_dir.path().join("repo").display());
    let wrong_secret = "wrong-secret-value-0123456789abcdef";
    let mut env = server.env();
    env.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
    env.push(("AWS_SECRET_ACCESS_KEY", wrong_secret.to_owned()));
    let out = visage_dr(&["snapshot", "bucket", "--repo", &repo, "--bucket", "visage-dr-test"], &env);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("credentials"), "{stderr}");
    assert!(stderr.contains(&server.endpoint), "{stderr}");
    assert!(!stderr.contains(wrong_secret), "the secret leaked: {stderr}");
    assert!(!stdout.contains(wrong_secret), "the secret leaked: {stdout}");

    // A loopback port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut env = server.env();
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")));
    let out = visage_dr(&["snapshot", "bucket", "--repo", &repo, "--bucket", "visage-dr-test"], &env);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(!stderr.contains(&server.secret_key), "the secret leaked: {stderr}");

    // An unknown bucket is named.
    let out = visage_dr(&["snapshot", "bucket", "--repo", &repo, "--bucket", "no-such-bucket-here"], &server.env());
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no-such-bucket-here"), "{stderr}");
    assert!(stderr.contains("not found"), "{stderr}");

    // Invalid usage is exit status 2.
    let out = visage_dr(&["snapshot", "bucket", "--repo", "relative/path", "--bucket", "x"], &server.env());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
}

#[tokio::test]
async fn config_errors_record_nothing() {
    let server = match garage() {
        Some(s) => s,
        None => return,
    };
    let dir = tempfile::tempdir().unwrap();
    let place = RepoPlace::Local(tempfile::tempdir().unwrap());
    let repo = place.open().await;
    let mut opts = snapshot_options(&server, &dir, "no-such-bucket-cfg");
    let err = bucket::snapshot(repo.clone(), opts.clone()).await.unwrap_err();
    assert!(err.to_string().contains("no-such-bucket-cfg"), "{err}");
    opts.bucket = server.new_bucket("cfg").await;
    opts.s3.access_key_id_file = Some(dir.path().join("missing-key-file"));
    let err = bucket::snapshot(repo.clone(), opts).await.unwrap_err();
    assert!(err.to_string().contains("missing-key-file"), "{err}");
    assert!(repo.snapshot_ids().await.unwrap().is_empty(), "a configuration error left a snapshot");
}

#[tokio::test]
async fn repository_inside_source_is_left_out() {
    let server = match garage() {
        Some(s) => s,
        None => return,
    };
    let dir = tempfile::tempdir().unwrap();
    let src = server.new_bucket("self").await;
    server.put(&src, "photo.jpg", random_bytes(1000, 3)).await;
    let place = RepoPlace::S3 { server: server.clone(), bucket: src.clone(), dir: tempfile::tempdir().unwrap() };
    let repo = place.open().await;
    let first = snap(&repo, &server, &dir, &src).await;
    let second = snap(&repo, &server, &dir, &src).await;
    assert_eq!(first.objects, 1);
    assert_eq!(second.objects, 1, "the repository's own objects were backed up");
    assert_eq!(second.objects_read, 0);
}
