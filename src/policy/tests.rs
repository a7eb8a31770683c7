use chrono::{DateTime, Utc};

use super::*;
use crate::postgres::config::Driver;

const MINIMAL: &str = "\
repository: { url: file:///var/lib/visage-dr/repo }
buckets:
  - name: uploads
    bucket: visage-uploads
    schedule: \"0 3 * * 1\"
    retention: { keep_daily: 7 }
";

fn parse(text: &str) -> ParsedPolicy {
    Policy::parse(text, "test.yaml").unwrap_or_else(|error| panic!("{error}"))
}

/// Returns the only problem of an invalid policy.
fn problem(text: &str) -> Diagnostic {
    let error = Policy::parse(text, "test.yaml").expect_err("policy is invalid");
    let problems = error.problems();
    assert_eq!(problems.len(), 1, "{error}");
    problems[0].clone()
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

#[test]
fn minimal_policy_parses() {
    let parsed = parse(MINIMAL);
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    let policy = parsed.policy;
    assert_eq!(policy.timezone, Tz::UTC);
    assert_eq!(policy.buckets[0].source_id, "s3:visage-uploads");
    assert_eq!(policy.buckets[0].prefix, "");
    assert!(policy.prune.is_none());
}

#[test]
fn sources_list_identities() {
    let text = format!(
        "{MINIMAL}\
postgres:
  - name: visage-db
    driver: cnpg
    cluster: visage-postgres-cluster
    namespace: visage
    object_store: {{ destination_path: s3://visage-backups/postgres, server_name: visage-postgres-cluster }}
    retention: {{ keep_daily: 7 }}
  - name: local-db
    driver: local
    connection: {{ host: 127.0.0.1, port: 5432, user: postgres }}
    object_store: {{ destination_path: s3://visage-backups/local, server_name: local-db }}
checkpoints:
  retention: {{ keep_last: 3 }}
"
    );
    let parsed = parse(&text);
    let ids: Vec<String> = parsed.policy.sources().into_iter().map(|s| s.id).collect();
    assert_eq!(
        ids,
        [
            "cnpg:visage/visage-postgres-cluster",
            "postgres:local-db",
            "s3:visage-uploads",
            "checkpoints:*"
        ]
    );
    assert!(parsed.policy.uses_driver(Driver::Local));
    assert_eq!(parsed.warnings.len(), 1, "{:?}", parsed.warnings);
    assert!(parsed.warnings[0].message.contains("no `retention`"));
}

#[test]
fn retention_for_matches_checkpoint_jobs() {
    let text = format!("{MINIMAL}checkpoints:\n  retention: {{ keep_last: 3 }}\n");
    let policy = parse(&text).policy;
    assert_eq!(
        policy
            .retention_for("checkpoints:train-7")
            .and_then(|r| r.keep_last),
        Some(3)
    );
    assert_eq!(
        policy
            .retention_for("s3:visage-uploads")
            .and_then(|r| r.keep_daily),
        Some(7)
    );
    assert!(policy.retention_for("checkpoints:").is_none());
    assert!(policy.retention_for("s3:other").is_none());
}

#[test]
fn unknown_field_suggests() {
    let text = MINIMAL.replace("keep_daily", "keep_dayly");
    let problem = problem(&text);
    assert_eq!((problem.line, problem.column), (6, 18));
    assert_eq!(
        problem.message,
        "unknown field `keep_dayly`, did you mean `keep_daily`?"
    );
    assert_eq!(
        problem.to_string(),
        "test.yaml:6:18: unknown field `keep_dayly`, did you mean `keep_daily`?"
    );
}

#[test]
fn negative_count_rejected() {
    let problem = problem(&MINIMAL.replace("keep_daily: 7", "keep_daily: -7"));
    assert_eq!((problem.line, problem.column), (6, 30));
    assert!(problem.message.contains("whole number from 0"), "{problem}");
}

#[test]
fn zero_only_retention_rejected() {
    let problem = problem(&MINIMAL.replace("keep_daily: 7", "keep_daily: 0"));
    assert_eq!((problem.line, problem.column), (6, 16));
    assert!(problem.message.contains("sets no rule"), "{problem}");
}

#[test]
fn zero_count_beside_rule_warns() {
    let parsed = parse(&MINIMAL.replace("keep_daily: 7", "keep_daily: 7, keep_weekly: 0"));
    assert_eq!(parsed.warnings.len(), 1);
    assert!(parsed.warnings[0].message.contains("`keep_weekly: 0`"));
}

#[test]
fn six_field_schedule_rejected() {
    let problem = problem(&MINIMAL.replace("0 3 * * 1", "0 0 3 * * 1"));
    assert_eq!((problem.line, problem.column), (5, 15));
    assert!(
        problem
            .message
            .starts_with("invalid bucket `uploads` schedule"),
        "{problem}"
    );
    assert!(problem.message.contains("`0 3 * * 1`"), "{problem}");
}

#[test]
fn schedule_warning_has_position() {
    let parsed = parse(&MINIMAL.replace("0 3 * * 1", "* 3 * * 1"));
    assert_eq!(parsed.warnings.len(), 1);
    let warning = &parsed.warnings[0];
    assert_eq!((warning.line, warning.column), (5, 15));
    assert!(
        warning.message.contains("fires 60 times a day"),
        "{warning}"
    );
}

#[test]
fn unknown_time_zone_rejected() {
    let problem = problem(&format!("timezone: Europe/Berln\n{MINIMAL}"));
    assert_eq!((problem.line, problem.column), (1, 11));
    assert!(problem.message.contains("unknown time zone `Europe/Berln`"));
}

#[test]
fn timezone_applies_to_schedules() {
    let policy = parse(&format!("timezone: Europe/Berlin\n{MINIMAL}")).policy;
    let schedule = policy.buckets[0].schedule.as_ref().unwrap();
    assert_eq!(schedule.tz, chrono_tz::Europe::Berlin);
    let fires = upcoming_fires(schedule, utc("2026-02-01T12:00:00Z"), 1);
    assert_eq!(fires[0].utc, utc("2026-02-02T02:00:00Z"));
    assert_eq!(fires[0].local.to_rfc3339(), "2026-02-02T03:00:00+01:00");
}

#[test]
fn invalid_bucket_names_rejected() {
    for name in [
        "Visage_Uploads",
        "ab",
        "-uploads",
        "192.168.1.1",
        "a..b",
        "xn--abc",
    ] {
        let problem = problem(&MINIMAL.replace("visage-uploads", name));
        assert_eq!((problem.line, problem.column), (4, 13), "{name}");
        assert!(
            problem
                .message
                .starts_with(&format!("invalid bucket name `{name}`")),
            "{problem}"
        );
    }
}

#[test]
fn duplicate_source_rejected() {
    let text = format!(
        "{MINIMAL}  - name: uploads-old\n    bucket: visage-uploads\n    retention: {{ keep_last: 1 }}\n"
    );
    let problem = problem(&text);
    assert_eq!((problem.line, problem.column), (7, 5));
    assert!(
        problem
            .message
            .starts_with("duplicate source `s3:visage-uploads`: the entry at line 3"),
        "{problem}"
    );
}

#[test]
fn cnpg_needs_cluster_and_namespace() {
    let text = "\
repository: { url: file:///r }
postgres:
  - name: db
    driver: cnpg
    object_store: { destination_path: s3://visage-backups/pg, server_name: db }
    retention: { keep_daily: 7 }
";
    let error = Policy::parse(text, "test.yaml").unwrap_err();
    let messages: Vec<String> = error.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0]
        .starts_with("test.yaml:4:13: database `db` uses `driver: cnpg` but has no `cluster`"));
    assert!(messages[1]
        .starts_with("test.yaml:4:13: database `db` uses `driver: cnpg` but has no `namespace`"));
}

#[test]
fn local_needs_connection() {
    let text = "\
repository: { url: file:///r }
postgres:
  - name: db
    driver: local
    object_store: { destination_path: s3://visage-backups/pg, server_name: db }
    retention: { keep_daily: 7 }
";
    let problem = problem(text);
    assert_eq!((problem.line, problem.column), (4, 13));
    assert!(problem.message.contains("has no `connection`"), "{problem}");
}

#[test]
fn password_field_rejected() {
    let text = "\
repository: { url: file:///r }
postgres:
  - name: db
    driver: local
    connection: { host: 127.0.0.1, port: 5432, user: postgres, password: hunter2 }
    object_store: { destination_path: s3://visage-backups/pg, server_name: db }
    retention: { keep_daily: 7 }
";
    let problem = problem(text);
    assert_eq!((problem.line, problem.column), (5, 64));
    assert!(
        problem.message.contains("Write `password_file`"),
        "{problem}"
    );
    assert!(problem.message.contains("PGPASSWORD"), "{problem}");
    assert!(!problem.message.contains("hunter2"), "{problem}");
}

#[test]
fn empty_policy_rejected() {
    let nothing = problem("repository: { url: file:///r }\nbuckets: []\n");
    assert_eq!((nothing.line, nothing.column), (1, 1));
    assert!(nothing.message.starts_with("the policy backs up nothing"));

    let empty = problem("# no settings\n");
    assert!(
        empty.message.starts_with("the policy file is empty"),
        "{empty}"
    );
}

#[test]
fn fixed_timeout_needs_minutes() {
    let text = format!(
        "{MINIMAL}verification:\n  schedule: \"0 4 * * 0\"\n  scratch_dir: /tmp/scratch\n  timeout: 30m\n"
    );
    let problem = problem(&text);
    assert_eq!((problem.line, problem.column), (10, 12));
    assert!(
        problem.message.contains("write `30min` for minutes"),
        "{problem}"
    );
}

#[test]
fn verification_references_checked() {
    let text = format!(
        "{MINIMAL}verification:
  schedule: \"0 4 * * 0\"
  scratch_dir: /tmp/scratch
  timeout: 30min
  references:
    - {{ database: visage-db, bucket: uplods, query: SELECT 1 }}
"
    );
    let error = Policy::parse(&text, "test.yaml").unwrap_err();
    let messages: Vec<&str> = error
        .problems()
        .iter()
        .map(|p| p.message.as_str())
        .collect();
    assert_eq!(
        messages,
        [
            "unknown database `visage-db`; the policy has no database entries",
            "unknown bucket `uplods`, did you mean `uploads`?"
        ]
    );
}

#[test]
fn repository_url_checked() {
    let problem =
        problem(&MINIMAL.replace("file:///var/lib/visage-dr/repo", "file://relative/repo"));
    assert_eq!((problem.line, problem.column), (1, 20));
    assert!(problem.message.contains("absolute path"), "{problem}");
}

#[test]
fn repository_s3_needs_s3_url() {
    let text = MINIMAL.replace(
        "{ url: file:///var/lib/visage-dr/repo }",
        "{ url: file:///r, s3: { region: us-east-1 } }",
    );
    assert!(problem(&text)
        .message
        .contains("applies only to an `s3://`"));
}

#[test]
fn bucket_s3_merges_over_source_s3() {
    let text = format!(
        "source_s3: {{ endpoint: http://minio:9000, region: us-east-1 }}\n{}    s3: {{ region: eu-west-1 }}\n",
        MINIMAL
    );
    let bucket = &parse(&text).policy.buckets[0];
    assert_eq!(bucket.s3.endpoint.as_deref(), Some("http://minio:9000"));
    assert_eq!(bucket.s3.region.as_deref(), Some("eu-west-1"));
}

#[test]
fn expectation_parses() {
    let cases = [
        (">= 1", Comparison::GreaterOrEqual, 1.0),
        ("== 0", Comparison::Equal, 0.0),
        ("= 2", Comparison::Equal, 2.0),
        ("!=3", Comparison::NotEqual, 3.0),
        ("< 0.5", Comparison::Less, 0.5),
        ("> -1", Comparison::Greater, -1.0),
        ("<= 10", Comparison::LessOrEqual, 10.0),
        ("7", Comparison::Equal, 7.0),
    ];
    for (text, operator, value) in cases {
        let expectation: Expectation = text.parse().unwrap();
        assert_eq!(expectation, Expectation::Compare { operator, value }, "{text}");
    }
    assert!(">= many".parse::<Expectation>().is_err());
    assert!("".parse::<Expectation>().is_err());
    assert!(">= inf".parse::<Expectation>().is_err());
}

#[test]
fn expectation_parses_ranges() {
    let range: Expectation = "between 10 and 20".parse().unwrap();
    assert_eq!(range, Expectation::Between { low: 10.0, high: 20.0 });
    let upper: Expectation = "BETWEEN -1.5 AND 2".parse().unwrap();
    assert_eq!(upper, Expectation::Between { low: -1.5, high: 2.0 });
    let empty = "between 20 and 10".parse::<Expectation>().unwrap_err();
    assert!(empty.to_string().contains("write the lower bound first"), "{empty}");
    assert!("between 10".parse::<Expectation>().is_err());
    assert!("between ten and 20".parse::<Expectation>().is_err());
}

#[test]
fn expectation_parses_patterns() {
    let pattern: Expectation = "matches ^v[0-9]+$".parse().unwrap();
    assert_eq!(pattern.to_string(), "matches ^v[0-9]+$");
    assert!(pattern.accepts_text("v15"));
    assert!(!pattern.accepts_text("v15a"));
    assert!(!pattern.is_numeric());
    let invalid = "matches (".parse::<Expectation>().unwrap_err();
    assert!(invalid.to_string().contains("regular expression is invalid"), "{invalid}");
    // A keyword must be followed by a space, so `matchesx` is no pattern.
    assert!("matchesx".parse::<Expectation>().is_err());
}

#[test]
fn expectation_accepts() {
    let at_least_one: Expectation = ">= 1".parse().unwrap();
    assert!(at_least_one.accepts(1.0));
    assert!(!at_least_one.accepts(0.0));
    assert_eq!(at_least_one.to_string(), ">= 1");
    assert!(at_least_one.accepts_text(" 3 "));
    assert!(!at_least_one.accepts_text("three"));
    let range: Expectation = "between 10 and 20".parse().unwrap();
    for (value, accepted) in [(9.9, false), (10.0, true), (15.0, true), (20.0, true), (20.1, false)] {
        assert_eq!(range.accepts(value), accepted, "{value}");
    }
}

#[test]
fn simulate_unknown_source_lists_known() {
    let text = format!("{MINIMAL}checkpoints:\n  retention: {{ keep_last: 3 }}\n");
    let policy = parse(&text).policy;
    let error = policy
        .simulate_retention("s3:visage-upload", &[])
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "the policy has no source `s3:visage-upload`; its sources are s3:visage-uploads, checkpoints:<job>"
    );
    assert!(policy.simulate_retention("checkpoints:*", &[]).is_err());
    assert!(policy
        .simulate_retention("checkpoints:train-1", &[])
        .is_ok());
}

#[test]
fn local_default_parses() {
    let parsed = Policy::local_default().unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        parsed.policy.repository.url,
        "file:///var/lib/visage-dr/repo"
    );
}
