use chrono::{Duration, TimeZone, Utc};

use super::*;
use crate::verify::VerifyMetrics;

/// Builds a run with one database, one bucket and one checkpoint job, failed or passed.
pub(crate) fn sample_report(started_minute: u32, result: Outcome) -> Report {
    let started = Utc.with_ymd_and_hms(2026, 12, 5, 4, started_minute, 0).unwrap();
    let target = started - Duration::hours(30);
    let snapshot: SnapshotId = "20261203T220000.000Z-0a1b2c3d".parse().unwrap();
    let checkpoint: SnapshotId = "20261203T210000.000Z-11223344".parse().unwrap();
    let failed = result == Outcome::Fail;
    Report {
        schema: REPORT_SCHEMA.to_owned(),
        version: REPORT_VERSION,
        id: ReportId::new(started),
        repository: "s3://visage-backups/dr".to_owned(),
        started,
        finished: started + Duration::seconds(95),
        target_time: target,
        target_choice: TargetChoice::Random,
        window: Some(Window { after: target - Duration::days(6), until: started - Duration::minutes(5) }),
        result,
        failure: failed.then(|| "check \"check users exist\" failed: value 0 does not meet >= 1".to_owned()),
        rto_seconds: Some(41.5),
        rto_checks_seconds: 77.25,
        rpo_seconds: Some(0.8),
        newest_change: Some(target - Duration::milliseconds(800)),
        databases: vec![DatabaseReport {
            name: "app".into(),
            driver: "local".into(),
            backup_id: Some("20261203T020000".into()),
            backup_end_time: Some(target - Duration::hours(20)),
            wal_first: Some("000000010000000000000003".into()),
            wal_last: Some("00000001000000000000001F".into()),
            timeline: Some(1),
            to_end_of_archive: false,
            ready_seconds: Some(41.5),
            newest_change: Some(target - Duration::milliseconds(800)),
            port: Some(41234),
            pid: Some(4242),
            tls: Some(true),
        }],
        buckets: vec![BucketReport {
            name: "uploads".into(),
            source: "s3:visage-uploads".into(),
            snapshot: Some(snapshot),
            snapshot_time: Some(target - Duration::hours(2)),
            skew_seconds: Some(7200.0),
            objects: 1200,
            sampled: 50,
        }],
        checkpoints: vec![CheckpointReport {
            job: "lora-alice".into(),
            step: "step-1200".into(),
            snapshot: checkpoint,
            time: target - Duration::hours(3),
            skew_seconds: 10800.0,
            size: 1 << 20,
        }],
        checks: vec![
            CheckReport { name: "restore app".into(), result: Outcome::Pass, seconds: 41.5, details: "ready".into(), component: Some("postgres:app".into()) },
            CheckReport {
                name: "check users exist".into(),
                result,
                seconds: 0.01,
                details: "value <0> | \"quoted\" & more\nsecond line".into(),
                component: Some("postgres:app".into()),
            },
        ],
        components: vec![
            ComponentReport { component: "postgres:app".into(), result, restorable_time: (!failed).then_some(target) },
            ComponentReport { component: "bucket:uploads".into(), result: Outcome::Pass, restorable_time: Some(target - Duration::hours(2)) },
        ],
        scratch: ScratchReport { path: "/var/lib/visage-dr/scratch/visage-dr-verify-20261205T040000Z".into(), kept: false, expires: started + Duration::hours(1) },
    }
}

#[test]
fn json_round_trips() {
    let report = sample_report(0, Outcome::Fail);
    let text = report.to_json();
    let parsed = Report::from_json("reports/x/report.json", text.as_bytes()).unwrap();
    assert_eq!(parsed, report);
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    for field in ["target_time", "result", "rto_seconds", "rpo_seconds", "checks"] {
        assert!(value.get(field).is_some(), "{field} is missing from {text}");
    }
    assert_eq!(value["result"], "fail");
    assert_eq!(value["checks"][0]["result"], "pass");
    assert_eq!(value["checks"][0]["seconds"], 41.5);
    assert_eq!(value["checks"][0]["name"], "restore app");
    assert_eq!(value["checks"][0]["details"], "ready");
}

#[test]
fn from_json_rejects_other_documents() {
    let error = Report::from_json("k", br#"{"schema": "other", "version": 1}"#).unwrap_err();
    assert!(error.to_string().contains("is not a verification report"), "{error}");
    let newer = format!(r#"{{"schema": "{REPORT_SCHEMA}", "version": 99}}"#);
    let error = Report::from_json("k", newer.as_bytes()).unwrap_err();
    assert!(error.to_string().contains("format version 99"), "{error}");
}

#[test]
fn markdown_escapes_cells() {
    let report = sample_report(0, Outcome::Fail);
    let text = render_markdown(&report, &[]);
    assert!(text.starts_with("# Restore verification FAIL: "), "{text}");
    assert!(text.contains("value <0> \\| \"quoted\" & more second line"), "{text}");
    assert!(text.contains("| bucket uploads (50 of 1200 objects restored) | 20261203T220000.000Z-0a1b2c3d |"), "{text}");
    assert!(text.contains("000000010000000000000003 to 00000001000000000000001F on timeline 1"), "{text}");
}

#[test]
fn reports_show_check_connection() {
    let mut report = sample_report(0, Outcome::Pass);
    let text = render_markdown(&report, &[]);
    assert!(text.contains("| Connection |"), "no Connection column:\n{text}");
    assert!(text.contains("| TLS |"), "the TLS session is not shown:\n{text}");
    report.databases[0].tls = Some(false);
    assert!(render_markdown(&report, &[]).contains("| plain |"));
    assert!(render_html(&report, &[]).contains("<td>plain</td>"));
    report.databases[0].tls = None;
    let text = render_markdown(&report, &[]);
    assert!(!text.contains("| plain |"), "a local database shows a plain TCP session:\n{text}");
    assert!(!text.contains("| TLS |"), "a local database shows a TLS session:\n{text}");
}

#[test]
fn rpo_without_replay_says_why() {
    let mut report = sample_report(0, Outcome::Pass);
    report.rpo_seconds = None;
    report.newest_change = None;
    let text = render_markdown(&report, &[]);
    assert!(text.contains("- (no transaction was replayed after the base backup)"), "{text}");
}

#[test]
fn html_is_self_contained() {
    let history: Vec<Report> = (0..3).map(|m| sample_report(m, Outcome::Pass)).collect();
    let report = sample_report(10, Outcome::Fail);
    let page = render_html(&report, &history);
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.contains("<table id=\"checks\">"));
    assert!(page.contains("value &lt;0&gt; | &quot;quoted&quot; &amp; more"), "details are not escaped");
    assert_eq!(page.matches("<circle class=\"result").count(), 4, "one result marker per run");
    assert_eq!(page.matches("<circle class=\"result fail\"").count(), 1);
    for external in ["<script", "src=", "href=", "url(", "@import"] {
        assert!(!page.contains(external), "the page refers to an external asset with {external}");
    }
}

#[test]
fn chart_keeps_the_last_runs() {
    let history: Vec<Report> = (0..20).map(|m| sample_report(m, Outcome::Pass)).collect();
    let page = render_html(&sample_report(30, Outcome::Pass), &history);
    assert_eq!(page.matches("<circle class=\"result").count(), CHART_RUNS);
}

#[test]
fn axis_max_rounds_up() {
    for (max, expected) in [(0.0, 1.0), (0.3, 0.5), (1.0, 1.0), (7.0, 10.0), (12.0, 20.0), (41.5, 50.0), (77.25, 100.0), (230.0, 500.0)] {
        assert_eq!(html::axis_max(max), expected, "{max}");
    }
}

#[test]
fn durations_read_well() {
    let cases = [(0.42, "0.42 s"), (12.34, "12.3 s"), (245.0, "4 min 05 s"), (7380.0, "2 h 03 min"), (273600.0, "3 d 04 h"), (-3.0, "-3.00 s")];
    for (seconds, expected) in cases {
        assert_eq!(duration_text(seconds), expected, "{seconds}");
    }
}

#[test]
fn metrics_keep_the_last_verified_instant() {
    let passed = sample_report(0, Outcome::Pass);
    let failed = sample_report(10, Outcome::Fail);
    let metrics = VerifyMetrics::from_reports(&[failed.clone(), passed.clone()]).unwrap();
    assert_eq!(metrics.last_status, Outcome::Fail);
    assert_eq!(metrics.last_status_value(), 0);
    assert_eq!(metrics.last_run, failed.started);
    // The database failed in the newest run, so its instant comes from the earlier pass.
    assert_eq!(metrics.last_verified_restorable_timestamp["postgres:app"], passed.target_time);
    assert_eq!(metrics.last_verified_restorable_timestamp["bucket:uploads"], failed.target_time - Duration::hours(2));
    let seconds: Vec<(&str, f64)> = metrics.restorable_timestamp_seconds().collect();
    assert_eq!(seconds.len(), 2);
    assert!(VerifyMetrics::from_reports(&[]).is_none());
}
