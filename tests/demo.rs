//! The README's first command, `scripts/demo`, run end to end with the
//! binary under test: the whole cycle on local defaults must finish and
//! prove its restore.

mod common;

use std::process::Command;

#[test]
fn demo_runs_the_whole_cycle_and_cleans_up() {
    if std::env::var_os("S3_ENDPOINT").is_none() && std::env::var_os("CI").is_none() {
        eprintln!("note: run through scripts/test, which installs the demo's tools; the demo test is skipped");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{root}/scripts/demo"))
        .env("VISAGE_DR_BIN", env!("CARGO_BIN_EXE_visage-dr"))
        .env_remove("VISAGE_DR_REPO")
        .output()
        .expect("scripts/demo runs");
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("database: 12 images and 3 users"), "{stdout}");
    assert!(stdout.contains("restored byte-identical into visage-uploads-demo"), "{stdout}");
    assert!(stdout.contains("checkpoints: lora-ada/step-200"), "{stdout}");
    assert!(stdout.contains("reference check local-db -> uploads: all 12 key(s) present"), "{stdout}");
    let work = stdout
        .lines()
        .find_map(|l| l.strip_prefix("policy:").map(|p| p.trim().trim_end_matches("/policy.yaml").to_owned()))
        .expect("the demo prints where its policy is");
    assert!(!std::path::Path::new(&work).exists(), "the demo removed {work}");
}
