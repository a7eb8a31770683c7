//! The state machine that turns the phases of one Backup resource into an outcome.
//!
//! Phases match exactly, with CNPG's spelling: `completed` is success, `failed` is failure,
//! and `walArchivingFailing` is a failure once it persists past a grace period, because CNPG
//! never retries it. Every other phase, known or not (`""`, `pending`, `started`,
//! `running`, `finalizing`, or one a newer CNPG adds), means the backup is still in
//! progress. A backup seen `completed` stays completed: a later phase only adds a warning.

use std::time::Duration;

use chrono::{DateTime, Utc};

pub const PHASE_COMPLETED: &str = "completed";
pub const PHASE_FAILED: &str = "failed";
pub const PHASE_WAL_ARCHIVING_FAILING: &str = "walArchivingFailing";

/// The meaning of one observation for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Keep waiting.
    InProgress,
    /// The backup has just completed. Returned once per tracker.
    Completed,
    /// The backup has failed, with the reason to report.
    Failed(String),
    /// An observation after completion, which changes nothing.
    AlreadyCompleted,
}

/// Tracks the phases of one Backup.
#[derive(Debug, Clone)]
pub struct PhaseTracker {
    grace: Duration,
    completed: bool,
    failed: bool,
    wal_failing_since: Option<DateTime<Utc>>,
    warnings: Vec<String>,
}

impl PhaseTracker {
    /// Creates a tracker that fails a backup whose phase stays `walArchivingFailing` for
    /// longer than `grace`.
    pub fn new(grace: Duration) -> PhaseTracker {
        PhaseTracker { grace, completed: false, failed: false, wal_failing_since: None, warnings: Vec::new() }
    }

    /// Warnings collected so far: a `walArchivingFailing` that cleared, or a phase seen
    /// after `completed`.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Feeds the phase and `status.error` of one observation made at `now`.
    pub fn observe(&mut self, phase: &str, error: Option<&str>, now: DateTime<Utc>) -> Step {
        if self.completed {
            if phase != PHASE_COMPLETED {
                self.warnings.push(format!(
                    "the backup was completed and now reports phase {phase:?}; it stays completed"
                ));
            }
            return Step::AlreadyCompleted;
        }
        if self.failed {
            return Step::InProgress;
        }
        match phase {
            PHASE_COMPLETED => {
                self.completed = true;
                self.wal_failing_since = None;
                Step::Completed
            }
            PHASE_FAILED => {
                self.failed = true;
                let error = error.filter(|e| !e.is_empty()).unwrap_or("no status.error given");
                Step::Failed(format!("the backup failed: {error}"))
            }
            PHASE_WAL_ARCHIVING_FAILING => {
                let since = *self.wal_failing_since.get_or_insert(now);
                self.check_grace(since, now)
            }
            _ => {
                if let Some(since) = self.wal_failing_since.take() {
                    self.warnings.push(format!(
                        "WAL archiving was failing from {} until the phase changed to {phase:?}",
                        since.to_rfc3339()
                    ));
                }
                Step::InProgress
            }
        }
    }

    /// Re-evaluates the grace period at `now` without a new observation.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Step {
        match (self.completed, self.failed, self.wal_failing_since) {
            (true, _, _) => Step::AlreadyCompleted,
            (false, false, Some(since)) => self.check_grace(since, now),
            _ => Step::InProgress,
        }
    }

    fn check_grace(&mut self, since: DateTime<Utc>, now: DateTime<Utc>) -> Step {
        let failing_for = (now - since).to_std().unwrap_or_default();
        if failing_for > self.grace {
            self.failed = true;
            Step::Failed(format!(
                "WAL archiving has been failing for {}s, longer than the grace period of {}s; \
                 CNPG never retries such a backup, so check the cluster's ContinuousArchiving condition",
                failing_for.as_secs(),
                self.grace.as_secs()
            ))
        } else {
            Step::InProgress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(300);

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    /// Feeds `(phase, seconds)` pairs and returns every step.
    fn run(sequence: &[(&str, i64)]) -> (Vec<Step>, PhaseTracker) {
        let mut tracker = PhaseTracker::new(GRACE);
        let steps = sequence.iter().map(|(phase, t)| tracker.observe(phase, None, at(*t))).collect();
        (steps, tracker)
    }

    #[test]
    fn normal_sequence_succeeds() {
        let (steps, tracker) = run(&[("", 0), ("pending", 1), ("started", 2), ("running", 3), ("completed", 4)]);
        assert_eq!(steps[..4], [Step::InProgress, Step::InProgress, Step::InProgress, Step::InProgress]);
        assert_eq!(steps[4], Step::Completed);
        assert!(tracker.warnings().is_empty());
    }

    #[test]
    fn cleared_wal_failure_warns() {
        let (steps, tracker) = run(&[("running", 0), ("walArchivingFailing", 10), ("running", 20), ("completed", 30)]);
        assert_eq!(steps[3], Step::Completed);
        assert!(!steps.iter().any(|s| matches!(s, Step::Failed(_))));
        assert_eq!(tracker.warnings().len(), 1);
        assert!(tracker.warnings()[0].contains("WAL archiving was failing"));
    }

    #[test]
    fn sustained_wal_failure_fails() {
        let (steps, _) = run(&[("running", 0), ("walArchivingFailing", 10)]);
        assert_eq!(steps[1], Step::InProgress);
        let mut tracker = PhaseTracker::new(GRACE);
        tracker.observe("running", None, at(0));
        tracker.observe("walArchivingFailing", None, at(10));
        assert_eq!(tracker.tick(at(10 + 300)), Step::InProgress);
        let failed = tracker.tick(at(10 + 301));
        assert!(matches!(&failed, Step::Failed(reason) if reason.contains("grace period")), "{failed:?}");
    }

    #[test]
    fn sustained_wal_failure_fails_on_observation() {
        let (steps, _) = run(&[("walArchivingFailing", 0), ("walArchivingFailing", 301)]);
        assert!(matches!(steps[1], Step::Failed(_)), "{steps:?}");
    }

    #[test]
    fn completed_never_downgraded() {
        let (steps, tracker) = run(&[("running", 0), ("completed", 1), ("pending", 2)]);
        let completions = steps.iter().filter(|s| **s == Step::Completed).count();
        assert_eq!(completions, 1);
        assert_eq!(steps[2], Step::AlreadyCompleted);
        assert_eq!(tracker.warnings().len(), 1);
        assert!(tracker.warnings()[0].contains("\"pending\""));
    }

    #[test]
    fn failed_reports_status_error() {
        let mut tracker = PhaseTracker::new(GRACE);
        let step = tracker.observe("failed", Some("exit status 1"), at(0));
        assert_eq!(step, Step::Failed("the backup failed: exit status 1".into()));
    }

    #[test]
    fn unknown_phases_are_in_progress() {
        let (steps, _) = run(&[("finalizing", 0), ("invalid backup definition", 1), ("Completed", 2), ("FAILED", 3)]);
        assert!(steps.iter().all(|s| *s == Step::InProgress), "{steps:?}");
    }
}
