//! `visage-dr verify` against real PostgreSQL 15, barman-cloud and Garage. The cases:
//!
//! - a passing run with every check kind, whose HTML report is rendered in headless Chromium;
//! - a run whose checks fail: a corrupted blob, missing referenced objects, a false assertion;
//! - `--keep`, and the removal of the expired leftover by the next run;
//! - SIGTERM, and the policy timeout;
//! - the controller's verification job;
//! - an instance paused at its target;
//! - a damaged WAL segment that keeps the restore from reaching its target.
//!
//! All cases share one source server, one base backup, one bucket snapshot and one
//! checkpoint, because a base backup and its WAL take most of the set-up time. Each case
//! copies the repository and has its own scratch directory, so the cases run at the same
//! time without seeing each other.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pg::{self, PgServer};
use common::*;
use serde_json::Value;
use visage_dr::id::Digest;
use visage_dr::postgres::local::OsUser;
use visage_dr::repository::manifest::SnapshotKind;
use visage_dr::repository::{RepoOptions, RepoUrl, Repository};
use visage_dr::sources::checkpoint::Upload;

/// Objects in the source bucket, each referenced by a row of `images`.
const IMAGES: usize = 12;

/// The object whose first blob the failing case corrupts.
const CORRUPTED_KEY: &str = "img/003.bin";

/// Referenced keys that the failing case adds although no object has them.
const GHOST_KEYS: usize = 23;

/// What every case shares.
struct Fixture {
    s3: S3Server,
    work: tempfile::TempDir,
    source: PgServer,
    pg_bucket: String,
    uploads: String,
    /// The repository with the backup record, the bucket snapshot and the checkpoint.
    repo_dir: PathBuf,
    bucket_snapshot: String,
    canary_running: Arc<AtomicBool>,
}

/// The parts of a policy that differ between cases.
struct PolicyCase<'a> {
    name: &'a str,
    timeout: &'a str,
    extra_checks: &'a str,
    references_query: &'a str,
}

impl Fixture {
    /// Writes `<case>/policy.yaml` with a copy of the shared repository and its own scratch
    /// directory, and returns the case directory.
    fn case(&self, case: &PolicyCase) -> PathBuf {
        let dir = self.work.path().join(case.name);
        std::fs::create_dir_all(&dir).unwrap();
        if self.repo_dir != dir.join("repo") {
            copy_dir(&self.repo_dir, &dir.join("repo"));
        }
        let key = self.work.path().join("access-key");
        let secret = self.work.path().join("secret-key");
        let s3 = format!(
            "{{ endpoint: {}, region: {}, access_key_id_file: {}, secret_access_key_file: {}, path_style: true }}",
            self.s3.endpoint,
            self.s3.region,
            key.display(),
            secret.display()
        );
        let policy = format!(
            r#"repository:
  url: file://{repo}
postgres:
  - name: app
    driver: local
    object_store:
      destination_path: s3://{pg_bucket}/pg
      server_name: main
      endpoint: {endpoint}
      region: {region}
      access_key_id_file: {key}
      secret_access_key_file: {secret}
    connection:
      host: 127.0.0.1
      port: {port}
      user: postgres
buckets:
  - name: uploads
    bucket: {uploads}
    s3: {s3}
    retention: {{ keep_last: 3 }}
checkpoints:
  retention: {{ keep_last: 3 }}
verification:
  schedule: "0 4 * * 0"
  scratch_dir: {scratch}
  timeout: {timeout}
  sample_objects: 50
  data_boundary: {{ database: app, query: "SELECT max(created_at) FROM canary" }}
  references:
    - {{ database: app, bucket: uploads, query: "{references}" }}
  schema: {{ tables: [users, images, canary], extensions: [pgcrypto, plpgsql] }}
  checks:
    - {{ name: users exist, database: app, query: "SELECT count(*) FROM users", expect: "= 3" }}
    - {{ name: canary written, database: app, query: "SELECT count(*) FROM canary", expect: ">= 1" }}
    - {{ name: images in range, database: app, query: "SELECT count(*) FROM images", expect: "between 10 and 20" }}
    - {{ name: server is 15, database: app, query: "SELECT current_setting('server_version')", expect: 'matches ^15\.' }}
{extra}"#,
            repo = dir.join("repo").display(),
            pg_bucket = self.pg_bucket,
            endpoint = self.s3.endpoint,
            region = self.s3.region,
            key = key.display(),
            secret = secret.display(),
            port = self.source.port,
            uploads = self.uploads,
            scratch = dir.join("scratch").display(),
            timeout = case.timeout,
            references = case.references_query,
            extra = case.extra_checks,
        );
        std::fs::write(dir.join("policy.yaml"), policy).unwrap();
        dir
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Output of one `visage-dr` run.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn visage(args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_visage-dr"))
        .args(args)
        .env_remove("VISAGE_DR_REPO")
        .env("VISAGE_DR_LOG", "info")
        .output()
        .await
        .expect("visage-dr runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn policy_arg(case: &Path) -> String {
    case.join("policy.yaml").display().to_string()
}

/// Runs `visage-dr verify --json` for a case and returns the run and the parsed output.
async fn verify(case: &Path, extra: &[&str]) -> (Run, Option<Value>) {
    let policy = policy_arg(case);
    let mut args = vec!["verify", "--policy", policy.as_str(), "--json"];
    args.extend_from_slice(extra);
    let run = visage(&args).await;
    let json = serde_json::from_str(&run.stdout).ok();
    (run, json)
}

/// Processes whose command line names a path under `dir`.
fn processes_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(dir.to_str().unwrap()) {
            found.push(format!("{pid}: {text}"));
        }
    }
    found
}

/// Lists the run directories in a scratch directory.
fn run_dirs(scratch: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(scratch) {
        Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn assert_torn_down(case: &Path) {
    let scratch = case.join("scratch");
    assert_eq!(run_dirs(&scratch), Vec::<PathBuf>::new(), "scratch directories left in {}", scratch.display());
    assert_eq!(processes_under(&scratch), Vec::<String>::new(), "processes left in {}", scratch.display());
}

/// Stops a kept scratch instance when the case ends before the next run removed it.
struct KeptPid(i32);

impl Drop for KeptPid {
    fn drop(&mut self) {
        if pid_alive(self.0) {
            pg::stop_postgres_pid(self.0 as u32);
        }
    }
}

/// A PostgreSQL server started by the test, stopped with a fast shutdown and reaped on drop.
struct ServerChild(std::process::Child);

impl Drop for ServerChild {
    fn drop(&mut self) {
        // SAFETY: kill has no memory-safety preconditions; the PID is our child's.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pid_alive(pid: i32) -> bool {
    // Zombies are dead: their stat state is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"))
        .unwrap_or(false)
}

async fn setup() -> Option<Fixture> {
    let s3 = garage()?;
    if !pg::tools_present() {
        return None;
    }
    let user = OsUser::lookup("postgres").unwrap();
    let work = pg::postgres_dir(&user);
    std::fs::write(work.path().join("access-key"), &s3.access_key).unwrap();
    std::fs::write(work.path().join("secret-key"), &s3.secret_key).unwrap();
    let pg_bucket = s3.new_bucket("verify-pg").await;
    let uploads = s3.new_bucket("verify-uploads").await;
    let source = PgServer::start(&s3, &pg_bucket, "main").await;

    let client = source.client().await;
    client
        .batch_execute(
            "CREATE EXTENSION pgcrypto;
             CREATE TABLE users (id serial PRIMARY KEY, name text);
             INSERT INTO users (name) VALUES ('ada'), ('grace'), ('edsger');
             CREATE TABLE images (storage_key text PRIMARY KEY, size bigint NOT NULL, created_at timestamptz DEFAULT clock_timestamp());
             CREATE TABLE canary (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT clock_timestamp());",
        )
        .await
        .unwrap();
    for i in 0..IMAGES {
        let key = format!("img/{i:03}.bin");
        // One object spans several chunks; the others are small.
        let size = if i == 5 { 2 * 1024 * 1024 + 17 } else { 1000 + i * 777 };
        s3.put(&uploads, &key, random_bytes(size, i as u64)).await;
        client.execute("INSERT INTO images (storage_key, size) VALUES ($1, $2)", &[&key, &(size as i64)]).await.unwrap();
    }

    // A canary row every 300 ms, so that every archived WAL segment contains commits.
    let canary_running = Arc::new(AtomicBool::new(true));
    let canary_client = source.client().await;
    let running = canary_running.clone();
    tokio::spawn(async move {
        while running.load(Ordering::Relaxed) {
            if canary_client.execute("INSERT INTO canary DEFAULT VALUES", &[]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });

    let fixture_dir = work.path().join("shared");
    let mut fixture = Fixture {
        s3,
        work,
        source,
        pg_bucket,
        uploads,
        repo_dir: fixture_dir.join("repo"),
        bucket_snapshot: String::new(),
        canary_running,
    };
    // The shared policy writes into the shared repository itself.
    let shared = fixture.case(&PolicyCase { name: "shared", timeout: "5min", extra_checks: "", references_query: "SELECT 1" });
    let policy = policy_arg(&shared);
    let repo_url = format!("file://{}", shared.join("repo").display());
    let backup = visage(&["backup", "postgres", "--policy", &policy, "--name", "app", "--repo", &repo_url, "--json"]).await;
    assert_eq!(backup.code, Some(0), "backup failed: {}", backup.stderr);
    // The checkpoint is pushed first, so that every instant of the window has one.
    let repo = Arc::new(Repository::open(&RepoUrl::Local(fixture.repo_dir.clone()), RepoOptions::default()).await.unwrap());
    let checkpoint = random_bytes(700 * 1024, 99);
    let mut upload = Upload::begin(&repo, true, "test checkpoint").await.unwrap();
    upload.write(&checkpoint).await.unwrap();
    let (_, sha) = upload.end(&Digest::of(&checkpoint)).await.unwrap();
    upload.commit("lora-test", "step-100", sha, false, chrono::Utc::now(), None).await.unwrap();
    let snapshot = visage(&["run", "--policy", &policy, "--job", "bucket:uploads", "--json"]).await;
    assert_eq!(snapshot.code, Some(0), "bucket snapshot failed: {}", snapshot.stderr);

    let manifests = repo.load_manifests().await.unwrap();
    fixture.bucket_snapshot =
        manifests.iter().find(|m| m.kind == SnapshotKind::Bucket).expect("the bucket snapshot is stored").id.to_string();

    // A random target needs three archived segments after the bucket snapshot.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        fixture.source.switch_and_wait_archived().await;
    }
    Some(fixture)
}

async fn passing_run(fixture: &Fixture) {
    let case = fixture.case(&PolicyCase {
        name: "pass",
        timeout: "5min",
        extra_checks: "",
        references_query: "SELECT storage_key, size FROM images",
    });
    let report_dir = case.join("out");
    let (run, json) = verify(&case, &["--report-dir", report_dir.to_str().unwrap()]).await;
    assert_eq!(run.code, Some(0), "verify failed: {}\n{}", run.stderr, run.stdout);
    let json = json.expect("verify --json prints JSON");
    let report = &json["report"];

    assert_eq!(report["result"], "pass", "{report}");
    assert_eq!(report["target_choice"], "random", "{report}");
    assert!(run.stderr.contains("in the recoverable window"), "the chosen instant is not named: {}", run.stderr);
    let target = report["target_time"].as_str().unwrap();
    assert!(run.stderr.contains(&target[..19]), "{target} is not in the log: {}", run.stderr);
    let window = &report["window"];
    assert!(window["after"].as_str().unwrap() <= target, "{report}");
    assert!(target <= window["until"].as_str().unwrap(), "{report}");

    let expected = [
        "restore app",
        "recovery app",
        "data boundary app",
        "schema app",
        "check users exist",
        "check canary written",
        "check images in range",
        "check server is 15",
        "references app to uploads",
        "bucket uploads",
        "checkpoint lora-test",
        "teardown",
    ];
    for name in expected {
        let found = report_check(report, name);
        assert_eq!(found["result"], "pass", "{name}: {found}");
        assert!(found["seconds"].as_f64().unwrap() >= 0.0, "{name}: {found}");
    }
    assert!(report_check(report, "bucket uploads")["details"].as_str().unwrap().contains(&format!("{IMAGES} of {IMAGES} object(s)")));
    assert!(report_check(report, "references app to uploads")["details"]
        .as_str()
        .unwrap()
        .contains(&format!("{IMAGES} referenced key(s), all present in snapshot {}", fixture.bucket_snapshot)));
    assert!(report_check(report, "data boundary app")["details"].as_str().unwrap().contains("no row is newer than the target"));

    let rto = report["rto_seconds"].as_f64().expect("rto_seconds is set");
    let rto_checks = report["rto_checks_seconds"].as_f64().unwrap();
    assert!(rto > 0.0, "{report}");
    assert!(rto <= rto_checks, "{report}");
    let rpo = report["rpo_seconds"].as_f64().expect("rpo_seconds is set");
    // The canary commits every 300 ms, so the newest restored change is close to the target.
    assert!((0.0..5.0).contains(&rpo), "{report}");
    assert_eq!(report["buckets"][0]["snapshot"], fixture.bucket_snapshot.as_str());
    assert!(report["databases"][0]["backup_id"].is_string(), "{report}");
    assert!(report["databases"][0]["wal_first"].is_string(), "{report}");
    assert_eq!(report["components"].as_array().unwrap().len(), 3, "{report}");
    assert_torn_down(&case);

    // The report is in the repository and in --report-dir, and every path is printed.
    let id = report["id"].as_str().unwrap();
    let files: Vec<&str> = json["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    for name in ["report.json", "report.md", "report.html"] {
        let stored = case.join("repo/reports").join(id).join(name);
        assert!(stored.is_file(), "{} is missing", stored.display());
        assert!(files.contains(&stored.to_str().unwrap()), "{files:?}");
        assert!(files.contains(&report_dir.join(name).to_str().unwrap()), "{files:?}");
    }
    let verified = case.join("repo/catalogue/verified").join(&fixture.bucket_snapshot);
    assert!(verified.is_file(), "the bucket snapshot is not recorded as verified");
    let markdown = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    assert!(markdown.contains("| check users exist | PASS |"), "{markdown}");

    render_in_chromium(&report_dir.join("report.html"), &expected);
}

/// Loads the HTML report in headless Chromium, checks the rendered DOM for the check table and
/// the chart, and keeps a screenshot under target/.
fn render_in_chromium(html: &Path, checks: &[&str]) {
    let chromium = Path::new("/usr/bin/chromium");
    if !chromium.is_file() {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is missing; scripts/install-deps installs it");
        }
        eprintln!("note: the HTML rendering check is skipped, chromium is missing; scripts/install-deps installs it");
        return;
    }
    let profile = tempfile::tempdir().unwrap();
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
    ];
    let url = format!("file://{}", html.display());
    let profile_flag = format!("--user-data-dir={}", profile.path().display());
    let dump = std::process::Command::new(chromium)
        .args(flags)
        .arg(&profile_flag)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.status.success(), "chromium failed: {}", String::from_utf8_lossy(&dump.stderr));
    assert!(dom.contains("<table id=\"checks\">"), "no check table in the rendered DOM");
    assert!(dom.contains("<svg id=\"rto-chart\""), "no chart in the rendered DOM");
    assert!(dom.contains("class=\"result pass\""), "no result marker in the chart");
    for name in checks {
        assert!(dom.contains(&format!("<td>{name}</td>")), "check {name} is not in the rendered table");
    }

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("verify-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("report.png");
    let _ = std::fs::remove_file(&screenshot);
    let shot = std::process::Command::new(chromium)
        .args(flags)
        .arg(&profile_flag)
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg("--window-size=1280,1800")
        .arg(&url)
        .output()
        .expect("chromium runs");
    assert!(shot.status.success(), "chromium screenshot failed: {}", String::from_utf8_lossy(&shot.stderr));
    let png = std::fs::read(&screenshot).expect("the screenshot is written");
    assert!(png.starts_with(b"\x89PNG"), "{} is not a PNG", screenshot.display());
}

async fn failing_run(fixture: &Fixture) {
    let ghosts = format!("SELECT storage_key, size FROM images UNION ALL SELECT 'ghost/' || g, 1 FROM generate_series(1, {GHOST_KEYS}) AS g");
    let case = fixture.case(&PolicyCase {
        name: "fail",
        timeout: "5min",
        extra_checks: "    - { name: users miscounted, database: app, query: \"SELECT count(*) FROM users\", expect: \"= 999\" }\n",
        references_query: &ghosts,
    });

    // Flip a byte in the middle of the first frame of one object.
    let repo = Repository::open(&RepoUrl::Local(case.join("repo")), RepoOptions::default()).await.unwrap();
    let manifest = repo.load_manifest(&fixture.bucket_snapshot.parse().unwrap()).await.unwrap();
    let entry = manifest.entries.iter().find(|e| e.key == CORRUPTED_KEY).unwrap();
    let location = repo.with_index(|i| i.usable_locations(&entry.chunks[0])[0]);
    let pack = case.join("repo/data").join(&location.pack.to_hex()[..2]).join(location.pack.to_hex());
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[(location.offset + location.length / 2) as usize] ^= 0xff;
    std::fs::write(&pack, bytes).unwrap();

    let (run, json) = verify(&case, &[]).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stderr, run.stdout);
    let report = &json.expect("verify --json prints the report of a failed run")["report"];
    assert_eq!(report["result"], "fail");

    // The false assertion is named, with its value.
    assert!(run.stderr.contains("check \"check users miscounted\" failed: value 3 does not meet == 999"), "{}", run.stderr);
    assert_eq!(report_check(report, "check users exist")["result"], "pass");

    // The corrupted blob names its key and the snapshot that needs it.
    let bucket = report_check(report, "bucket uploads");
    assert_eq!(bucket["result"], "fail", "{bucket}");
    let damaged = format!("object \"{CORRUPTED_KEY}\" of snapshot {}", fixture.bucket_snapshot);
    assert!(bucket["details"].as_str().unwrap().contains(&damaged), "{bucket}");
    assert!(run.stderr.contains(&damaged), "{}", run.stderr);
    assert!(bucket["details"].as_str().unwrap().contains(&format!("1 of {IMAGES} restored object(s)")), "{bucket}");

    // The missing references are counted, and the first 20 listed.
    let references = report_check(report, "references app to uploads");
    let details = references["details"].as_str().unwrap();
    assert_eq!(references["result"], "fail");
    assert!(details.starts_with(&format!("{GHOST_KEYS} of {} referenced key(s) are missing", IMAGES + GHOST_KEYS)), "{details}");
    assert!(details.contains("\"ghost/20\""), "{details}");
    assert!(!details.contains("\"ghost/21\""), "{details}");
    assert!(details.contains("and 3 more"), "{details}");

    let components: Vec<(&str, &str)> = report["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["component"].as_str().unwrap(), c["result"].as_str().unwrap()))
        .collect();
    assert!(components.contains(&("postgres:app", "fail")), "{components:?}");
    assert!(components.contains(&("bucket:uploads", "fail")), "{components:?}");
    assert!(components.contains(&("checkpoints:lora-test", "pass")), "{components:?}");
    assert!(!case.join("repo/catalogue/verified").join(&fixture.bucket_snapshot).exists());
    assert_torn_down(&case);
}

async fn keep_then_expire(fixture: &Fixture) {
    let case = fixture.case(&PolicyCase {
        name: "keep",
        timeout: "5min",
        extra_checks: "",
        references_query: "SELECT storage_key FROM images",
    });
    let (run, json) = verify(&case, &["--keep"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let first = json.unwrap()["report"].clone();
    assert_eq!(first["scratch"]["kept"], true);
    let pid = first["databases"][0]["pid"].as_i64().unwrap() as i32;
    let _kept = KeptPid(pid);
    let port = first["databases"][0]["port"].as_u64().unwrap() as u16;
    let kept_dir = PathBuf::from(first["scratch"]["path"].as_str().unwrap());
    assert!(kept_dir.join("pg-app/data").is_dir(), "the kept data directory is gone");
    assert!(kept_dir.join("objects/uploads").is_dir(), "the kept objects are gone");
    assert!(pid_alive(pid), "the kept instance is not running");
    let kept = pg::connect(port).await.expect("the kept instance accepts connections");
    let rows: i64 = kept.query_one("SELECT count(*) FROM canary", &[]).await.unwrap().get(0);
    assert!(rows >= 1);
    drop(kept);

    // Let the kept resources expire, as a day would.
    let marker_path = kept_dir.join("visage-dr-verify.json");
    let mut marker: Value = serde_json::from_slice(&std::fs::read(&marker_path).unwrap()).unwrap();
    assert_eq!(marker["kept"], true);
    marker["expires"] = Value::String("2000-01-01T00:00:00Z".into());
    std::fs::write(&marker_path, marker.to_string()).unwrap();

    let (run, json) = verify(&case, &["--latest"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let second = json.unwrap()["report"].clone();
    assert_eq!(second["target_choice"], "latest");
    assert_eq!(second["databases"][0]["to_end_of_archive"], true, "{second}");
    assert!(!kept_dir.exists(), "the expired scratch directory is still there");
    assert!(!pid_alive(pid), "the expired instance {pid} still runs");
    assert_torn_down(&case);

    let listing = visage(&["reports", "--policy", &policy_arg(&case), "--last", "5", "--json"]).await;
    assert_eq!(listing.code, Some(0), "{}", listing.stderr);
    let runs: Value = serde_json::from_str(&listing.stdout).unwrap();
    let ids: Vec<&str> = runs.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [second["id"].as_str().unwrap(), first["id"].as_str().unwrap()], "newest first");
    assert_eq!(runs[0]["result"], "pass");
    let table = visage(&["reports", "--policy", &policy_arg(&case), "--last", "1"]).await;
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    assert!(table.stdout.starts_with("REPORT"), "{}", table.stdout);
    assert_eq!(table.stdout.lines().count(), 2, "{}", table.stdout);
}

async fn sigterm_tears_down(fixture: &Fixture) {
    let case = fixture.case(&PolicyCase { name: "term", timeout: "5min", extra_checks: "", references_query: "SELECT storage_key FROM images" });
    let policy = policy_arg(&case);
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_visage-dr"))
        .args(["verify", "--policy", &policy])
        .env("VISAGE_DR_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap() as i32;

    // Wait until the scratch instance has started.
    let deadline = Instant::now() + Duration::from_secs(120);
    let started = loop {
        let found = run_dirs(&case.join("scratch")).into_iter().find(|d| d.join("pg-app/data/postmaster.pid").is_file());
        if let Some(dir) = found {
            break dir;
        }
        assert!(Instant::now() < deadline, "the scratch instance did not start within 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // SAFETY: kill has no memory-safety preconditions; the PID is our child's.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let output = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted by SIGTERM"), "{stderr}");
    assert!(!started.exists(), "{} is still there", started.display());
    assert_torn_down(&case);
}

async fn timeout_tears_down(fixture: &Fixture) {
    let case = fixture.case(&PolicyCase { name: "slow", timeout: "2s", extra_checks: "", references_query: "SELECT storage_key FROM images" });
    let (run, json) = verify(&case, &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("verification.timeout") || run.stderr.contains("did not finish within"), "{}", run.stderr);
    let report = &json.unwrap()["report"];
    assert_eq!(report["result"], "fail");
    assert!(report["rto_seconds"].is_null(), "{report}");
    assert_torn_down(&case);
}

/// Starts a restore that pauses at its target instead of promoting, and checks that the
/// recovery check fails and names the pause. The local driver always promotes, so the test
/// builds the instance from the driver's dry-run plan with `recovery_target_action = 'pause'`.
async fn paused_recovery_fails(fixture: &Fixture) {
    let case = fixture.case(&PolicyCase { name: "paused", timeout: "5min", extra_checks: "", references_query: "SELECT storage_key FROM images" });
    let policy = policy_arg(&case);
    let window = visage(&["postgres", "window", "--policy", &policy, "--json"]).await;
    assert_eq!(window.code, Some(0), "{}", window.stderr);
    let window: Value = serde_json::from_str(&window.stdout).unwrap();
    let until: chrono::DateTime<chrono::Utc> = serde_json::from_value(window[0]["window"]["until"].clone()).unwrap();
    let target = (until - chrono::Duration::seconds(3)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let into = case.join("restore");
    let dry = visage(&[
        "restore", "postgres", "--policy", &policy, "--name", "app", "--target-time", &target,
        "--into", into.to_str().unwrap(), "--dry-run", "--json",
    ])
    .await;
    assert_eq!(dry.code, Some(0), "{}", dry.stderr);
    let plan: Value = serde_json::from_str(&dry.stdout).unwrap();
    let data = PathBuf::from(plan["data_dir"].as_str().unwrap());
    let server_bin = PathBuf::from(plan["server_bin"].as_str().unwrap());
    let port = plan["port"].as_u64().unwrap() as u16;

    let user = OsUser::lookup("postgres").unwrap();
    std::fs::create_dir_all(&into).unwrap();
    std::os::unix::fs::chown(&into, Some(user.uid), Some(user.gid)).unwrap();
    let as_postgres = |program: PathBuf| {
        let mut command = std::process::Command::new(program);
        std::os::unix::process::CommandExt::uid(&mut command, user.uid);
        std::os::unix::process::CommandExt::gid(&mut command, user.gid);
        command
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &user.home)
            .env("AWS_ACCESS_KEY_ID", &fixture.s3.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &fixture.s3.secret_key)
            .env("AWS_DEFAULT_REGION", &fixture.s3.region);
        command
    };
    let restored = as_postgres(pg::barman_bin().join("barman-cloud-restore"))
        .args(["--endpoint-url", &fixture.s3.endpoint, &format!("s3://{}/pg", fixture.pg_bucket), "main"])
        .arg(plan["backup"]["id"].as_str().unwrap())
        .arg(&data)
        .output()
        .unwrap();
    assert!(restored.status.success(), "barman-cloud-restore failed: {}", String::from_utf8_lossy(&restored.stderr));
    let mut settings = String::new();
    for pair in plan["recovery_settings"].as_array().unwrap() {
        let (name, value) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
        let value = if name == "recovery_target_action" { "'pause'" } else { value };
        settings.push_str(&format!("{name} = {value}\n"));
    }
    let auto_conf = data.join("postgresql.auto.conf");
    let mut conf = std::fs::read_to_string(&auto_conf).unwrap_or_default();
    conf.push_str(&settings);
    std::fs::write(&auto_conf, conf).unwrap();
    std::fs::write(data.join("recovery.signal"), b"").unwrap();
    for file in [&auto_conf, &data.join("recovery.signal")] {
        std::os::unix::fs::chown(file, Some(user.uid), Some(user.gid)).unwrap();
    }
    let log = std::fs::File::create(into.join("postgresql.log")).unwrap();
    let server = as_postgres(server_bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _server = ServerChild(server);

    // Wait until replay has paused at the target.
    let deadline = Instant::now() + Duration::from_secs(120);
    let client = loop {
        if let Ok(client) = pg::connect(port).await {
            let state: Option<String> = client.query_one("SELECT pg_get_wal_replay_pause_state()", &[]).await.ok().map(|r| r.get(0));
            if state.as_deref() == Some("paused") {
                break client;
            }
        }
        assert!(Instant::now() < deadline, "recovery did not pause: {}", std::fs::read_to_string(into.join("postgresql.log")).unwrap_or_default());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (outcome, _) = visage_dr::verify::database::check_recovery(&client).await;
    let details = outcome.expect_err("a paused instance fails the recovery check");
    assert!(details.starts_with("recovery is paused at its target and the instance was not promoted"), "{details}");
}

/// Runs the policy's verification job through the controller, as the CronJob does.
async fn run_job_verifies(fixture: &Fixture) {
    let case = fixture.case(&PolicyCase { name: "job", timeout: "5min", extra_checks: "", references_query: "SELECT storage_key FROM images" });
    let gateway = common::pushgateway::Pushgateway::start();
    let mut args = vec!["run".to_owned(), "--policy".into(), policy_arg(&case), "--job".into(), "verification".into(), "--json".into()];
    if let Some(g) = &gateway {
        args.extend(["--pushgateway".to_owned(), g.base.clone()]);
    }
    let run = visage(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stderr, run.stdout);
    if let Some(g) = &gateway {
        let pushed = g.metrics();
        let line = |prefix: &str| pushed.lines().find(|l| l.starts_with(prefix)).map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap());
        assert_eq!(line("visage_dr_verify_last_status{"), Some(1.0), "{pushed}");
        let restorable = line(r#"visage_dr_last_verified_restorable_timestamp_seconds{component="postgres:app""#);
        assert!(restorable.is_some_and(|t| t > 1.7e9), "{pushed}");
        assert!(line("visage_dr_verify_last_rto_seconds{").is_some_and(|s| s > 0.0), "{pushed}");
    }
    let jobs: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(jobs[0]["job"], "verification", "{jobs}");
    assert_eq!(jobs[0]["result"], "succeeded", "{jobs}");
    let id = jobs[0]["ids"][0].as_str().expect("the job names its report");
    let stored = case.join("repo/reports").join(id).join("report.json");
    let report: Value = serde_json::from_slice(&std::fs::read(&stored).unwrap()).unwrap();
    assert_eq!(report["result"], "pass", "{report}");
    assert_eq!(report["target_choice"], "random", "{report}");
    assert_torn_down(&case);
}

/// Overwrites an archived WAL segment that recovery needs, so that the restore cannot reach
/// its target. Runs after the other cases, since it damages the shared archive.
async fn broken_wal_fails_restore(fixture: &Fixture) {
    let case = fixture.case(&PolicyCase { name: "wal", timeout: "5min", extra_checks: "", references_query: "SELECT storage_key FROM images" });
    let window = visage(&["postgres", "window", "--policy", &policy_arg(&case), "--json"]).await;
    assert_eq!(window.code, Some(0), "{}", window.stderr);
    let window: Value = serde_json::from_str(&window.stdout).unwrap();
    let end_wal = window[0]["backups"][0]["end_wal"].as_str().unwrap().to_owned();
    let until: chrono::DateTime<chrono::Utc> = serde_json::from_value(window[0]["window"]["until"].clone()).unwrap();
    let target = (until - chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);

    let listing = fixture.s3.client().list_objects_v2().bucket(&fixture.pg_bucket).prefix("pg/main/wals/").send().await.unwrap();
    let segment_key = listing
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .filter(|k| k.rsplit('/').next().is_some_and(|name| name.len() == 24 && name > end_wal.as_str()))
        .min()
        .expect("a segment after the backup is archived")
        .to_owned();
    fixture.s3.put(&fixture.pg_bucket, &segment_key, vec![0; 1024 * 1024]).await;

    let (run, json) = verify(&case, &["--target-time", &target]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let report = &json.unwrap()["report"];
    let restore = report_check(report, "restore app");
    assert_eq!(restore["result"], "fail");
    let details = restore["details"].as_str().unwrap();
    assert!(details.starts_with("the restore did not become ready: PostgreSQL exited during recovery"), "{details}");
    assert!(details.contains("recovery ended before configured recovery target was reached"), "{details}");
    assert_eq!(report_check(report, "check users exist")["details"], "not run, because database app was not restored");
    assert!(report["rto_seconds"].is_null(), "{report}");
    assert!(run.stderr.contains("check \"restore app\" failed"), "{}", run.stderr);
    assert_torn_down(&case);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_cases_share_one_backup() {
    let setup_clock = Instant::now();
    let Some(fixture) = setup().await else { return };
    eprintln!("verify set-up took {:.1} s", setup_clock.elapsed().as_secs_f64());
    let clock = Instant::now();
    tokio::join!(
        passing_run(&fixture),
        failing_run(&fixture),
        keep_then_expire(&fixture),
        sigterm_tears_down(&fixture),
        timeout_tears_down(&fixture),
        run_job_verifies(&fixture),
        paused_recovery_fails(&fixture),
    );
    broken_wal_fails_restore(&fixture).await;
    eprintln!("verify cases took {:.1} s", clock.elapsed().as_secs_f64());
    fixture.canary_running.store(false, Ordering::Relaxed);
    let stop_clock = Instant::now();
    drop(fixture);
    eprintln!("stopping the source server took {:.1} s", stop_clock.elapsed().as_secs_f64());
}
