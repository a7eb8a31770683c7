//! Parses the shipped policy files and checks the errors, fire times and retention simulations
//! that operators see.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use visage_dr::policy::{
    parse_snapshot_list, upcoming_fires, Action, Policy, SimulatedSnapshot, SourceKind,
    LOCAL_POLICY_YAML,
};

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("policies")
        .join(name)
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// Writes `text` to a fresh file under the temporary directory and returns its path.
fn write_policy(test: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "visage-dr-policy-files-{}-{test}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Loads `text` from a file and returns its single problem as `(file, line, column, message)`.
fn load_problem(test: &str, text: &str) -> (String, u64, u64, String) {
    let path = write_policy(test, text);
    let error = Policy::load(&path).expect_err("policy is invalid");
    let problems = error.problems();
    assert_eq!(problems.len(), 1, "{error}");
    let problem = &problems[0];
    assert_eq!(problem.file, path.display().to_string());
    (
        problem.file.clone(),
        problem.line,
        problem.column,
        problem.message.clone(),
    )
}

const BASE: &str = "\
repository: { url: s3://visage-backups/dr }
buckets:
  - name: uploads
    bucket: visage-uploads
    schedule: \"0 3 * * 1\"
    retention:
      keep_daily: 2
";

#[test]
fn visage_policy_parses() {
    let parsed = Policy::load(&shipped("visage.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    let policy = parsed.policy;
    let ids: Vec<String> = policy.sources().into_iter().map(|s| s.id).collect();
    assert_eq!(
        ids,
        [
            "cnpg:visage/visage-postgres-cluster",
            "s3:visage-uploads",
            "s3:visage-generated",
            "s3:visage-loras",
            "checkpoints:*"
        ]
    );
    assert_eq!(
        policy.buckets[0].s3.endpoint.as_deref(),
        Some("http://visage-minio:9000")
    );
    let verification = policy.verification.as_ref().unwrap();
    assert_eq!(
        verification.scratch_namespace.as_deref(),
        Some("visage-dr-scratch")
    );
    assert_eq!(verification.timeout.as_secs(), 90 * 60);
    assert_eq!(
        policy
            .retention_for("checkpoints:lora-train-42")
            .and_then(|r| r.keep_last),
        Some(3)
    );
}

#[test]
fn local_policy_parses() {
    let parsed = Policy::load(&shipped("local.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    let policy = parsed.policy;
    assert_eq!(policy.repository.url, "file:///var/lib/visage-dr/repo");
    let kinds: Vec<(String, SourceKind)> = policy
        .sources()
        .into_iter()
        .map(|s| (s.id, s.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("postgres:local-db".to_owned(), SourceKind::Postgres),
            ("s3:visage-uploads".to_owned(), SourceKind::Bucket),
            ("checkpoints:*".to_owned(), SourceKind::Checkpoints),
        ]
    );
    assert_eq!(
        policy.buckets[0].s3.endpoint.as_deref(),
        Some("http://127.0.0.1:3900")
    );
}

#[test]
fn embedded_local_policy_matches_file() {
    let on_disk = std::fs::read_to_string(shipped("local.yaml")).unwrap();
    assert_eq!(LOCAL_POLICY_YAML, on_disk);
    assert!(Policy::local_default().is_ok());
}

#[test]
fn unknown_field_names_file_line_column() {
    let (file, line, column, message) =
        load_problem("unknown-field", &BASE.replace("keep_daily", "keep_dayly"));
    assert!(file.ends_with("policy.yaml"));
    assert_eq!((line, column), (7, 7));
    assert_eq!(
        message,
        "unknown field `keep_dayly`, did you mean `keep_daily`?"
    );
}

#[test]
fn wrong_type_names_position() {
    let (_, line, column, message) = load_problem(
        "wrong-type",
        &BASE.replace("keep_daily: 2", "keep_daily: two"),
    );
    assert_eq!((line, column), (7, 19));
    assert!(message.contains("whole number"), "{message}");
}

#[test]
fn six_field_schedule_names_position() {
    let (_, line, column, message) =
        load_problem("six-fields", &BASE.replace("0 3 * * 1", "0 0 3 * * 1"));
    assert_eq!((line, column), (5, 15));
    assert!(message.contains("has 6 fields"), "{message}");
}

#[test]
fn invalid_bucket_name_names_position() {
    let (_, line, column, message) = load_problem(
        "bucket-name",
        &BASE.replace("visage-uploads", "Visage_Uploads"),
    );
    assert_eq!((line, column), (4, 13));
    assert!(
        message.starts_with("invalid bucket name `Visage_Uploads`"),
        "{message}"
    );
}

#[test]
fn secret_field_names_file_form() {
    let text = BASE.replace(
        "{ url: s3://visage-backups/dr }",
        "{ url: s3://visage-backups/dr, s3: { secret_access_key: abc } }",
    );
    let (_, line, column, message) = load_problem("secret", &text);
    assert_eq!((line, column), (1, 50));
    assert!(message.contains("`secret_access_key_file`"), "{message}");
    assert!(!message.contains("abc"), "{message}");
}

#[test]
fn empty_retention_names_position() {
    let text = BASE.replace("keep_daily: 2", "keep_daily: 0");
    let (_, line, column, message) = load_problem("empty-retention", &text);
    assert_eq!((line, column), (7, 7));
    assert!(message.contains("would remove every snapshot"), "{message}");
}

#[test]
fn cnpg_without_namespace_names_position() {
    let text = "\
repository: { url: s3://visage-backups/dr }
postgres:
  - name: visage-db
    driver: cnpg
    cluster: visage-postgres-cluster
    object_store:
      destination_path: s3://visage-backups/postgres
      server_name: visage-postgres-cluster
    retention: { keep_daily: 7 }
";
    let (_, line, column, message) = load_problem("cnpg-namespace", text);
    assert_eq!((line, column), (4, 13));
    assert!(message.contains("has no `namespace`"), "{message}");
}

#[test]
fn weekly_schedule_golden_fire_times() {
    let parsed = Policy::parse(BASE, "base.yaml").unwrap();
    let schedules = parsed.policy.schedules();
    assert_eq!(schedules.len(), 1);
    assert_eq!(schedules[0].name, "bucket uploads");
    let fires: Vec<DateTime<Utc>> =
        upcoming_fires(schedules[0].schedule, utc("2026-02-01T12:00:00Z"), 3)
            .into_iter()
            .map(|fire| fire.utc)
            .collect();
    assert_eq!(
        fires,
        [
            utc("2026-02-02T03:00:00Z"),
            utc("2026-02-09T03:00:00Z"),
            utc("2026-02-16T03:00:00Z")
        ]
    );
}

fn summary(results: &[SimulatedSnapshot]) -> Vec<(String, Action, Vec<String>)> {
    results
        .iter()
        .map(|r| (r.time.to_rfc3339(), r.action, r.reasons.clone()))
        .collect()
}

#[test]
fn simulate_five_daily_snapshots() {
    let policy = Policy::parse(BASE, "base.yaml").unwrap().policy;
    let list = "\
# five nightly snapshots
2026-06-11T03:43:00Z
2026-06-12T03:43:00Z
2026-06-13T03:43:00Z
2026-06-14T03:43:00Z
2026-06-15T03:43:00Z
";
    let entries = parse_snapshot_list(list).unwrap();
    let results = policy
        .simulate_retention("s3:visage-uploads", &entries)
        .unwrap();
    assert_eq!(
        summary(&results),
        vec![
            (
                "2026-06-11T03:43:00+00:00".to_owned(),
                Action::Remove,
                vec![]
            ),
            (
                "2026-06-12T03:43:00+00:00".to_owned(),
                Action::Remove,
                vec![]
            ),
            (
                "2026-06-13T03:43:00+00:00".to_owned(),
                Action::Remove,
                vec![]
            ),
            (
                "2026-06-14T03:43:00+00:00".to_owned(),
                Action::Keep,
                vec!["daily 2026-06-14".to_owned()]
            ),
            (
                "2026-06-15T03:43:00+00:00".to_owned(),
                Action::Keep,
                vec!["daily 2026-06-15".to_owned(), "newest".to_owned()]
            ),
        ]
    );
    let json = serde_json::to_value(&results[3]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"time": "2026-06-14T03:43:00Z", "action": "keep", "reasons": ["daily 2026-06-14"]})
    );
}

#[test]
fn simulate_failed_lines_removed() {
    let policy = Policy::parse(BASE, "base.yaml").unwrap().policy;
    let list = "2026-06-13T03:43:00Z\n2026-06-14T03:43:00Z\n2026-06-15T03:43:00Z   failed\n";
    let results = policy
        .simulate_retention("s3:visage-uploads", &parse_snapshot_list(list).unwrap())
        .unwrap();
    assert_eq!(
        summary(&results),
        vec![
            (
                "2026-06-13T03:43:00+00:00".to_owned(),
                Action::Keep,
                vec!["daily 2026-06-13".to_owned()]
            ),
            (
                "2026-06-14T03:43:00+00:00".to_owned(),
                Action::Keep,
                vec!["daily 2026-06-14".to_owned(), "newest".to_owned()]
            ),
            (
                "2026-06-15T03:43:00+00:00".to_owned(),
                Action::Remove,
                vec!["failed".to_owned()]
            ),
        ]
    );
}

#[test]
fn simulate_oldest_kept_when_count_left() {
    let policy = Policy::parse(BASE, "base.yaml").unwrap().policy;
    let list = "2026-06-15T01:00:00Z\n2026-06-15T03:43:00Z\n";
    let results = policy
        .simulate_retention("s3:visage-uploads", &parse_snapshot_list(list).unwrap())
        .unwrap();
    assert_eq!(results[0].reasons, ["oldest daily"]);
    assert_eq!(results[0].action, Action::Keep);
}

#[test]
fn malformed_snapshot_line_named() {
    let error = parse_snapshot_list("2026-06-11T03:43:00Z\n\n2026-06-13 03:43\n").unwrap_err();
    assert_eq!(error.line, 3);
    assert!(
        error.to_string().starts_with("line 3: invalid time"),
        "{error}"
    );
}

#[test]
fn simulate_unknown_source_lists_known() {
    let policy = Policy::load(&shipped("visage.yaml")).unwrap().policy;
    let error = policy.simulate_retention("s3:uploads", &[]).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the policy has no source `s3:uploads`; its sources are \
         cnpg:visage/visage-postgres-cluster, s3:visage-uploads, s3:visage-generated, \
         s3:visage-loras, checkpoints:<job>"
    );
}
