//! `visage-dr serve --policy`: the controller fires policy jobs, exports
//! their metrics from start-up, reloads the policy file, and shuts down
//! cleanly on SIGTERM; `visage-dr run --pushgateway` pushes the same figures.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pg::free_port;
use common::*;

/// A `visage-dr serve` process with JSON logs in a file.
struct Serve {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Serve {
    fn start(dir: &Path, policy: &str, env: &[(&str, String)], extra: &[&str]) -> Serve {
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, "reader-token-0123456789 read\n").unwrap();
        let port = free_port();
        let log = dir.join(format!("serve-{port}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_visage-dr"));
        cmd.args(["--log-format", "json", "serve", "--policy", policy, "--tokens-file"])
            .arg(&tokens)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--reload-interval", "1"])
            .args(extra)
            .env_remove("VISAGE_DR_REPO")
            .env("VISAGE_DR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("visage-dr serve starts");
        let serve = Serve { child, base: format!("http://127.0.0.1:{port}"), log };
        serve.wait_for("the health endpoint", Duration::from_secs(30), || {
            reqwest::blocking_get_ok(&format!("{}/healthz", serve.base))
        });
        serve
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        reqwest::blocking_get_text(&format!("{}/metrics", self.base)).unwrap_or_default()
    }

    /// Returns the value of the sample whose name and labels start with `series`.
    fn metric(&self, series: &str) -> Option<f64> {
        sample(&self.metrics(), series)
    }

    fn wait_for(&self, what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ok() {
            assert!(start.elapsed() < timeout, "timed out waiting for {what}; serve log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_metric(&self, series: &str, expected: f64) {
        self.wait_for(&format!("{series} = {expected}"), Duration::from_secs(60), || self.metric(series) == Some(expected));
    }

    /// Sends SIGTERM and returns the exit code and how long the exit took.
    fn terminate(mut self) -> (Option<i32>, Duration, String) {
        let start = Instant::now();
        // SAFETY: kill(2) on the PID of a child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), start.elapsed(), self.log());
            }
            assert!(start.elapsed() < Duration::from_secs(60), "serve did not exit after SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Blocking HTTP helpers, each request on its own thread and runtime, so
/// tests can poll from plain loops inside their async body.
mod reqwest {
    fn blocking<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
        std::thread::spawn(move || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f))
            .join()
            .unwrap()
    }

    pub fn blocking_get_text(url: &str) -> Option<String> {
        let url = url.to_owned();
        blocking(async move { ::reqwest::get(url).await.ok()?.text().await.ok() })
    }

    pub fn blocking_get_ok(url: &str) -> bool {
        let url = url.to_owned();
        blocking(async move { ::reqwest::get(url).await.map(|r| r.status().is_success()).unwrap_or(false) })
    }
}

/// Returns the value of the first sample in `text` whose name and labels start with
/// `series`, such as `visage_dr_job_last_run_status{job_name="bucket:a"`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '}', ',']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[derive(Clone, Copy)]
struct BucketJob<'a> {
    name: &'a str,
    bucket: &'a str,
    schedule: Option<&'a str>,
}

fn policy_text(repo: &Path, server: &S3Server, jobs: &[BucketJob]) -> String {
    let mut text = format!("repository:\n  url: file://{}\nsource_s3:\n  endpoint: {}\nbuckets:\n", repo.display(), server.endpoint);
    for j in jobs {
        text.push_str(&format!("  - name: {}\n    bucket: {}\n    retention: {{keep_last: 2}}\n", j.name, j.bucket));
        if let Some(s) = j.schedule {
            text.push_str(&format!("    schedule: \"{s}\"\n"));
        }
    }
    text
}

fn write_policy(path: &Path, text: &str) {
    // Written beside and renamed, as a ConfigMap volume swaps its files.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn snapshot_count(repo: &Path, env: &[(&str, String)]) -> usize {
    let url = format!("file://{}", repo.display());
    let out = visage_dr(&["snapshots", "--repo", &url, "--json"], env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap().len()
}

fn lock_files(repo: &Path) -> Vec<String> {
    match std::fs::read_dir(repo.join("locks")) {
        Ok(dir) => dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_exports_job_metrics_from_start() {
    let Some(server) = garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = server.new_bucket("serve-src").await;
    for i in 0..3 {
        server.put(&src, &format!("photo-{i}.jpg"), random_bytes(30_000, i)).await;
    }
    let other = server.new_bucket("serve-manual").await;
    let repo = dir.path().join("repo");
    let policy = dir.path().join("policy.yaml");
    let jobs = [
        BucketJob { name: "fast", bucket: &src, schedule: Some("* * * * *") },
        BucketJob { name: "manual", bucket: &other, schedule: None },
    ];
    write_policy(&policy, &policy_text(&repo, &server, &jobs));
    let started = chrono::Utc::now().timestamp() as f64;
    let serve = Serve::start(dir.path(), policy.to_str().unwrap(), &server.env(), &[]);

    // Series of a job that has not run exist from start-up, as never succeeded.
    let text = serve.metrics();
    assert_eq!(sample(&text, "visage_dr_up"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "visage_dr_policy_loaded"), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"visage_dr_job_last_run_status{job_name="bucket:manual""#), Some(0.0), "{text}");
    assert_eq!(sample(&text, r#"visage_dr_job_last_success_timestamp_seconds{job_name="bucket:manual""#), Some(0.0), "{text}");
    assert_eq!(sample(&text, r#"visage_dr_job_runs_total{job_name="bucket:manual",result="failed""#), Some(0.0), "{text}");
    assert_eq!(sample(&text, r#"visage_dr_job_schedule_interval_seconds{job_name="bucket:fast""#), Some(60.0), "{text}");
    assert_eq!(sample(&text, r#"visage_dr_last_verified_restorable_timestamp_seconds{component="bucket:manual""#), Some(0.0), "{text}");

    // A job that never ran runs its latest slot at once.
    serve.wait_metric(r#"visage_dr_job_last_run_status{job_name="bucket:fast""#, 1.0);
    let text = serve.metrics();
    let success = sample(&text, r#"visage_dr_job_last_success_timestamp_seconds{job_name="bucket:fast""#).unwrap();
    assert!(success >= started, "last success {success} is before the start {started}");
    assert_eq!(sample(&text, r#"visage_dr_job_last_run_objects{job_name="bucket:fast""#), Some(3.0), "{text}");
    assert!(sample(&text, r#"visage_dr_job_last_run_bytes{job_name="bucket:fast""#).unwrap() > 0.0, "{text}");
    assert!(sample(&text, r#"visage_dr_job_runs_total{job_name="bucket:fast",result="succeeded""#).unwrap() >= 1.0, "{text}");
    assert_eq!(sample(&text, r#"visage_dr_job_last_run_status{job_name="bucket:manual""#), Some(0.0), "an unscheduled job does not run: {text}");

    let ready = reqwest::blocking_get_text(&format!("{}/readyz", serve.base)).unwrap();
    assert!(ready.contains(r#""policy":"loaded""#), "{ready}");
    let (code, _, log) = serve.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains(r#""job.name":"bucket:fast""#), "logs name the job: {log}");
    assert!(snapshot_count(&repo, &server.env()) >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_reload_keeps_old_policy_when_invalid() {
    let Some(server) = garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = server.new_bucket("serve-reload").await;
    server.put(&src, "a.jpg", random_bytes(10_000, 7)).await;
    let src2 = server.new_bucket("serve-reload-2").await;
    server.put(&src2, "b.jpg", random_bytes(10_000, 8)).await;
    let repo = dir.path().join("repo");
    let policy = dir.path().join("policy.yaml");
    let one = BucketJob { name: "one", bucket: &src, schedule: Some("0 * * * *") };
    let two = BucketJob { name: "two", bucket: &src2, schedule: Some("0 * * * *") };
    write_policy(&policy, &policy_text(&repo, &server, &[one]));
    let serve = Serve::start(dir.path(), policy.to_str().unwrap(), &server.env(), &[]);
    serve.wait_metric(r#"visage_dr_job_last_run_status{job_name="bucket:one""#, 1.0);

    // An invalid file is rejected, and the policy in force stays.
    let broken = policy_text(&repo, &server, &[one]).replace("    bucket:", "    bukket:");
    write_policy(&policy, &broken);
    serve.wait_metric(r#"visage_dr_policy_reloads_total{result="rejected""#, 1.0);
    let log = serve.log();
    assert!(log.contains("policy reload rejected"), "{log}");
    assert!(log.contains("bukket"), "the error names the bad field: {log}");
    assert!(reqwest::blocking_get_ok(&format!("{}/readyz", serve.base)), "still ready with the old policy");
    assert_eq!(serve.metric(r#"visage_dr_job_last_run_status{job_name="bucket:one""#), Some(1.0));

    // A valid change takes effect without a restart: the new job runs.
    write_policy(&policy, &policy_text(&repo, &server, &[one, two]));
    serve.wait_metric(r#"visage_dr_policy_reloads_total{result="applied""#, 1.0);
    serve.wait_metric(r#"visage_dr_job_last_run_status{job_name="bucket:two""#, 1.0);

    // A job the policy drops loses its series.
    write_policy(&policy, &policy_text(&repo, &server, &[two]));
    serve.wait_metric(r#"visage_dr_policy_reloads_total{result="applied""#, 2.0);
    let text = serve.metrics();
    assert!(!text.contains(r#"job_name="bucket:one""#), "{text}");
    assert_eq!(sample(&text, r#"visage_dr_job_last_run_status{job_name="bucket:two""#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"visage_dr_policy_reloads_total{result="rejected""#), Some(1.0), "{text}");
    let (code, _, log) = serve.terminate();
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn api_only_serves_checkpoints_and_runs_no_job() {
    let Some(server) = garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = server.new_bucket("serve-api-only").await;
    server.put(&src, "a.jpg", random_bytes(1_000, 5)).await;
    let repo = dir.path().join("repo");
    let policy = dir.path().join("policy.yaml");
    write_policy(&policy, &policy_text(&repo, &server, &[BucketJob { name: "one", bucket: &src, schedule: Some("* * * * *") }]));
    let serve = Serve::start(dir.path(), policy.to_str().unwrap(), &server.env(), &["--api-only"]);
    let ready = reqwest::blocking_get_text(&format!("{}/readyz", serve.base)).unwrap();
    assert!(ready.contains(r#""policy":"loaded""#), "{ready}");
    assert_eq!(serve.metric("visage_dr_policy_loaded"), Some(1.0));
    // A job that never ran would fire at once under the scheduler.
    std::thread::sleep(Duration::from_secs(3));
    let (code, _, log) = serve.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("job fired"), "{log}");
    assert_eq!(snapshot_count(&repo, &server.env()), 0);
}

/// Creates a bucket whose snapshot takes a few seconds, so SIGTERM lands mid-run.
async fn slow_bucket(server: &S3Server) -> String {
    let src = server.new_bucket("serve-slow").await;
    for i in 0..48 {
        server.put(&src, &format!("weights/part-{i:03}.bin"), random_bytes(2 << 20, 100 + i)).await;
    }
    src
}

/// Waits until the snapshot in flight holds its repository lock.
fn wait_job_locked(serve: &Serve, repo: &Path) {
    serve.wait_for("the job to take its lock", Duration::from_secs(60), || !lock_files(repo).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_abandons_run_and_releases_locks() {
    let Some(server) = garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = slow_bucket(&server).await;
    let repo = dir.path().join("repo");
    let policy = dir.path().join("policy.yaml");
    write_policy(&policy, &policy_text(&repo, &server, &[BucketJob { name: "big", bucket: &src, schedule: Some("0 * * * *") }]));
    let env = server.env();

    // With no grace, the run in flight is abandoned at once.
    let serve = Serve::start(dir.path(), policy.to_str().unwrap(), &env, &["--shutdown-grace", "0"]);
    wait_job_locked(&serve, &repo);
    let (code, took, log) = serve.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(took < Duration::from_secs(20), "exit took {took:?}");
    assert!(log.contains("run abandoned"), "{log}");
    assert!(log.contains("lock of an abandoned run released"), "{log}");
    assert_eq!(lock_files(&repo), Vec::<String>::new(), "no lock is left behind");
    assert_eq!(snapshot_count(&repo, &env), 0, "an abandoned snapshot is not visible");
    let url = format!("file://{}", repo.display());
    let out = visage_dr(&["check", "--repo", &url], &env);
    assert_eq!(out.status.code(), Some(0), "the repository stays consistent: {}", text(&out).1);

    // With a grace, the run in flight finishes before the process exits.
    let serve = Serve::start(dir.path(), policy.to_str().unwrap(), &env, &["--shutdown-grace", "120"]);
    wait_job_locked(&serve, &repo);
    let (code, _, log) = serve.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("run finished after the shutdown signal"), "{log}");
    assert!(!log.contains("run abandoned"), "{log}");
    assert_eq!(lock_files(&repo), Vec::<String>::new());
    assert_eq!(snapshot_count(&repo, &env), 1, "the run in flight completed its snapshot");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_pushes_each_jobs_figures_to_a_pushgateway() {
    let Some(server) = garage() else { return };
    let Some(gateway) = common::pushgateway::Pushgateway::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = server.new_bucket("push-src").await;
    server.put(&src, "a.jpg", random_bytes(20_000, 3)).await;
    server.put(&src, "b.jpg", random_bytes(20_000, 4)).await;
    let repo = dir.path().join("repo");
    let policy = dir.path().join("policy.yaml");
    let jobs = [
        BucketJob { name: "ok", bucket: &src, schedule: Some("0 */6 * * *") },
        BucketJob { name: "gone", bucket: "no-such-bucket-push", schedule: Some("0 */6 * * *") },
    ];
    write_policy(&policy, &policy_text(&repo, &server, &jobs));
    let policy = policy.to_str().unwrap();
    let mut env = server.env();
    env.push(("VISAGE_DR_PUSHGATEWAY", gateway.base.clone()));

    let out = visage_dr(&["run", "--policy", policy, "--all"], &env);
    assert_eq!(out.status.code(), Some(1), "one job fails: {}", text(&out).1);
    let pushed = gateway.metrics();
    let ok = r#"visage_dr_job_last_run_status{instance="",job="visage-dr",job_name="bucket:ok""#;
    let gone = r#"visage_dr_job_last_run_status{instance="",job="visage-dr",job_name="bucket:gone""#;
    assert_eq!(sample(&pushed, ok), Some(1.0), "{pushed}");
    assert_eq!(sample(&pushed, gone), Some(0.0), "{pushed}");
    let objects = r#"visage_dr_job_last_run_objects{instance="",job="visage-dr",job_name="bucket:ok""#;
    assert_eq!(sample(&pushed, objects), Some(2.0), "{pushed}");
    let interval = r#"visage_dr_job_schedule_interval_seconds{instance="",job="visage-dr",job_name="bucket:ok""#;
    assert_eq!(sample(&pushed, interval), Some(21600.0), "{pushed}");

    // A later failure of the same job keeps its last success in the push.
    let success = r#"visage_dr_job_last_success_timestamp_seconds{instance="",job="visage-dr",job_name="bucket:ok""#;
    let first_success = sample(&pushed, success).unwrap();
    assert!(first_success > 0.0, "{pushed}");
    let mut bad_env = env.clone();
    bad_env.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
    bad_env.push(("AWS_SECRET_ACCESS_KEY", "wrong-secret".into()));
    let out = visage_dr(&["run", "--policy", policy, "--job", "bucket:ok"], &bad_env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out).1);
    let pushed = gateway.metrics();
    assert_eq!(sample(&pushed, ok), Some(0.0), "{pushed}");
    assert_eq!(sample(&pushed, success), Some(first_success), "{pushed}");

    // An unreachable Pushgateway fails the run, and the error names it and the job.
    let mut env = server.env();
    let closed = format!("http://127.0.0.1:{}", free_port());
    env.push(("VISAGE_DR_PUSHGATEWAY", closed.clone()));
    let out = visage_dr(&["run", "--policy", policy, "--job", "bucket:ok"], &env);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&closed), "{stderr}");
    assert!(stderr.contains("bucket:ok"), "{stderr}");
}
