//! `retention simulate`: applies a source's retention rules to a list of snapshot times read
//! from a text file, with the same engine that prune uses.
//!
//! The list has one snapshot per line: an RFC 3339 time, optionally followed by whitespace and
//! the flags `failed`, `final` or `verified`. Blank lines and lines starting with `#` are
//! ignored. Equal times are separate snapshots.

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use serde::{Serialize, Serializer};

use super::{Policy, CHECKPOINTS_PATTERN};
use crate::retention::{Candidate, RetentionError, RetentionRules};

/// One snapshot of a snapshot list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// Line number in the list, from 1.
    pub line: usize,
    pub candidate: Candidate,
}

/// A snapshot list line that is not a time with known flags.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}: {text:?}; write an RFC 3339 time such as 2026-06-15T03:43:00Z, optionally followed by `failed`, `final` or `verified`")]
pub struct SnapshotListError {
    pub line: usize,
    pub text: String,
    pub reason: String,
}

/// Parses a snapshot list. Times keep their input order.
pub fn parse_snapshot_list(text: &str) -> Result<Vec<SnapshotEntry>, SnapshotListError> {
    let mut entries = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let error = |reason: String| SnapshotListError {
            line,
            text: trimmed.to_owned(),
            reason,
        };

        let mut words = trimmed.split_whitespace();
        let time_text = words.next().unwrap_or_default();
        let time = DateTime::parse_from_rfc3339(time_text)
            .map_err(|e| error(format!("invalid time `{time_text}` ({e})")))?
            .with_timezone(&Utc);
        let mut candidate = Candidate::succeeded(time);
        for flag in words {
            match flag {
                "failed" => candidate.ok = false,
                "final" => candidate.is_final = true,
                "verified" => candidate.verified = true,
                other => return Err(error(format!("unknown flag `{other}`"))),
            }
        }
        entries.push(SnapshotEntry { line, candidate });
    }
    Ok(entries)
}

/// Whether a snapshot is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Keep,
    Remove,
}

/// The decision for one snapshot, serialized as `{"time", "action", "reasons"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimulatedSnapshot {
    #[serde(serialize_with = "serialize_time")]
    pub time: DateTime<Utc>,
    pub action: Action,
    /// Reasons as display strings, such as `daily 2026-06-14` or `failed`. Empty for a
    /// successful snapshot that is removed.
    pub reasons: Vec<String>,
}

fn serialize_time<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// Why a simulation could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimulateError {
    #[error("the policy has no source `{source_id}`; its sources are {}", known.join(", "))]
    UnknownSource {
        source_id: String,
        known: Vec<String>,
    },
    #[error("source `{source_id}` has no retention rules, so prune never removes its snapshots")]
    NoRetention { source_id: String },
    #[error(transparent)]
    Retention(#[from] RetentionError),
}

/// Applies `rules` to `entries` with periods taken in `tz`, returning one decision per entry in
/// input order.
pub fn simulate(
    rules: &RetentionRules,
    tz: Tz,
    entries: &[SnapshotEntry],
) -> Result<Vec<SimulatedSnapshot>, RetentionError> {
    let candidates: Vec<Candidate> = entries.iter().map(|e| e.candidate).collect();
    let decisions = rules.apply(&candidates, tz)?;
    Ok(candidates
        .iter()
        .zip(decisions)
        .map(|(candidate, decision)| SimulatedSnapshot {
            time: candidate.time,
            action: if decision.keep {
                Action::Keep
            } else {
                Action::Remove
            },
            reasons: decision.reasons.iter().map(ToString::to_string).collect(),
        })
        .collect())
}

impl Policy {
    /// Applies the retention rules of the source `source_id` to `entries`, in the policy's time
    /// zone. A checkpoint job such as `checkpoints:train-7` uses the checkpoints rules.
    pub fn simulate_retention(
        &self,
        source_id: &str,
        entries: &[SnapshotEntry],
    ) -> Result<Vec<SimulatedSnapshot>, SimulateError> {
        if self.source(source_id).is_none() || source_id == CHECKPOINTS_PATTERN {
            let known = self
                .sources()
                .into_iter()
                .map(|source| source.id.replace('*', "<job>"))
                .collect();
            return Err(SimulateError::UnknownSource {
                source_id: source_id.to_owned(),
                known,
            });
        }
        let rules = self
            .retention_for(source_id)
            .ok_or_else(|| SimulateError::NoRetention {
                source_id: source_id.to_owned(),
            })?;
        Ok(simulate(rules, self.timezone, entries)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn list_skips_blank_and_comments() {
        let text = "# nightly\n\n2026-06-11T03:43:00Z\n  \n2026-06-12T03:43:00+02:00 failed\n";
        let entries = parse_snapshot_list(text).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].line, 3);
        assert_eq!(
            entries[0].candidate,
            Candidate::succeeded(utc("2026-06-11T03:43:00Z"))
        );
        assert_eq!(entries[1].line, 5);
        assert_eq!(
            entries[1].candidate,
            Candidate::failed(utc("2026-06-12T01:43:00Z"))
        );
    }

    #[test]
    fn list_keeps_repeated_times() {
        let text = "2026-06-11T03:43:00Z\n2026-06-11T03:43:00Z\n";
        assert_eq!(parse_snapshot_list(text).unwrap().len(), 2);
    }

    #[test]
    fn list_reads_flags() {
        let entries = parse_snapshot_list("2026-06-11T03:43:00Z final verified\n").unwrap();
        assert!(entries[0].candidate.ok);
        assert!(entries[0].candidate.is_final);
        assert!(entries[0].candidate.verified);
    }

    #[test]
    fn list_rejects_malformed_time() {
        let error = parse_snapshot_list("2026-06-11T03:43:00Z\n2026-06-12 03:43\n").unwrap_err();
        assert_eq!(error.line, 2);
        assert!(
            error.reason.starts_with("invalid time `2026-06-12`"),
            "{}",
            error.reason
        );
        assert!(
            error.to_string().starts_with("line 2: invalid time"),
            "{error}"
        );
    }

    #[test]
    fn list_rejects_unknown_flag() {
        let error = parse_snapshot_list("\n2026-06-11T03:43:00Z broken\n").unwrap_err();
        assert_eq!(error.line, 2);
        assert_eq!(error.reason, "unknown flag `broken`");
    }

    #[test]
    fn simulate_rows_in_input_order() {
        let rules = RetentionRules {
            keep_last: Some(1),
            ..RetentionRules::default()
        };
        let entries = parse_snapshot_list(
            "2026-06-12T00:00:00Z\n2026-06-11T00:00:00Z failed\n2026-06-13T00:00:00Z\n",
        )
        .unwrap();
        let rows = simulate(&rules, Tz::UTC, &entries).unwrap();
        let summary: Vec<(Action, Vec<String>)> =
            rows.iter().map(|r| (r.action, r.reasons.clone())).collect();
        assert_eq!(
            summary,
            vec![
                (Action::Remove, vec![]),
                (Action::Remove, vec!["failed".to_owned()]),
                (Action::Keep, vec!["last".to_owned(), "newest".to_owned()]),
            ]
        );
        let json = serde_json::to_value(&rows[1]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"time": "2026-06-11T00:00:00Z", "action": "remove", "reasons": ["failed"]})
        );
    }
}
