//! Assembly of a run's report: components and their outcome, RTO and RPO, the verified
//! snapshot records, and the stored report files.

use std::collections::HashMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::phase::{bucket_component, checkpoint_component, database_component, RunState};
use super::{rfc3339, Choice};
use crate::id::{ReportId, SnapshotId};
use crate::policy::Policy;
use crate::report::{
    self, BucketReport, CheckReport, CheckpointReport, ComponentReport, Outcome, Report, ReportError, ScratchReport,
    REPORT_SCHEMA, REPORT_VERSION,
};
use crate::repository::manifest::Manifest;
use crate::repository::Repository;
use crate::sources::checkpoint::CheckpointRecord;

pub(super) struct BuildInput<'a> {
    pub(super) id: ReportId,
    pub(super) policy: &'a Policy,
    pub(super) repo: &'a Repository,
    pub(super) started: DateTime<Utc>,
    pub(super) finished: DateTime<Utc>,
    pub(super) choice: &'a Choice,
    pub(super) checks_done: f64,
    pub(super) state: RunState,
    pub(super) bucket_snapshots: &'a HashMap<String, Manifest>,
    pub(super) checkpoints: &'a [CheckpointRecord],
    pub(super) scratch: ScratchReport,
}

pub(super) fn seconds_between(later: DateTime<Utc>, earlier: DateTime<Utc>) -> f64 {
    (later - earlier).num_milliseconds() as f64 / 1000.0
}

pub(super) fn build_report(input: BuildInput<'_>) -> Report {
    let state = input.state;
    let target = state.latest_target.unwrap_or(input.choice.target.as_datetime());
    let failed = |component: &str| state.checks.iter().any(|c| c.result == Outcome::Fail && c.component.as_deref() == Some(component));
    let outcome_of = |component: &str, present: bool| if present && !failed(component) { Outcome::Pass } else { Outcome::Fail };

    let mut components = Vec::new();
    for database in &input.policy.postgres {
        let component = database_component(&database.spec.name);
        let restored = state.databases.iter().any(|d| d.name == database.spec.name && d.ready_seconds.is_some());
        let result = outcome_of(&component, restored);
        components.push(ComponentReport { restorable_time: (result == Outcome::Pass).then_some(target), component, result });
    }
    let mut buckets = Vec::new();
    for bucket in &input.policy.buckets {
        let component = bucket_component(&bucket.name);
        let manifest = input.bucket_snapshots.get(&bucket.name);
        let result = outcome_of(&component, manifest.is_some());
        components.push(ComponentReport {
            component,
            result,
            restorable_time: manifest.filter(|_| result == Outcome::Pass).map(|m| m.time),
        });
        buckets.push(BucketReport {
            name: bucket.name.clone(),
            source: bucket.source_id.clone(),
            snapshot: manifest.map(|m| m.id.clone()),
            snapshot_time: manifest.map(|m| m.time),
            skew_seconds: manifest.map(|m| seconds_between(target, m.time)),
            objects: manifest.map(|m| m.entries.len() as u64).unwrap_or(0),
            sampled: state.sampled.get(&bucket.name).copied().unwrap_or(0),
        });
    }
    let mut checkpoints = Vec::new();
    for record in input.checkpoints {
        let component = checkpoint_component(&record.job);
        let result = outcome_of(&component, true);
        components.push(ComponentReport { restorable_time: (result == Outcome::Pass).then_some(record.time), component, result });
        checkpoints.push(CheckpointReport {
            job: record.job.clone(),
            step: record.step.clone(),
            snapshot: record.snapshot.clone(),
            time: record.time,
            skew_seconds: seconds_between(target, record.time),
            size: record.size,
        });
    }

    let failed_checks: Vec<&CheckReport> = state.checks.iter().filter(|c| c.result == Outcome::Fail).collect();
    let failed_components = components.iter().filter(|c| c.result == Outcome::Fail).count();
    let result = if failed_checks.is_empty() && failed_components == 0 { Outcome::Pass } else { Outcome::Fail };
    let failure = (result == Outcome::Fail).then(|| {
        let named: Vec<String> = failed_checks.iter().map(|c| format!("check \"{}\" failed: {}", c.name, c.details)).collect();
        if named.is_empty() {
            "a component was not verified".to_owned()
        } else {
            named.join("; ")
        }
    });
    // The newest change that every restored database contains is the oldest of their newest
    // changes, and the RPO is measured from there to the target.
    let newest_change = if state.databases.is_empty() || state.databases.iter().any(|d| d.newest_change.is_none()) {
        None
    } else {
        state.databases.iter().filter_map(|d| d.newest_change).min()
    };
    Report {
        schema: REPORT_SCHEMA.to_owned(),
        version: REPORT_VERSION,
        id: input.id,
        repository: input.repo.url().to_string(),
        started: input.started,
        finished: input.finished,
        target_time: target,
        target_choice: input.choice.choice,
        window: input.choice.window,
        result,
        failure,
        rto_seconds: state.ready_seconds,
        rto_checks_seconds: input.checks_done,
        rpo_seconds: newest_change.map(|newest| seconds_between(target, newest)),
        newest_change,
        databases: state.databases,
        buckets,
        checkpoints,
        checks: state.checks,
        components,
        scratch: input.scratch,
    }
}

/// Records each bucket and checkpoint snapshot that passed under `catalogue/verified/`, which
/// prune keeps as the newest verified snapshot of its source.
pub(super) async fn record_verified(repo: &Repository, report: &Report, buckets: &HashMap<String, Manifest>, checkpoints: &[CheckpointRecord]) {
    let passed = |component: String| report.components.iter().any(|c| c.component == component && c.result == Outcome::Pass);
    let mut verified: Vec<&SnapshotId> = Vec::new();
    for (name, manifest) in buckets {
        if passed(bucket_component(name)) {
            verified.push(&manifest.id);
        }
    }
    for record in checkpoints {
        if passed(checkpoint_component(&record.job)) {
            verified.push(&record.snapshot);
        }
    }
    for id in verified {
        let body = serde_json::json!({ "snapshot": id, "report": report.id, "verified": rfc3339(report.finished) });
        let key = crate::prune::verified_key(id);
        match repo.backend().put(&key, Bytes::from(body.to_string())).await {
            Ok(()) => info!(snapshot.id = %id, "snapshot recorded as verified"),
            Err(e) => warn!(snapshot.id = %id, error = %e, "could not record the snapshot as verified; prune treats it as unverified"),
        }
    }
}

/// Renders the report, writes it into `report_dir` when given, and stores it in the
/// repository. Returns the file locations.
pub(super) async fn store_report(repo: &Repository, report: &Report, report_dir: Option<&std::path::Path>) -> Result<Vec<String>, ReportError> {
    let history = match report::load_recent(repo, report::CHART_RUNS - 1).await {
        Ok(history) => history,
        Err(e) => {
            warn!(error = %e, "could not read earlier reports; the chart shows this run only");
            Vec::new()
        }
    };
    let files = report::render(report, &history);
    let mut locations = Vec::new();
    if let Some(dir) = report_dir {
        locations.extend(report::write_dir(dir, &files)?.into_iter().map(|p| p.display().to_string()));
    }
    let mut stored = report::store(repo, report, &files).await?;
    stored.append(&mut locations);
    Ok(stored)
}
