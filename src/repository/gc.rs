//! Garbage collection: deletes packs that no complete snapshot needs and
//! rewrites packs that are partly needed, under the exclusive lock.
//!
//! The order of writes follows `docs/design.md`: live blobs are copied into
//! new packs and indexed first, then one index listing every remaining pack
//! replaces the old index files, and only then are old packs deleted. Packs
//! younger than the grace period are never touched.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use tracing::{debug, info, warn};

use super::index::{BlobEntry, PackEntry};
use super::lock::LockGuard;
use super::pack::{decode_frame, pack_key, write_index, Frame, WriteStats};
use super::{RepoError, Repository};
use crate::id::{BlobId, IndexId, PackId};

/// Default grace period. An hour is far longer than any pause a healthy run
/// takes between uploading a pack and indexing it.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// Result of garbage collection (in a dry run, what it would do).
#[derive(Debug, Default, Clone, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub packs_deleted: u64,
    pub packs_rewritten: u64,
    pub unindexed_packs_deleted: u64,
    /// Packs left alone because they are younger than the grace period.
    pub young_packs_kept: u64,
    pub blobs_freed: u64,
    /// Bytes of pack objects deleted minus bytes of packs written.
    pub bytes_freed: u64,
    pub index_files_replaced: u64,
}

/// Removes what no complete snapshot references. The caller holds `lock`,
/// an exclusive lock.
pub async fn collect_garbage(
    repo: &Arc<Repository>,
    lock: &LockGuard,
    grace: Duration,
    dry_run: bool,
) -> Result<GcReport, RepoError> {
    let mut report = GcReport { dry_run, ..GcReport::default() };
    repo.reload_index().await?;
    let manifests = repo.load_manifests().await?;
    let referenced: HashSet<BlobId> = manifests
        .iter()
        .filter(|m| m.is_complete())
        .flat_map(|m| m.entries.iter().flat_map(|e| e.chunks.iter().copied()))
        .collect();

    let index_files: Vec<IndexId> = repo
        .backend()
        .list("index/")
        .await?
        .iter()
        .filter_map(|o| o.key.trim_start_matches("index/").parse().ok())
        .collect();
    let listed = repo.backend().list("data/").await?;
    let now = Utc::now();
    let grace_chrono = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let young: HashSet<String> = listed
        .iter()
        .filter(|o| now.signed_duration_since(o.last_modified) < grace_chrono)
        .map(|o| o.key.clone())
        .collect();
    let stored_size: HashMap<String, u64> = listed.iter().map(|o| (o.key.clone(), o.size)).collect();

    // Blobs per pack, and which copy of each referenced blob is kept: the
    // first usable copy in pack-id order, preferring young packs, which are
    // kept anyway.
    let mut pack_blobs: BTreeMap<PackId, Vec<BlobEntry>> = BTreeMap::new();
    let mut keep_copy: HashMap<BlobId, PackId> = HashMap::new();
    let pack_sizes: BTreeMap<PackId, u64> = repo.with_index(|i| i.packs().map(|(p, s)| (*p, *s)).collect());
    repo.with_index(|i| {
        for (blob, locs) in i.blobs() {
            for l in locs {
                pack_blobs.entry(l.pack).or_default().push(BlobEntry {
                    id: *blob,
                    offset: l.offset,
                    length: l.length,
                    raw_length: l.raw_length,
                });
            }
            if referenced.contains(blob) {
                let mut usable: Vec<PackId> =
                    locs.iter().filter(|l| !i.is_damaged(l.pack, *blob)).map(|l| l.pack).collect();
                usable.sort_by_key(|p| (!young.contains(&pack_key(p)), *p));
                if let Some(p) = usable.first() {
                    keep_copy.insert(*blob, *p);
                } else if let Some(l) = locs.first() {
                    // Only damaged copies: keep one so `check` still names it.
                    keep_copy.insert(*blob, l.pack);
                }
            }
        }
    });

    let mut kept_packs: Vec<PackEntry> = Vec::new();
    let mut delete: Vec<(PackId, u64)> = Vec::new();
    let mut rewrite: Vec<(PackId, Vec<BlobEntry>, u64)> = Vec::new();
    for (pack, size) in &pack_sizes {
        let key = pack_key(pack);
        let blobs = pack_blobs.remove(pack).unwrap_or_default();
        if young.contains(&key) || !stored_size.contains_key(&key) {
            // Young packs are left alone; missing ones stay listed for check.
            if young.contains(&key) {
                report.young_packs_kept += 1;
            }
            kept_packs.push(PackEntry { id: *pack, size: *size, blobs });
            continue;
        }
        let (live, dead): (Vec<BlobEntry>, Vec<BlobEntry>) =
            blobs.into_iter().partition(|b| keep_copy.get(&b.id) == Some(pack));
        if dead.is_empty() {
            kept_packs.push(PackEntry { id: *pack, size: *size, blobs: live });
        } else if live.is_empty() {
            report.blobs_freed += dead.len() as u64;
            delete.push((*pack, *size));
        } else {
            report.blobs_freed += dead.len() as u64;
            rewrite.push((*pack, live, *size));
        }
    }
    let indexed_keys: HashSet<String> = pack_sizes.keys().map(pack_key).collect();
    let unindexed: Vec<(String, u64)> = listed
        .iter()
        .filter(|o| !indexed_keys.contains(&o.key) && !young.contains(&o.key))
        .map(|o| (o.key.clone(), o.size))
        .collect();

    report.packs_deleted = delete.len() as u64;
    report.packs_rewritten = rewrite.len() as u64;
    report.unindexed_packs_deleted = unindexed.len() as u64;
    let freed_gross: u64 = delete.iter().map(|d| d.1).sum::<u64>()
        + rewrite.iter().map(|r| r.2).sum::<u64>()
        + unindexed.iter().map(|u| u.1).sum::<u64>();
    if dry_run {
        let rewritten_live: u64 = rewrite.iter().flat_map(|r| r.1.iter().map(|b| b.length)).sum();
        report.bytes_freed = freed_gross.saturating_sub(rewritten_live);
        return Ok(report);
    }

    // 1. Copy the live blobs of partly used packs into new packs.
    let writer = repo.pack_writer();
    for (pack, live, _) in &rewrite {
        let data = repo.backend().get(&pack_key(pack)).await?;
        for b in live {
            let end = (b.offset + b.length) as usize;
            let frame = data.get(b.offset as usize..end).ok_or_else(|| RepoError::Corrupt {
                what: "pack",
                key: pack_key(pack),
                reason: format!("frame of blob {} ends at {end}, past the pack's {} bytes", b.id, data.len()),
            })?;
            decode_frame(&b.id, frame, b.raw_length).map_err(|reason| RepoError::Corrupt {
                what: "pack",
                key: pack_key(pack),
                reason: format!("blob {}: {reason}; run `visage-dr check --read-data`", b.id),
            })?;
            writer.add_frame_forced(b.id, b.raw_length, Frame::Encoded(frame.to_vec())).await?;
        }
        debug!(pack.id = %pack, pack.live_blobs = live.len(), "pack rewritten");
    }
    writer.finish().await?;
    let new_packs = writer.take_written().await;
    let written_bytes: u64 = new_packs.iter().map(|p| p.size).sum();
    report.bytes_freed = freed_gross.saturating_sub(written_bytes);
    lock.ensure_held().await?;

    // 2. One index for every remaining pack, then the old index files go.
    kept_packs.extend(new_packs);
    let consolidated = write_index(repo, kept_packs, &WriteStats::default()).await?;
    // The index files of step 1 are covered by the consolidated one too.
    let mut obsolete = index_files.clone();
    obsolete.extend(writer.index_ids().await);
    for id in obsolete.iter().filter(|id| **id != consolidated) {
        repo.backend().delete(&format!("index/{id}")).await?;
        report.index_files_replaced += 1;
    }

    // 3. Old packs, now referenced by no index.
    lock.ensure_held().await?;
    for (pack, _) in delete.iter().chain(rewrite.iter().map(|r| (r.0, r.2)).collect::<Vec<_>>().iter()) {
        repo.backend().delete(&pack_key(pack)).await?;
        for obj in repo.backend().list(&format!("damaged/{pack}-")).await? {
            repo.backend().delete(&obj.key).await?;
        }
    }
    for (key, _) in &unindexed {
        warn!(s3.key = %key, "deleting a pack that no index lists (left by an interrupted run)");
        repo.backend().delete(key).await?;
    }
    repo.reload_index().await?;
    info!(
        gc.packs_deleted = report.packs_deleted,
        gc.packs_rewritten = report.packs_rewritten,
        gc.blobs_freed = report.blobs_freed,
        gc.bytes_freed = report.bytes_freed,
        "garbage collected"
    );
    Ok(report)
}
