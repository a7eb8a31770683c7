//! Checks the retention engine against restic's `forget` results.
//!
//! The cases come from the JSON file named by `RESTIC_FORGET_CASES`. It contains `snapshots`, a
//! list of RFC 3339 times, and `cases`, each with `rules` (the fields of `RetentionRules`) and
//! `keep`, the times restic keeps with one entry per kept snapshot. Every case is applied in UTC
//! and the kept times are compared as a multiset.

use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use visage_dr::retention::{Candidate, RetentionRules};

const CASES_VARIABLE: &str = "RESTIC_FORGET_CASES";

#[derive(Deserialize)]
struct CaseFile {
    snapshots: Vec<DateTime<Utc>>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    /// Number of the policy in restic's test table.
    restic_case: u32,
    rules: RetentionRules,
    keep: Vec<DateTime<Utc>>,
}

/// Reads the case file, or returns `None` when the variable is unset outside CI.
fn load_cases() -> Option<CaseFile> {
    let Some(path) = std::env::var_os(CASES_VARIABLE) else {
        if std::env::var_os("CI").is_some() {
            panic!("{CASES_VARIABLE} is not set; set it to the path of the restic forget cases JSON file");
        }
        eprintln!(
            "note: {CASES_VARIABLE} is not set, so the restic forget conformance cases are skipped"
        );
        return None;
    };

    let path = Path::new(&path);
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("failed to read {}: {error}", path.display()));
    let file = serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("invalid case file {}: {error}", path.display()));
    Some(file)
}

#[test]
fn retention_matches_restic_forget() {
    let Some(file) = load_cases() else {
        return;
    };
    assert!(
        !file.snapshots.is_empty(),
        "the case file lists no snapshots"
    );
    assert!(!file.cases.is_empty(), "the case file lists no cases");

    let candidates: Vec<Candidate> = file
        .snapshots
        .iter()
        .map(|&time| Candidate::succeeded(time))
        .collect();

    let mut failures = Vec::new();
    for case in &file.cases {
        let decisions = case
            .rules
            .apply(&candidates, chrono_tz::UTC)
            .unwrap_or_else(|error| panic!("restic case {}: {error}", case.restic_case));

        let mut kept: Vec<DateTime<Utc>> = candidates
            .iter()
            .zip(&decisions)
            .filter(|(_, decision)| decision.keep)
            .map(|(candidate, _)| candidate.time)
            .collect();
        kept.sort();
        let mut expected = case.keep.clone();
        expected.sort();

        if kept != expected {
            let missing: Vec<_> = expected.iter().filter(|t| !kept.contains(t)).collect();
            let extra: Vec<_> = kept.iter().filter(|t| !expected.contains(t)).collect();
            failures.push(format!(
                "restic case {} ({:?}): kept {} snapshots, expected {}; missing {missing:?}; extra {extra:?}",
                case.restic_case,
                case.rules,
                kept.len(),
                expected.len(),
            ));
        }
    }

    assert!(
        failures.is_empty(),
        "{} of {} cases differ from restic:\n{}",
        failures.len(),
        file.cases.len(),
        failures.join("\n")
    );
}
