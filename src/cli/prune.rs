//! `visage-dr prune` and `visage-dr forget`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::Utc;
use clap::Args;

use super::repo::{human_bytes, print_table};
use super::{CliError, RepoArgs};
use crate::policy::Policy;
use crate::prune::{self, PruneSettings};
use crate::repository::{RepoOptions, RepoUrl, Repository};

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Policy file whose repository, retention rules and time zone are used.
    #[arg(long)]
    pub policy: PathBuf,
    /// Delete the snapshots marked remove and collect garbage. Without it, prune only prints the plan.
    #[arg(long)]
    pub confirm: bool,
    /// Prune sources whose newest successful snapshot is older than the policy's prune.max_snapshot_age.
    #[arg(long)]
    pub force: bool,
    /// Print the plan (and with --confirm the result) as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Snapshot ids (or unique prefixes) to remove.
    #[arg(required = true)]
    pub snapshots: Vec<String>,
    /// Also remove the newest successful snapshot of a source.
    #[arg(long)]
    pub force: bool,
}

/// Loads a policy file; an invalid one is a configuration error (exit status 2).
pub fn load_policy(path: &std::path::Path) -> Result<Policy, CliError> {
    let parsed = Policy::load(path).map_err(|e| CliError::usage(e.to_string()))?;
    for w in &parsed.warnings {
        tracing::warn!("{w}");
    }
    Ok(parsed.policy)
}

/// Opens the repository a policy names.
pub async fn open_policy_repo(policy: &Policy) -> Result<Arc<Repository>, CliError> {
    let url: RepoUrl = policy.repository.url.parse()?;
    let options = RepoOptions {
        s3: policy.repository.s3.as_ref().map(|s| s.clone()).unwrap_or_default(),
        ..RepoOptions::default()
    };
    Ok(Arc::new(Repository::open(&url, options).await?))
}

pub async fn prune(a: PruneArgs) -> Result<ExitCode, CliError> {
    let policy = load_policy(&a.policy)?;
    let repo = open_policy_repo(&policy).await?;
    let summaries: Vec<_> = repo.load_manifests().await?.iter().map(|m| m.summary()).collect();
    let verified = prune::verified_snapshots(&repo).await?;
    let rules_for = |source: &str| policy.retention_for(source).cloned();
    let settings = PruneSettings {
        rules_for: &rules_for,
        tz: policy.timezone,
        now: Utc::now(),
        max_snapshot_age: policy
            .prune
            .as_ref()
            .and_then(|p| p.max_snapshot_age)
            .and_then(|d| d.to_std())
            .and_then(|d| chrono::Duration::from_std(d).ok()),
        force: a.force,
    };
    let plan = prune::plan(&summaries, &verified, &settings).map_err(|e| CliError::usage(e.to_string()))?;
    if !a.json {
        for s in &plan.sources {
            println!("{}{}", s.source, s.skipped.as_ref().map(|r| format!(": skipped, {r}")).unwrap_or_default());
            let rows: Vec<Vec<String>> = s
                .snapshots
                .iter()
                .map(|p| {
                    vec![
                        if p.keep { "keep".into() } else { "remove".into() },
                        p.id.to_string(),
                        p.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        p.status.to_string(),
                        p.reasons.join(", "),
                    ]
                })
                .collect();
            print_table(&["ACTION", "SNAPSHOT", "TIME", "STATUS", "REASONS"], &rows);
            println!();
        }
    }
    if !a.confirm {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&plan).expect("plan serialises"));
        } else {
            println!("{} snapshot(s) would be removed; nothing was deleted (pass --confirm to delete)", plan.removals().len());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let grace = policy
        .prune
        .as_ref()
        .and_then(|p| p.gc_grace.to_std())
        .unwrap_or(crate::repository::gc::DEFAULT_GRACE);
    let report = prune::execute(&repo, &plan, grace).await.map_err(|e| CliError::failed(e.to_string()))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "plan": plan, "result": report })).expect("report serialises")
        );
    } else {
        println!(
            "removed {} snapshot(s); garbage collection freed {} blobs ({}), deleted {} packs and rewrote {}",
            report.snapshots_removed.len(),
            report.gc.blobs_freed,
            human_bytes(report.gc.bytes_freed),
            report.gc.packs_deleted + report.gc.unindexed_packs_deleted,
            report.gc.packs_rewritten
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn forget(a: ForgetArgs) -> Result<ExitCode, CliError> {
    let url: RepoUrl = a.repo.repo.parse()?;
    let options = RepoOptions { s3: a.repo.s3(), ..RepoOptions::default() };
    let repo = Arc::new(Repository::open(&url, options).await?);
    let mut ids = Vec::new();
    for s in &a.snapshots {
        ids.push(repo.resolve_snapshot(s).await?);
    }
    let removed = prune::forget(&repo, &ids, a.force).await.map_err(|e| CliError::failed(e.to_string()))?;
    for id in removed {
        println!("removed snapshot {id}");
    }
    println!("the data only these snapshots used is freed by the next `visage-dr prune --confirm`");
    Ok(ExitCode::SUCCESS)
}
