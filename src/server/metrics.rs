//! Prometheus metrics of the checkpoint API, exposed on `/metrics` in the
//! OpenMetrics text format that the `prometheus-client` crate writes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

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
struct JobLabel {
    job: String,
}

/// The registry and the metrics the handlers update.
pub struct Metrics {
    registry: Registry,
    pushes: Family<ResultLabel, Counter>,
    push_bytes: Counter,
    last_push: Family<JobLabel, Gauge<f64, AtomicU64>>,
}

impl Metrics {
    /// Registers every metric. Each `result` series of the push counter is
    /// created here, so it is exported with value 0 before the first push.
    pub fn new() -> Self {
        let mut registry = Registry::default();
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
        let last_push = Family::<JobLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "visage_dr_checkpoint_last_push_timestamp_seconds",
            "Unix time of the newest stored checkpoint of each job",
            last_push.clone(),
        );
        for result in PushResult::ALL {
            let _ = pushes.get_or_create(&ResultLabel { result: result.name().to_owned() });
        }
        Self { registry, pushes, push_bytes, last_push }
    }

    pub fn count_push(&self, result: PushResult) {
        self.pushes.get_or_create(&ResultLabel { result: result.name().to_owned() }).inc();
    }

    pub fn add_push_bytes(&self, bytes: u64) {
        self.push_bytes.inc_by(bytes);
    }

    /// Sets a job's last push time (Unix seconds).
    pub fn set_last_push(&self, job: &str, unix_seconds: f64) {
        self.last_push.get_or_create(&JobLabel { job: job.to_owned() }).set(unix_seconds);
    }

    /// Removes a job's last push series, when its last checkpoint was deleted.
    pub fn remove_job(&self, job: &str) {
        self.last_push.remove(&JobLabel { job: job.to_owned() });
    }

    /// Encodes every metric in the text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
