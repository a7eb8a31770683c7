//! Shared helpers of the integration tests: the S3 servers started by
//! `scripts/test` (Garage and moto on 127.0.0.1), buckets per test, and
//! repositories on a local directory or on S3.
#![allow(dead_code)]

pub mod pg;
pub mod pushgateway;
pub mod stack;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation};
use aws_sdk_s3::primitives::ByteStream;
use visage_dr::repository::{RepoOptions, RepoUrl, Repository};
use visage_dr::s3::S3Overrides;

/// One S3 server of the test environment.
#[derive(Clone, Debug)]
pub struct S3Server {
    pub name: &'static str,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

fn require(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if std::env::var_os("CI").is_some() {
                panic!("{var} is not set: CI must run the S3 tests; run them through scripts/test, which starts the servers");
            }
            eprintln!("note: {var} is not set, so the tests on that S3 server are skipped; scripts/test starts the servers");
            None
        }
    }
}

/// Garage, the main test server (checks signatures).
pub fn garage() -> Option<S3Server> {
    Some(S3Server {
        name: "garage",
        endpoint: require("S3_ENDPOINT")?,
        access_key: require("S3_ACCESS_KEY")?,
        secret_key: require("S3_SECRET_KEY")?,
        region: std::env::var("S3_REGION").unwrap_or_else(|_| "us-east-1".into()),
    })
}

/// moto, the second implementation (accepts any credentials).
pub fn moto() -> Option<S3Server> {
    Some(S3Server {
        name: "moto",
        endpoint: require("MOTO_ENDPOINT")?,
        access_key: "testing".into(),
        secret_key: "testing-secret".into(),
        region: "us-east-1".into(),
    })
}

/// Returns every configured S3 server.
pub fn s3_servers() -> Vec<S3Server> {
    [garage(), moto()].into_iter().flatten().collect()
}

impl S3Server {
    pub fn client(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .endpoint_url(&self.endpoint)
            .credentials_provider(Credentials::new(&self.access_key, &self.secret_key, None, None, "test"))
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Creates a bucket with a unique name starting with `hint`.
    pub async fn new_bucket(&self, hint: &str) -> String {
        let name = format!("{}-{:08x}", hint.to_lowercase().replace('_', "-"), rand::random::<u32>());
        self.client()
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateBucket {name} on {}: {e:?}", self.name));
        name
    }

    /// Settings for visage-dr: the endpoint, and the keys in files under `dir`.
    pub fn overrides(&self, dir: &Path) -> S3Overrides {
        let id = rand::random::<u32>();
        let key_file = dir.join(format!("access-key-{id}"));
        let secret_file = dir.join(format!("secret-key-{id}"));
        std::fs::write(&key_file, &self.access_key).unwrap();
        std::fs::write(&secret_file, &self.secret_key).unwrap();
        S3Overrides {
            endpoint: Some(self.endpoint.clone()),
            region: Some(self.region.clone()),
            access_key_id_file: Some(key_file),
            secret_access_key_file: Some(secret_file),
            path_style: Some(true),
        }
    }

    /// Environment for a `visage-dr` child process.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", self.region.clone()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
        ]
    }

    pub async fn put(&self, bucket: &str, key: &str, data: Vec<u8>) {
        self.client()
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(ByteStream::from(data))
            .send()
            .await
            .unwrap_or_else(|e| panic!("PutObject {key:?} on {}: {e:?}", self.name));
    }

    pub async fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let out = self
            .client()
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetObject {key:?} on {}: {e:?}", self.name));
        out.body.collect().await.unwrap().into_bytes().to_vec()
    }

    pub async fn delete(&self, bucket: &str, key: &str) {
        self.client().delete_object().bucket(bucket).key(key).send().await.unwrap();
    }

    /// Returns every key of a bucket with its content's SHA-256 (hex).
    pub async fn contents(&self, bucket: &str) -> BTreeMap<String, String> {
        let client = self.client();
        let mut out = BTreeMap::new();
        let mut token = None;
        loop {
            let page = client
                .list_objects_v2()
                .bucket(bucket)
                .set_continuation_token(token.clone())
                .send()
                .await
                .unwrap();
            for o in page.contents() {
                let key = o.key().unwrap().to_owned();
                let data = self.get(bucket, &key).await;
                out.insert(key, sha256_hex(&data));
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        out
    }
}

/// Restore settings for writing into `to` on `server`, with the defaults.
pub fn restore_options(server: &S3Server, dir: &tempfile::TempDir, to: &str) -> visage_dr::sources::bucket::RestoreOptions {
    use visage_dr::sources::bucket;
    bucket::RestoreOptions {
        to_bucket: to.to_owned(),
        prefix: String::new(),
        s3: server.overrides(dir.path()),
        overwrite: false,
        dry_run: false,
        concurrency: 8,
        multipart_threshold: bucket::DEFAULT_MULTIPART_THRESHOLD,
        part_size: bucket::DEFAULT_PART_SIZE,
        create_bucket: true,
        progress: false,
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    visage_dr::id::Digest::of(data).to_hex()
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Where a test repository lives.
pub enum RepoPlace {
    Local(tempfile::TempDir),
    S3 { server: S3Server, bucket: String, dir: tempfile::TempDir },
}

impl RepoPlace {
    pub fn name(&self) -> String {
        match self {
            RepoPlace::Local(_) => "local".into(),
            RepoPlace::S3 { server, .. } => server.name.into(),
        }
    }

    pub fn url(&self) -> RepoUrl {
        match self {
            RepoPlace::Local(d) => RepoUrl::Local(d.path().join("repo")),
            RepoPlace::S3 { bucket, .. } => RepoUrl::S3 { bucket: bucket.clone(), prefix: "dr".into() },
        }
    }

    pub fn options(&self) -> RepoOptions {
        match self {
            RepoPlace::Local(_) => RepoOptions::default(),
            RepoPlace::S3 { server, dir, .. } => RepoOptions { s3: server.overrides(dir.path()), ..RepoOptions::default() },
        }
    }

    pub async fn open(&self) -> Arc<Repository> {
        Arc::new(Repository::open_or_init(&self.url(), self.options()).await.expect("repository opens"))
    }

    /// `--repo` and S3 flags for the CLI.
    pub fn cli_args(&self) -> Vec<String> {
        let mut args = vec!["--repo".to_owned(), self.url().to_string()];
        if let RepoPlace::S3 { server, .. } = self {
            args.push("--repo-s3-endpoint".into());
            args.push(server.endpoint.clone());
        }
        args
    }
}

/// Creates a local repository place and one on each configured S3 server.
pub async fn repo_places(hint: &str) -> Vec<RepoPlace> {
    let mut places = vec![RepoPlace::Local(tempfile::tempdir().unwrap())];
    for server in s3_servers() {
        let bucket = server.new_bucket(&format!("{hint}-repo")).await;
        places.push(RepoPlace::S3 { server, bucket, dir: tempfile::tempdir().unwrap() });
    }
    places
}

/// Runs the `visage-dr` binary with `args` and extra environment.
pub fn visage_dr(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_visage-dr"));
    cmd.args(args).env_remove("VISAGE_DR_REPO").env("VISAGE_DR_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("visage-dr runs")
}

/// Runs the `visage-dr` binary and returns its exit code (-1 when a signal
/// ended it), standard output and standard error.
pub fn run_visage_dr(args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    let out = visage_dr(args, env);
    let (stdout, stderr) = text(&out);
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// Writes the keys of `s3` to `dir/access-key` and `dir/secret-key`, for
/// policies that name key files, and returns both paths.
pub fn write_key_files(dir: &Path, s3: &S3Server) -> (PathBuf, PathBuf) {
    let key_file = dir.join("access-key");
    let secret_file = dir.join("secret-key");
    std::fs::write(&key_file, &s3.access_key).unwrap();
    std::fs::write(&secret_file, &s3.secret_key).unwrap();
    (key_file, secret_file)
}

/// Prints a timestamped progress line, so that a slow step is easy to find
/// in the output of a long test.
pub fn step(name: &str) {
    eprintln!("{} step: {name}", chrono::Utc::now().format("%H:%M:%S"));
}

/// Returns the check called `name` of a verification report in JSON.
pub fn report_check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
}

pub fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

pub fn temp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
