//! Prometheus metrics of `visage-dr serve` (the checkpoint API and the
//! policy jobs it schedules) and of `visage-dr run`, in the OpenMetrics text
//! format that the `prometheus-client` crate writes.
//!
//! Policy jobs are labelled `job_name` and training jobs `checkpoint_job`:
//! Prometheus attaches its own `job` label to every scraped series, and the
//! Pushgateway uses `job` in its grouping key, so neither name is `job`.
//!
//! `deploy/monitoring/metrics.txt` lists every metric name; a test compares
//! it with what [`Metrics::encode`] writes.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::controller::{JobReport, JobResult};

/// Outcome of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResult {
    /// A new checkpoint was stored (201).
    Created,
    /// The same content was stored already (200).
    Duplicate,
    /// The request was invalid or not allowed (4xx).
    Rejected,
    /// The server or the connection failed (5xx, or the client went away).
    Failed,
}

impl PushResult {
    pub const ALL: [PushResult; 4] = [PushResult::Created, PushResult::Duplicate, PushResult::Rejected, PushResult::Failed];

    pub fn name(self) -> &'static str {
        match self {
            PushResult::Created => "created",
            PushResult::Duplicate => "duplicate",
            PushResult::Rejected => "rejected",
            PushResult::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckpointJobLabel {
    checkpoint_job: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job_name: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobResultLabels {
    job_name: String,
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabel {
    component: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn job_label(job: &str) -> JobLabel {
    JobLabel { job_name: job.to_owned() }
}

/// The gauges that describe the last run of each policy job. They are all
/// gauges so that `visage-dr run` can push them to a Pushgateway, whose text
/// format has no OpenMetrics counters.
#[derive(Clone, Default)]
pub struct JobGauges {
    last_success: Family<JobLabel, FloatGauge>,
    last_status: Family<JobLabel, Gauge>,
    duration: Family<JobLabel, FloatGauge>,
    bytes: Family<JobLabel, Gauge>,
    objects: Family<JobLabel, Gauge>,
    interval: Family<JobLabel, FloatGauge>,
}

impl JobGauges {
    /// Registers the job gauges in `registry`.
    pub fn register(registry: &mut Registry) -> JobGauges {
        let g = JobGauges::default();
        registry.register(
            "visage_dr_job_last_success_timestamp_seconds",
            "Unix time at which the job last succeeded; 0 when it never has",
            g.last_success.clone(),
        );
        registry.register(
            "visage_dr_job_last_run_status",
            "1 when the job's last run succeeded, 0 when it failed or has not run",
            g.last_status.clone(),
        );
        registry.register("visage_dr_job_last_run_duration_seconds", "Duration of the job's last run", g.duration.clone());
        registry.register("visage_dr_job_last_run_bytes", "Bytes the job's last run wrote to the repository", g.bytes.clone());
        registry.register("visage_dr_job_last_run_objects", "Objects the job's last run read or recorded", g.objects.clone());
        registry.register(
            "visage_dr_job_schedule_interval_seconds",
            "Typical time between two slots of the job's schedule; 0 for a job without a schedule",
            g.interval.clone(),
        );
        g
    }

    /// Creates every series of `job`, so a job that has not run yet is
    /// exported as never succeeded rather than missing.
    pub fn declare(&self, job: &str, interval_seconds: f64, last_success_unix: Option<f64>) {
        let label = job_label(job);
        self.interval.get_or_create(&label).set(interval_seconds);
        let _ = self.duration.get_or_create(&label);
        let _ = self.bytes.get_or_create(&label);
        let _ = self.objects.get_or_create(&label);
        let _ = self.last_status.get_or_create(&label);
        let success = self.last_success.get_or_create(&label);
        if let Some(t) = last_success_unix {
            if t > success.get() {
                success.set(t);
            }
        }
    }

    /// Records a finished run. A skipped run changes nothing; a failed run,
    /// partial ones included, sets the status to 0 and keeps the last success.
    pub fn record(&self, report: &JobReport, finished_unix: f64) {
        let label = job_label(&report.job);
        match report.result {
            JobResult::Skipped => return,
            JobResult::Succeeded => {
                self.last_success.get_or_create(&label).set(finished_unix);
                self.last_status.get_or_create(&label).set(1);
            }
            JobResult::Failed => {
                self.last_status.get_or_create(&label).set(0);
            }
        }
        self.duration.get_or_create(&label).set(report.seconds);
        self.bytes.get_or_create(&label).set(clamp(report.bytes));
        self.objects.get_or_create(&label).set(clamp(report.objects));
    }

    /// Removes the series of a job that a reloaded policy no longer has.
    pub fn forget(&self, job: &str) {
        let label = job_label(job);
        self.last_success.remove(&label);
        self.last_status.remove(&label);
        self.duration.remove(&label);
        self.bytes.remove(&label);
        self.objects.remove(&label);
        self.interval.remove(&label);
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Outcome of a policy file reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Applied,
    Rejected,
}

impl ReloadResult {
    fn name(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Rejected => "rejected",
        }
    }
}

/// The figures of the last restore verifications, read from stored reports.
#[derive(Debug, Clone, PartialEq)]
pub struct VerificationFigures {
    pub passed: bool,
    /// Recovery time of the newest run; 0 when it has none.
    pub rto_seconds: f64,
    /// Per component, the Unix time of the newest instant a passing run verified.
    pub restorable: Vec<(String, f64)>,
}

/// The verification gauges, in a registry of their own or of [`Metrics`].
#[derive(Clone, Default)]
struct VerificationGauges {
    restorable: Family<ComponentLabel, FloatGauge>,
    status: Gauge,
    rto: FloatGauge,
}

impl VerificationGauges {
    fn register(registry: &mut Registry) -> VerificationGauges {
        let g = VerificationGauges::default();
        registry.register(
            "visage_dr_last_verified_restorable_timestamp_seconds",
            "Newest instant that a verification run restored and checked, per component (postgres:<db>, bucket:<name>, checkpoints:<job>)",
            g.restorable.clone(),
        );
        registry.register(
            "visage_dr_verify_last_status",
            "1 when the last restore verification passed, 0 when it failed or none has run",
            g.status.clone(),
        );
        registry.register(
            "visage_dr_verify_last_rto_seconds",
            "Seconds from the start of the last restore verification until its restore was ready",
            g.rto.clone(),
        );
        g
    }

    fn set(&self, figures: &VerificationFigures) {
        self.status.set(i64::from(figures.passed));
        self.rto.set(figures.rto_seconds);
        for (component, unix) in &figures.restorable {
            self.restorable.get_or_create(&ComponentLabel { component: component.clone() }).set(*unix);
        }
    }
}

/// The registry and the metrics that the handlers and the scheduler update.
pub struct Metrics {
    registry: Registry,
    pushes: Family<ResultLabel, Counter>,
    push_bytes: Counter,
    last_push: Family<CheckpointJobLabel, FloatGauge>,
    pub jobs: JobGauges,
    runs: Family<JobResultLabels, Counter>,
    verification: VerificationGauges,
    policy_loaded: Gauge,
    reloads: Family<ResultLabel, Counter>,
}

impl Metrics {
    /// Registers every metric. Series without a label, and each `result`
    /// series of the counters, are created here, so they are exported with
    /// value 0 before the first event.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let up = Gauge::<i64>::default();
        up.set(1);
        registry.register("visage_dr_up", "1 while the visage-dr process runs", up);
        let pushes = Family::<ResultLabel, Counter>::default();
        // The library appends `_total` to counter names.
        registry.register(
            "visage_dr_checkpoint_pushes",
            "Checkpoint pushes by result: created, duplicate, rejected or failed",
            pushes.clone(),
        );
        let push_bytes = Counter::default();
        registry.register(
            "visage_dr_checkpoint_push_bytes",
            "Request body bytes received by checkpoint pushes, whatever their result",
            push_bytes.clone(),
        );
        let last_push = Family::<CheckpointJobLabel, FloatGauge>::default();
        registry.register(
            "visage_dr_checkpoint_last_push_timestamp_seconds",
            "Unix time of the newest stored checkpoint of each training job",
            last_push.clone(),
        );
        for result in PushResult::ALL {
            let _ = pushes.get_or_create(&ResultLabel { result: result.name().to_owned() });
        }
        let jobs = JobGauges::register(&mut registry);
        let runs = Family::<JobResultLabels, Counter>::default();
        registry.register("visage_dr_job_runs", "Finished runs of each policy job by result", runs.clone());
        let verification = VerificationGauges::register(&mut registry);
        let policy_loaded = Gauge::default();
        registry.register(
            "visage_dr_policy_loaded",
            "1 when a valid policy is in force, 0 when serve runs without one",
            policy_loaded.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "visage_dr_policy_reloads",
            "Policy file changes seen by serve, by result: applied or rejected",
            reloads.clone(),
        );
        for result in [ReloadResult::Applied, ReloadResult::Rejected] {
            let _ = reloads.get_or_create(&ResultLabel { result: result.name().to_owned() });
        }
        Self {
            registry,
            pushes,
            push_bytes,
            last_push,
            jobs,
            runs,
            verification,
            policy_loaded,
            reloads,
        }
    }

    pub fn count_push(&self, result: PushResult) {
        self.pushes.get_or_create(&ResultLabel { result: result.name().to_owned() }).inc();
    }

    pub fn add_push_bytes(&self, bytes: u64) {
        self.push_bytes.inc_by(bytes);
    }

    /// Sets a training job's last push time (Unix seconds).
    pub fn set_last_push(&self, job: &str, unix_seconds: f64) {
        self.last_push.get_or_create(&CheckpointJobLabel { checkpoint_job: job.to_owned() }).set(unix_seconds);
    }

    /// Removes a training job's last push series, when its last checkpoint was deleted.
    pub fn remove_job(&self, job: &str) {
        self.last_push.remove(&CheckpointJobLabel { checkpoint_job: job.to_owned() });
    }

    /// Creates the series of a policy job: its gauges and a run counter per result.
    pub fn declare_job(&self, job: &str, interval_seconds: f64, last_success_unix: Option<f64>) {
        self.jobs.declare(job, interval_seconds, last_success_unix);
        for result in [JobResult::Succeeded, JobResult::Failed, JobResult::Skipped] {
            let _ = self.runs.get_or_create(&JobResultLabels { job_name: job.to_owned(), result: result.to_string() });
        }
    }

    /// Removes the series of a policy job that a reloaded policy dropped.
    pub fn forget_job(&self, job: &str) {
        self.jobs.forget(job);
        for result in [JobResult::Succeeded, JobResult::Failed, JobResult::Skipped] {
            self.runs.remove(&JobResultLabels { job_name: job.to_owned(), result: result.to_string() });
        }
    }

    /// Records a finished run of a policy job.
    pub fn record_job(&self, report: &JobReport, finished_unix: f64) {
        self.jobs.record(report, finished_unix);
        self.runs.get_or_create(&JobResultLabels { job_name: report.job.clone(), result: report.result.to_string() }).inc();
    }

    /// Sets the verification series from the figures of the stored reports.
    pub fn set_verification(&self, figures: &VerificationFigures) {
        self.verification.set(figures);
    }

    /// Declares the per-component verification series with value 0.
    pub fn declare_components(&self, components: &[String]) {
        for c in components {
            let _ = self.verification.restorable.get_or_create(&ComponentLabel { component: c.clone() });
        }
    }

    pub fn set_policy_loaded(&self, loaded: bool) {
        self.policy_loaded.set(i64::from(loaded));
    }

    pub fn policy_loaded(&self) -> bool {
        self.policy_loaded.get() == 1
    }

    pub fn count_reload(&self, result: ReloadResult) {
        self.reloads.get_or_create(&ResultLabel { result: result.name().to_owned() }).inc();
    }

    /// Encodes every metric in the text format.
    pub fn encode(&self) -> String {
        encode(&self.registry)
    }
}

/// Encodes a registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String cannot fail");
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Failure to push metrics to a Pushgateway.
#[derive(Debug, thiserror::Error)]
pub enum PushgatewayError {
    #[error("invalid Pushgateway URL {url:?}: {reason}; give it as http://HOST:PORT")]
    Url { url: String, reason: String },
    #[error("cannot push the metrics of job {job} to the Pushgateway at {url}: {reason}")]
    Push { url: String, job: String, reason: String },
}

/// Pushes the gauges of one policy job's run, and for the verification job
/// the verification figures too, to a Pushgateway, replacing the
/// group `{job="visage-dr", job_name=JOB}`, so that each policy job keeps
/// its own figures between the short-lived runs of a CronJob.
/// `last_success_unix` is the job's last success before this run, kept when
/// this run failed.
pub async fn push_job(
    gateway: &str,
    report: &JobReport,
    interval_seconds: f64,
    last_success_unix: Option<f64>,
    verification: Option<&VerificationFigures>,
) -> Result<(), PushgatewayError> {
    use base64::Engine;
    let base = url::Url::parse(gateway).map_err(|e| PushgatewayError::Url { url: gateway.to_owned(), reason: e.to_string() })?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(PushgatewayError::Url { url: gateway.to_owned(), reason: format!("the scheme {} is not http or https", base.scheme()) });
    }
    let mut registry = Registry::default();
    let gauges = JobGauges::register(&mut registry);
    gauges.declare(&report.job, interval_seconds, last_success_unix);
    // A successful run's own record is the last success.
    let finished = last_success_unix.unwrap_or_else(|| chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    gauges.record(report, finished);
    if let Some(figures) = verification {
        VerificationGauges::register(&mut registry).set(figures);
    }
    // Label values go base64url-encoded, since a job name contains `:`.
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(report.job.as_bytes());
    let url = format!("{}/metrics/job/visage-dr/job_name@base64/{encoded}", gateway.trim_end_matches('/'));
    let failed = |reason: String| PushgatewayError::Push { url: gateway.to_owned(), job: report.job.clone(), reason };
    let response = reqwest::Client::new()
        .put(&url)
        .header(reqwest::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
        .body(encode(&registry))
        .send()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        return Err(failed(format!("HTTP {status}: {}", body.trim())));
    }
    Ok(())
}
