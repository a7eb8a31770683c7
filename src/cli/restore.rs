//! `visage-dr restore`: the whole stack to one instant, or one component with
//! `restore bucket` and `restore postgres`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;
use clap::Args;

use super::prune::{load_policy, open_policy_repo};
use super::CliError;
use crate::postgres::target_time::TargetTime;
use crate::restore::{self, Components, StackPlan, StackRequest};

/// Whole-stack restore: every database, bucket and checkpoint job of a policy, to one instant.
#[derive(Debug, Args)]
pub struct StackArgs {
    /// Policy file naming the databases, buckets and repository.
    #[arg(long, value_name = "PATH")]
    pub policy: Option<PathBuf>,
    /// Instant to restore to, with a UTC offset: 2026-01-15T10:00:00Z.
    #[arg(long, value_name = "TIME")]
    pub target_time: Option<String>,
    /// Restore only these components: a comma-separated list of postgres, buckets and checkpoints.
    #[arg(long, value_name = "LIST", default_value = "postgres,buckets,checkpoints")]
    pub only: String,
    /// Suffix of restored bucket names (<bucket>-<suffix>), database directories and CNPG Cluster names (<cluster>-<suffix>). Default: restored-<target as YYYYMMDDHHMMSS>.
    #[arg(long, value_name = "SUFFIX", conflicts_with = "in_place")]
    pub suffix: Option<String>,
    /// Restore buckets into themselves; a non-empty bucket also needs --overwrite. Databases always go to a new instance.
    #[arg(long)]
    pub in_place: bool,
    /// Replace objects with other content in the target buckets (the plan lists them first).
    #[arg(long)]
    pub overwrite: bool,
    /// Directory that receives the checkpoints, as <dir>/<job>/<step>. Default: ./checkpoints-<suffix>.
    #[arg(long, value_name = "DIR")]
    pub checkpoints_to: Option<PathBuf>,
    /// Directory that receives one <database>-<suffix> directory per restored database (local driver). Default: the current directory.
    #[arg(long, value_name = "DIR")]
    pub databases_to: Option<PathBuf>,
    /// Kubeconfig file for the `driver: cnpg` databases. Default: KUBECONFIG, ~/.kube/config, or the pod's service account.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Seconds to wait for each database's recovery.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub recovery_timeout: u64,
    /// Storage of each recovery Cluster (driver: cnpg), a Kubernetes quantity such as 20Gi. Default: the source Cluster's, or 10Gi when it cannot be read.
    #[arg(long, value_name = "QUANTITY", value_parser = parse_quantity)]
    pub storage_size: Option<String>,
    /// PostgreSQL image of each recovery Cluster (driver: cnpg). Default: the source Cluster's, or the operator's default when it cannot be read.
    #[arg(long, value_name = "IMAGE")]
    pub image_name: Option<String>,
    /// Print the plan and stop: nothing is created, started or written.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the plan and the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Accepts a Kubernetes storage quantity: digits with an optional binary or
/// decimal suffix.
fn parse_quantity(text: &str) -> Result<String, String> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &text[digits.len()..];
    let known = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E"];
    if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) && known.contains(&suffix) {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?} is not a storage quantity; write a whole number with a suffix such as Gi: 20Gi"))
    }
}

fn absolute(path: PathBuf) -> Result<PathBuf, CliError> {
    if path.is_absolute() {
        return Ok(path);
    }
    let cwd = std::env::current_dir().map_err(|e| CliError::failed(format!("cannot read the current directory: {e}")))?;
    // `./x` becomes `<cwd>/x`, not `<cwd>/./x`.
    Ok(cwd.join(path).components().filter(|c| *c != std::path::Component::CurDir).collect())
}

pub async fn stack(a: StackArgs) -> Result<ExitCode, CliError> {
    let (Some(policy_path), Some(target_text)) = (&a.policy, &a.target_time) else {
        return Err(CliError::usage(
            "give --policy PATH and --target-time TIME to restore the whole stack, or use `restore bucket` or `restore postgres` for one component",
        ));
    };
    let target = TargetTime::parse(target_text, Utc::now()).map_err(|e| CliError::usage(e.to_string()))?;
    let only = Components::parse(&a.only).map_err(CliError::usage)?;
    let suffix = a.suffix.clone().unwrap_or_else(|| restore::default_suffix(&target));
    restore::check_suffix(&suffix).map_err(CliError::usage)?;
    if a.overwrite && !a.in_place {
        return Err(CliError::usage("--overwrite applies to --in-place restores; a restore beside the original writes into new buckets"));
    }
    let policy = load_policy(policy_path)?;
    let repo = open_policy_repo(&policy).await?;
    let req = StackRequest {
        target,
        only,
        checkpoints_to: absolute(a.checkpoints_to.clone().unwrap_or_else(|| PathBuf::from(format!("checkpoints-{suffix}"))))?,
        databases_to: absolute(a.databases_to.clone().unwrap_or_else(|| PathBuf::from(".")))?,
        suffix,
        in_place: a.in_place,
        overwrite: a.overwrite,
        recovery_timeout: Duration::from_secs(a.recovery_timeout),
        progress: !a.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        storage_size: a.storage_size.clone(),
        image_name: a.image_name.clone(),
    };
    // A dry run contacts no Kubernetes API, so it has no client.
    let kube = if !a.dry_run && restore::needs_kubernetes(&policy, only) {
        Some(crate::cnpg::client(a.kubeconfig.as_deref()).await?)
    } else {
        None
    };
    let plan = restore::plan(&policy, &repo, &req, kube.as_ref()).await?;
    let cnpg_planned = plan.databases.iter().any(|d| matches!(d.into, restore::DatabaseTarget::Cnpg { .. }));
    if (a.storage_size.is_some() || a.image_name.is_some()) && !cnpg_planned {
        tracing::warn!("--storage-size and --image-name apply to driver: cnpg databases, and this restore has none; they are ignored");
    }
    if a.dry_run {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "plan": plan, "dry_run": true })).expect("plan serialises"));
        } else {
            print_plan(&plan);
            println!("dry run: nothing was created, started or written");
        }
        return if plan.problems.is_empty() { Ok(ExitCode::SUCCESS) } else { Err(problems(&plan)) };
    }
    if !a.json {
        print_plan(&plan);
    }
    if !plan.problems.is_empty() {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "plan": plan })).expect("plan serialises"));
        }
        return Err(problems(&plan));
    }
    let outcome = restore::execute(&policy, repo, &plan, &req, kube.as_ref()).await.map_err(|e| CliError::failed(e.to_string()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "plan": plan, "outcome": outcome })).expect("outcome serialises"));
    } else {
        print_outcome(&outcome);
    }
    let failed = outcome.components.iter().filter(|c| !c.ok).count();
    if failed > 0 {
        return Err(CliError::failed(format!("{failed} component(s) failed to restore; see the summary above")));
    }
    let missing: u64 = outcome.references.iter().map(|r| r.missing_count).sum();
    if missing > 0 || outcome.references.iter().any(|r| r.error.is_some()) {
        return Err(CliError::failed(format!(
            "the restore finished, but {missing} object(s) that the restored database references are not in the restored buckets; check before switching traffic"
        )));
    }
    Ok(ExitCode::SUCCESS)
}

fn problems(plan: &StackPlan) -> CliError {
    CliError::failed(format!("the restore cannot start: {}", plan.problems.join("; ")))
}

fn time(t: chrono::DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn print_plan(plan: &StackPlan) {
    println!("restore plan to {}", time(plan.target_time));
    for d in &plan.databases {
        if d.already_restored {
            println!("  postgres {}: already restored into {} by an earlier run", d.name, d.into);
        } else {
            println!(
                "  postgres {}: base backup {} (ended {}), WAL {} to {}, into {}",
                d.name,
                d.base_backup,
                time(d.base_backup_end),
                d.wal_first,
                d.wal_last,
                d.into
            );
        }
    }
    for b in &plan.buckets {
        println!(
            "  bucket {}: snapshot {} of {}, {} before the target: objects written after it are not in this restore; {} object(s) into {}",
            b.name,
            b.snapshot,
            time(b.snapshot_time),
            restore::human_duration(b.skew_seconds),
            b.objects,
            b.to_bucket
        );
        for key in b.would_overwrite.iter().take(20) {
            println!("    would overwrite {key}");
        }
    }
    for c in &plan.checkpoints {
        println!(
            "  checkpoints {}: {} of {} ({} before the target) into {}",
            c.job,
            c.step,
            time(c.time),
            restore::human_duration(c.skew_seconds),
            c.to_file.display()
        );
    }
    for r in &plan.refusals {
        println!("  refuses: {r}");
    }
    for p in &plan.problems {
        println!("  problem: {p}");
    }
}

fn print_outcome(outcome: &restore::StackOutcome) {
    let rows: Vec<Vec<String>> = outcome
        .components
        .iter()
        .map(|c| {
            vec![
                c.component.clone(),
                c.name.clone(),
                if c.ok { "restored".into() } else { "failed".into() },
                format!("{:.1} s", c.seconds),
                c.detail.clone(),
            ]
        })
        .collect();
    super::repo::print_table(&["COMPONENT", "NAME", "RESULT", "DURATION", "DETAIL"], &rows);
    for r in &outcome.references {
        match (&r.error, r.missing_count) {
            (Some(e), _) => println!("reference check {} -> {}: {e}", r.database, r.bucket),
            (None, 0) => println!("reference check {} -> {}: all {} key(s) present", r.database, r.bucket, r.keys_checked),
            (None, n) => {
                println!("reference check {} -> {}: {n} of {} key(s) missing:", r.database, r.bucket, r.keys_checked);
                for key in &r.missing {
                    println!("    {key}");
                }
            }
        }
    }
    println!("recovery time (RTO): {:.1} s", outcome.rto_seconds);
    if !outcome.switch_over.is_empty() {
        println!("to switch the application over:");
        for (i, step) in outcome.switch_over.iter().enumerate() {
            println!("  {}. {step}", i + 1);
        }
    }
}
