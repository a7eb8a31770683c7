//! The verification metrics, computed from stored reports:
//! `visage_dr_verify_last_status` and
//! `visage_dr_last_verified_restorable_timestamp_seconds{component}`.
//!
//! This module only computes the values, and the caller's metrics registry exports them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::report::{self, Outcome, Report, ReportError};
use crate::repository::Repository;

/// Reports read to find each component's last verified instant. A component that no run of
/// the last half year verified has no value, which an alert on the metric's absence catches.
pub const METRICS_HISTORY: usize = 26;

/// Values of the verification metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyMetrics {
    /// Result of the newest run: the value of `visage_dr_verify_last_status`, 1 for a pass
    /// and 0 for a failure.
    pub last_status: Outcome,
    /// Start of the newest run.
    pub last_run: DateTime<Utc>,
    /// Per component (`postgres:<name>`, `bucket:<name>`, `checkpoints:<job>`), the newest
    /// instant that a run showed it can be restored to: the value of
    /// `visage_dr_last_verified_restorable_timestamp_seconds{component}`. A component whose
    /// newest run failed keeps the instant of its last passing run.
    pub last_verified_restorable_timestamp: BTreeMap<String, DateTime<Utc>>,
}

impl VerifyMetrics {
    /// Computes the metrics from `reports`, in any order. `None` when there is no report.
    pub fn from_reports(reports: &[Report]) -> Option<VerifyMetrics> {
        let newest = reports.iter().max_by_key(|r| (r.started, r.id.clone()))?;
        let mut verified: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
        for report in reports {
            for component in report.components.iter().filter(|c| c.result == Outcome::Pass) {
                if let Some(time) = component.restorable_time {
                    let entry = verified.entry(component.component.clone()).or_insert(time);
                    *entry = (*entry).max(time);
                }
            }
        }
        Some(VerifyMetrics { last_status: newest.result, last_run: newest.started, last_verified_restorable_timestamp: verified })
    }

    /// Reads the last [`METRICS_HISTORY`] reports of `repo` and computes the metrics.
    pub async fn load(repo: &Repository) -> Result<Option<VerifyMetrics>, ReportError> {
        let reports = report::load_recent(repo, METRICS_HISTORY).await?;
        Ok(VerifyMetrics::from_reports(&reports))
    }

    /// Returns the value of `visage_dr_verify_last_status`: 1 for a pass, 0 for a failure.
    pub fn last_status_value(&self) -> i64 {
        match self.last_status {
            Outcome::Pass => 1,
            Outcome::Fail => 0,
        }
    }

    /// Returns each component with its Unix time in seconds, for the timestamp gauge.
    pub fn restorable_timestamp_seconds(&self) -> impl Iterator<Item = (&str, f64)> {
        self.last_verified_restorable_timestamp
            .iter()
            .map(|(component, time)| (component.as_str(), time.timestamp_millis() as f64 / 1000.0))
    }
}
