//! Commands on a repository and on bucket snapshots.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;

use super::{BucketS3Args, CliError, RepoArgs};
use crate::repository::check::{self, ReadData};
use crate::repository::lock::{self, LockKind};
use crate::repository::manifest;
use crate::repository::{RepoOptions, RepoUrl, Repository};
use crate::sources::bucket;

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Default zstd level (1 to 22) recorded in the new repository.
    #[arg(long, default_value_t = crate::repository::DEFAULT_COMPRESSION_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
    pub compression_level: i32,
}

#[derive(Debug, Args)]
pub struct SnapshotBucketArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Source bucket to read.
    #[arg(long)]
    pub bucket: String,
    /// Only objects whose key starts with this prefix.
    #[arg(long, default_value = "")]
    pub prefix: String,
    #[command(flatten)]
    pub s3: BucketS3Args,
    /// Objects read at the same time.
    #[arg(long, default_value_t = bucket::DEFAULT_SNAPSHOT_CONCURRENCY as u64, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub concurrency: u64,
    /// Packs uploaded to the repository at the same time.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub uploads: u64,
    /// zstd level (1 to 22) for new data; the repository's default when unset.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=22))]
    pub compression_level: Option<i32>,
    /// Do not read object tags (saves one request per changed object).
    #[arg(long)]
    pub no_tags: bool,
    /// Size at which a pack is closed and uploaded: bytes, or a number with a unit such as 16MiB (4 KiB to 1 GiB).
    #[arg(long, default_value = PACK_SIZE_DEFAULT, value_name = "SIZE", value_parser = |s: &str| byte_size(s, 4096, 1 << 30))]
    pub pack_size: u64,
    /// Packs between index writes; a killed run leaves at most this many packs unindexed.
    #[arg(long, default_value_t = crate::repository::pack::INDEX_FLUSH_PACKS as u64, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    pub index_flush_packs: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["snapshot", "target_time"])))]
pub struct RestoreBucketArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Snapshot id (or a unique prefix of one) to restore.
    #[arg(long, conflicts_with = "target_time")]
    pub snapshot: Option<String>,
    /// Restore the newest complete snapshot whose completion time is at or before this instant (RFC 3339 with an offset, for example 2026-01-15T10:00:00Z).
    #[arg(long)]
    pub target_time: Option<String>,
    /// With --target-time: the source whose snapshots to consider, for example `s3:visage-uploads`. Needed when the repository contains several.
    #[arg(long)]
    pub source: Option<String>,
    /// Bucket to write into. It is created when missing.
    #[arg(long)]
    pub to_bucket: String,
    /// Only objects whose key starts with this prefix.
    #[arg(long, default_value = "")]
    pub prefix: String,
    #[command(flatten)]
    pub s3: BucketS3Args,
    /// Replace objects that exist in the target bucket with different content.
    #[arg(long)]
    pub overwrite: bool,
    /// Print what would be written and overwritten, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Objects written at the same time.
    #[arg(long, default_value_t = bucket::DEFAULT_RESTORE_CONCURRENCY as u64, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub concurrency: u64,
    /// Objects larger than this are written with a multipart upload: bytes, or a number with a unit such as 8MiB.
    #[arg(long, default_value = MULTIPART_THRESHOLD_DEFAULT, value_name = "SIZE", value_parser = |s: &str| byte_size(s, 0, u64::MAX))]
    pub multipart_threshold: u64,
    /// Part size of multipart uploads: bytes, or a number with a unit such as 8MiB (at least 5MiB).
    #[arg(long, default_value = PART_SIZE_DEFAULT, value_name = "SIZE", value_parser = |s: &str| byte_size(s, 5 * 1024 * 1024, u64::MAX))]
    pub part_size: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Only snapshots of this source, for example `s3:visage-uploads`.
    #[arg(long)]
    pub source: Option<String>,
    /// Print a JSON array of objects with id, kind, source, started, time (RFC 3339 UTC), objects, bytes, status, parent and error.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Snapshot id or a unique prefix of one.
    pub snapshot: String,
    /// Only objects whose key starts with this prefix.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Print the entries as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The older snapshot.
    pub a: String,
    /// The newer snapshot.
    pub b: String,
    /// Print {"added", "changed", "removed"} as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Download every pack and verify the hash of every blob.
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Download this percentage (0 to 100) of the packs, chosen at random, and verify their blobs.
    #[arg(long, value_name = "PCT")]
    pub read_data_subset: Option<f64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Remove every lock, not only stale ones. Only safe when no visage-dr process uses the repository.
    #[arg(long)]
    pub all: bool,
    /// Print the removed locks as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_url(args: &RepoArgs) -> Result<RepoUrl, CliError> {
    Ok(args.repo.parse::<RepoUrl>()?)
}

fn options(args: &RepoArgs) -> RepoOptions {
    RepoOptions {
        s3: args.s3(),
        lock_wait: Duration::from_secs(args.lock_wait),
        ..RepoOptions::default()
    }
}

async fn open(args: &RepoArgs) -> Result<Arc<Repository>, CliError> {
    Ok(Arc::new(Repository::open(&parse_url(args)?, options(args)).await?))
}

fn print_json<T: serde::Serialize>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).expect("output serialises"));
}

fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Formats bytes with binary units.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Prints rows as a table with aligned columns.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// Parses a target time for bucket restores.
fn parse_target(text: &str) -> Result<DateTime<Utc>, CliError> {
    DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(|e| {
        CliError::usage(format!(
            "invalid --target-time {text:?}: {e}; use RFC 3339 with an offset, for example 2026-01-15T10:00:00Z"
        ))
    })
}

pub async fn init(a: InitArgs) -> Result<ExitCode, CliError> {
    let url = parse_url(&a.repo)?;
    let mut opts = options(&a.repo);
    opts.compression_level = Some(a.compression_level);
    let repo = Repository::init(&url, opts).await?;
    println!("initialised repository {} (id {})", url, repo.config().id);
    Ok(ExitCode::SUCCESS)
}

pub async fn snapshot_bucket(a: SnapshotBucketArgs) -> Result<ExitCode, CliError> {
    let url = parse_url(&a.repo)?;
    let mut opts = options(&a.repo);
    opts.compression_level = a.compression_level;
    opts.upload_concurrency = a.uploads as usize;
    opts.pack_size = a.pack_size as usize;
    opts.index_flush_packs = a.index_flush_packs as usize;
    let repo = Arc::new(Repository::open_or_init(&url, opts).await?);
    let stats = bucket::snapshot(
        repo,
        bucket::SnapshotOptions {
            bucket: a.bucket,
            prefix: a.prefix,
            s3: a.s3.s3(),
            concurrency: a.concurrency as usize,
            tags: !a.no_tags,
            progress: !a.json,
        },
    )
    .await?;
    if a.json {
        print_json(&stats);
    } else {
        println!(
            "snapshot {} of {}: {} objects, {} ({} objects read, {} new data in {} packs) in {:.1} s",
            stats.snapshot,
            stats.source,
            stats.objects,
            human_bytes(stats.bytes),
            stats.objects_read,
            human_bytes(stats.bytes_new),
            stats.packs_uploaded,
            stats.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn restore_bucket(a: RestoreBucketArgs) -> Result<ExitCode, CliError> {
    let target = a.target_time.as_deref().map(parse_target).transpose()?;
    if let Some(t) = target {
        if t > Utc::now() {
            return Err(CliError::usage(format!(
                "--target-time {} is in the future; give a past instant",
                time_text(t)
            )));
        }
    }
    let repo = open(&a.repo).await?;
    let manifest = match (&a.snapshot, target) {
        (Some(s), _) => {
            let id = repo.resolve_snapshot(s).await?;
            repo.load_manifest(&id).await?
        }
        (None, Some(t)) => bucket::snapshot_at(&repo, a.source.as_deref(), t).await?,
        (None, None) => unreachable!("clap requires --snapshot or --target-time"),
    };
    if let Some(t) = target {
        let skew = t.signed_duration_since(manifest.time);
        eprintln!(
            "target {} resolves to snapshot {} of {} completed {} ({} s before the target)",
            time_text(t),
            manifest.id,
            manifest.source,
            time_text(manifest.time),
            skew.num_seconds()
        );
    }
    let report = bucket::restore(
        repo,
        &manifest,
        bucket::RestoreOptions {
            to_bucket: a.to_bucket,
            prefix: a.prefix,
            s3: a.s3.s3(),
            overwrite: a.overwrite,
            dry_run: a.dry_run,
            concurrency: a.concurrency as usize,
            multipart_threshold: a.multipart_threshold,
            part_size: a.part_size,
            create_bucket: true,
            progress: !a.json,
        },
    )
    .await?;
    if a.json {
        print_json(&report);
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if report.dry_run { "would restore" } else { "restored" };
    println!(
        "{verb} {} of {} objects ({}) from snapshot {} into bucket {:?}; {} already identical",
        if report.dry_run { report.objects - report.identical } else { report.objects_written },
        report.objects,
        human_bytes(if report.dry_run { report.bytes_to_write } else { report.bytes_written }),
        report.snapshot,
        report.to_bucket,
        report.identical
    );
    if !report.overwritten.is_empty() {
        println!(
            "{} {} object(s) with different content:",
            if report.dry_run { "would overwrite" } else { "overwrote" },
            report.overwritten.len()
        );
        for k in &report.overwritten {
            println!("  {k}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn snapshots(a: SnapshotsArgs) -> Result<ExitCode, CliError> {
    let repo = open(&a.repo).await?;
    let mut list: Vec<_> = repo.load_manifests().await?.iter().map(|m| m.summary()).collect();
    if let Some(s) = &a.source {
        list.retain(|m| &m.source == s);
    }
    if a.json {
        print_json(&list);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.source.clone(),
                time_text(m.time),
                m.objects.to_string(),
                human_bytes(m.bytes),
                m.status.to_string(),
            ]
        })
        .collect();
    print_table(&["ID", "SOURCE", "TIME", "OBJECTS", "BYTES", "STATUS"], &rows);
    Ok(ExitCode::SUCCESS)
}

pub async fn ls(a: LsArgs) -> Result<ExitCode, CliError> {
    let repo = open(&a.repo).await?;
    let id = repo.resolve_snapshot(&a.snapshot).await?;
    let m = repo.load_manifest(&id).await?;
    let entries: Vec<_> = m.entries_with_prefix(&a.prefix).collect();
    if a.json {
        print_json(&entries);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.size.to_string(),
                e.last_modified.map(time_text).unwrap_or_default(),
                e.key.clone(),
            ]
        })
        .collect();
    print_table(&["SIZE", "LAST MODIFIED", "KEY"], &rows);
    Ok(ExitCode::SUCCESS)
}

pub async fn diff(a: DiffArgs) -> Result<ExitCode, CliError> {
    let repo = open(&a.repo).await?;
    let ma = repo.load_manifest(&repo.resolve_snapshot(&a.a).await?).await?;
    let mb = repo.load_manifest(&repo.resolve_snapshot(&a.b).await?).await?;
    for m in [&ma, &mb] {
        if !m.is_complete() {
            eprintln!("warning: snapshot {} is a failed run with no objects: {}", m.id, m.error.as_deref().unwrap_or("no error recorded"));
        }
    }
    let d = manifest::diff(&ma, &mb);
    if a.json {
        print_json(&d);
        return Ok(ExitCode::SUCCESS);
    }
    for k in &d.added {
        println!("+ {k}");
    }
    for k in &d.changed {
        println!("M {k}");
    }
    for k in &d.removed {
        println!("- {k}");
    }
    println!("{} added, {} changed, {} removed", d.added.len(), d.changed.len(), d.removed.len());
    Ok(ExitCode::SUCCESS)
}

pub async fn check(a: CheckArgs) -> Result<ExitCode, CliError> {
    let read = match (a.read_data, a.read_data_subset) {
        (true, _) => ReadData::All,
        (false, Some(p)) if (0.0..=100.0).contains(&p) => ReadData::Subset(p),
        (false, Some(p)) => {
            return Err(CliError::usage(format!(
                "invalid --read-data-subset {p}: give a percentage from 0 to 100"
            )))
        }
        (false, None) => ReadData::None,
    };
    let repo = open(&a.repo).await?;
    let guard = repo.lock(LockKind::Shared, "check").await?;
    let result = check::check(&repo, read).await;
    let _ = guard.release().await;
    let report = result?;
    if a.json {
        print_json(&report);
    } else {
        for p in &report.problems {
            println!("problem: {p}");
        }
        println!(
            "checked {} snapshot(s), {} blob(s) in {} pack(s); read {} pack(s) ({} blob(s)); {} problem(s){}",
            report.snapshots,
            report.blobs_referenced,
            report.packs,
            report.packs_read,
            report.blobs_read,
            report.problems.len(),
            if report.repaired_copies > 0 {
                format!("; {} damaged copies were replaced by later snapshots", report.repaired_copies)
            } else {
                String::new()
            }
        );
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub async fn unlock(a: UnlockArgs) -> Result<ExitCode, CliError> {
    let url = parse_url(&a.repo)?;
    let backend = crate::repository::open_backend(&url, &options(&a.repo))?;
    let removed = lock::remove_locks(&backend, a.all, lock::STALE_AFTER).await?;
    if a.json {
        print_json(&removed);
        return Ok(ExitCode::SUCCESS);
    }
    if removed.is_empty() {
        println!("no {}locks to remove", if a.all { "" } else { "stale " });
    }
    for l in &removed {
        println!("removed {}", l.describe());
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses a size given as bytes or with a unit (`16MiB`) and checks that it
/// lies between `min` and `max` bytes.
fn byte_size(text: &str, min: u64, max: u64) -> Result<u64, String> {
    let bytes = text.parse::<crate::units::ByteSize>().map_err(|e| e.to_string())?.0;
    if bytes < min || bytes > max {
        return Err(format!("{text:?} is {bytes} bytes; give a size from {min} to {max} bytes"));
    }
    Ok(bytes)
}

/// The defaults of `--pack-size`, `--multipart-threshold` and `--part-size`
/// as the help shows them; a test checks them against the constants.
const PACK_SIZE_DEFAULT: &str = "16MiB";
const MULTIPART_THRESHOLD_DEFAULT: &str = "8MiB";
const PART_SIZE_DEFAULT: &str = "8MiB";

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn size_defaults_match_constants() {
        let pack = byte_size(PACK_SIZE_DEFAULT, 0, u64::MAX).unwrap();
        assert_eq!(pack, crate::repository::pack::DEFAULT_PACK_SIZE as u64);
        assert_eq!(byte_size(MULTIPART_THRESHOLD_DEFAULT, 0, u64::MAX).unwrap(), bucket::DEFAULT_MULTIPART_THRESHOLD);
        assert_eq!(byte_size(PART_SIZE_DEFAULT, 0, u64::MAX).unwrap(), bucket::DEFAULT_PART_SIZE);
    }

    #[test]
    fn byte_size_accepts_units() {
        assert_eq!(byte_size("16MiB", 4096, 1 << 30), Ok(16 * 1024 * 1024));
        assert_eq!(byte_size("65536", 4096, 1 << 30), Ok(65536));
    }

    #[test]
    fn byte_size_rejects_bad_values() {
        let unit = byte_size("16 MiB", 4096, 1 << 30).unwrap_err();
        assert!(unit.contains("\"16 MiB\""), "{unit}");
        let small = byte_size("1KiB", 4096, 1 << 30).unwrap_err();
        assert_eq!(small, "\"1KiB\" is 1024 bytes; give a size from 4096 to 1073741824 bytes");
    }
}
