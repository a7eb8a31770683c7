//! Repository check: every blob that a snapshot needs is indexed, its pack
//! exists with the indexed size, and (with read-data) its frame decompresses
//! to content with the right hash.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use rand::seq::SliceRandom;
use serde::Serialize;
use tracing::{info, warn};

use super::index::BlobLocation;
use super::pack::{decode_frame, pack_key};
use super::{RepoError, Repository};
use crate::id::{BlobId, PackId, SnapshotId};

/// How much content `check` downloads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadData {
    /// Sizes only.
    None,
    /// Every pack.
    All,
    /// A random share of the packs, in percent (0 to 100).
    Subset(f64),
}

/// One problem found by `check`.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// `missing-index-entry`, `missing-pack`, `size-mismatch` or `bad-content`.
    pub kind: &'static str,
    /// The object key in the repository (a pack), when there is one.
    pub key: Option<String>,
    pub blob: Option<BlobId>,
    pub expected_size: Option<u64>,
    pub actual_size: Option<u64>,
    pub expected_hash: Option<String>,
    pub actual_hash: Option<String>,
    pub detail: String,
    /// Snapshots that need the blob (or a blob of the pack).
    pub snapshots: Vec<SnapshotId>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(k) = &self.key {
            write!(f, " {k}")?;
        }
        if let Some(b) = &self.blob {
            write!(f, " blob {b}")?;
        }
        write!(f, ": {}", self.detail)?;
        if let (Some(e), Some(a)) = (self.expected_size, self.actual_size) {
            write!(f, " (expected {e} bytes, found {a})")?;
        }
        if let (Some(e), Some(a)) = (&self.expected_hash, &self.actual_hash) {
            write!(f, " (expected sha256 {e}, found {a})")?;
        }
        if !self.snapshots.is_empty() {
            let ids: Vec<_> = self.snapshots.iter().map(|s| s.to_string()).collect();
            write!(f, "; needed by snapshot(s) {}", ids.join(", "))?;
        }
        Ok(())
    }
}

/// Findings of `check`.
#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    pub snapshots: usize,
    pub blobs_referenced: usize,
    pub packs: usize,
    pub packs_read: usize,
    pub blobs_read: usize,
    /// Copies recorded as damaged by an earlier check that have a good copy elsewhere.
    pub repaired_copies: usize,
    /// Packs in `data/` that no index lists (left by an interrupted run).
    pub unindexed_packs: usize,
    pub problems: Vec<Problem>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the repository. Each damaged copy found is recorded under
/// `damaged/`, so the next snapshot that meets the content stores it again.
pub async fn check(repo: &Arc<Repository>, read_data: ReadData) -> Result<CheckReport, RepoError> {
    let mut report = CheckReport::default();
    let manifests = repo.load_manifests().await?;
    let mut needed_by: HashMap<BlobId, BTreeSet<SnapshotId>> = HashMap::new();
    for m in manifests.iter().filter(|m| m.is_complete()) {
        report.snapshots += 1;
        for e in &m.entries {
            for c in &e.chunks {
                needed_by.entry(*c).or_default().insert(m.id.clone());
            }
        }
    }
    report.blobs_referenced = needed_by.len();
    let snapshots_of = |blob: &BlobId| -> Vec<SnapshotId> {
        needed_by.get(blob).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    };

    // Blobs with no index entry at all.
    for blob in needed_by.keys() {
        if repo.with_index(|i| i.all_locations(blob).is_empty()) {
            report.problems.push(Problem {
                kind: "missing-index-entry",
                key: None,
                blob: Some(*blob),
                expected_size: None,
                actual_size: None,
                expected_hash: Some(blob.to_hex()),
                actual_hash: None,
                detail: "no index lists this blob".into(),
                snapshots: snapshots_of(blob),
            });
        }
    }

    // Pack existence and size.
    let listed: HashMap<String, u64> = repo
        .backend()
        .list("data/")
        .await?
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    let packs: BTreeMap<PackId, u64> = repo.with_index(|i| i.packs().map(|(p, s)| (*p, *s)).collect());
    report.packs = packs.len();
    let indexed_keys: BTreeSet<String> = packs.keys().map(pack_key).collect();
    report.unindexed_packs = listed.keys().filter(|k| !indexed_keys.contains(*k)).count();

    // Blobs per pack, from the index.
    let mut pack_blobs: HashMap<PackId, Vec<(BlobId, BlobLocation)>> = HashMap::new();
    repo.with_index(|i| {
        for (blob, locs) in i.blobs() {
            for l in locs {
                pack_blobs.entry(l.pack).or_default().push((*blob, *l));
            }
        }
    });

    let mut damaged_now: Vec<(PackId, BlobId, String)> = Vec::new();
    let mut readable_packs = Vec::new();
    for (pack, expected) in &packs {
        let key = pack_key(pack);
        let blobs = pack_blobs.get(pack).cloned().unwrap_or_default();
        let live: Vec<_> = blobs
            .iter()
            .filter(|(b, _)| !repo.with_index(|i| i.is_damaged(*pack, *b)))
            .cloned()
            .collect();
        let affected: Vec<SnapshotId> = live
            .iter()
            .flat_map(|(b, _)| snapshots_of(b))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        match listed.get(&key) {
            None => {
                if !live.is_empty() {
                    report.problems.push(Problem {
                        kind: "missing-pack",
                        key: Some(key.clone()),
                        blob: None,
                        expected_size: Some(*expected),
                        actual_size: None,
                        expected_hash: Some(pack.to_hex()),
                        actual_hash: None,
                        detail: format!("pack is missing; it holds {} blob(s)", live.len()),
                        snapshots: affected,
                    });
                    for (b, _) in &live {
                        damaged_now.push((*pack, *b, "pack missing".into()));
                    }
                }
            }
            Some(actual) if actual != expected => {
                if !live.is_empty() {
                    report.problems.push(Problem {
                        kind: "size-mismatch",
                        key: Some(key.clone()),
                        blob: None,
                        expected_size: Some(*expected),
                        actual_size: Some(*actual),
                        expected_hash: Some(pack.to_hex()),
                        actual_hash: None,
                        detail: if *actual == 0 { "pack is empty".into() } else { "pack has the wrong size".into() },
                        snapshots: affected,
                    });
                    for (b, l) in &live {
                        if l.offset + l.length > *actual {
                            damaged_now.push((*pack, *b, format!("pack is {actual} bytes, frame ends at {}", l.offset + l.length)));
                        }
                    }
                }
                readable_packs.push((*pack, live));
            }
            Some(_) => readable_packs.push((*pack, live)),
        }
    }

    // Content.
    let to_read: Vec<_> = match read_data {
        ReadData::None => Vec::new(),
        ReadData::All => readable_packs,
        ReadData::Subset(pct) => {
            let n = ((readable_packs.len() as f64) * pct / 100.0).ceil() as usize;
            let mut v = readable_packs;
            v.shuffle(&mut rand::thread_rng());
            v.truncate(n.min(v.len()));
            v
        }
    };
    report.packs_read = to_read.len();
    let results: Vec<_> = futures::stream::iter(to_read.into_iter().map(|(pack, live)| {
        let repo = repo.clone();
        async move {
            let key = pack_key(&pack);
            let data: Result<Bytes, _> = repo.backend().get(&key).await;
            (pack, key, live, data)
        }
    }))
    .buffer_unordered(4)
    .collect()
    .await;
    for (pack, key, live, data) in results {
        let data = match data {
            Ok(d) => d,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        let checked = tokio::task::spawn_blocking(move || {
            let mut bad = Vec::new();
            for (blob, loc) in &live {
                let end = (loc.offset + loc.length) as usize;
                if end > data.len() {
                    // Already reported as a size mismatch.
                    continue;
                }
                let frame = &data[loc.offset as usize..end];
                if let Err(problem) = decode_frame(blob, frame, loc.raw_length) {
                    let actual = zstd::bulk::decompress(frame, loc.raw_length as usize)
                        .ok()
                        .map(|d| (d.len() as u64, BlobId::of(&d).to_hex()));
                    bad.push((*blob, *loc, problem, actual));
                }
            }
            (live.len(), bad)
        })
        .await
        .expect("check task panicked");
        report.blobs_read += checked.0;
        for (blob, loc, problem, actual) in checked.1 {
            report.problems.push(Problem {
                kind: "bad-content",
                key: Some(key.clone()),
                blob: Some(blob),
                expected_size: Some(loc.raw_length),
                actual_size: actual.as_ref().map(|a| a.0),
                expected_hash: Some(blob.to_hex()),
                actual_hash: actual.map(|a| a.1),
                detail: format!("frame at offset {} ({} bytes): {problem}", loc.offset, loc.length),
                snapshots: snapshots_of(&blob),
            });
            damaged_now.push((pack, blob, problem));
        }
    }

    // Copies recorded earlier whose blob has a good copy now.
    report.repaired_copies = repo.with_index(|i| {
        i.damaged().filter(|(_, b)| i.has_usable(b)).count()
    });

    // Record damage so the next snapshot stores a new copy.
    for (pack, blob, problem) in &damaged_now {
        let key = format!("damaged/{pack}-{blob}");
        let body = serde_json::json!({
            "pack": pack, "blob": blob, "problem": problem, "found": Utc::now().to_rfc3339(),
        });
        repo.backend().put(&key, Bytes::from(body.to_string())).await?;
        repo.with_index_mut(|i| i.mark_damaged(*pack, *blob));
        warn!(pack.id = %pack, blob.id = %blob, %problem, "damaged blob copy recorded");
    }

    // A referenced blob whose every copy is damaged, and that was not named
    // above, is still a problem.
    let named: BTreeSet<BlobId> = report.problems.iter().filter_map(|p| p.blob).collect();
    let named_packs: BTreeSet<String> = report.problems.iter().filter_map(|p| p.key.clone()).collect();
    for blob in needed_by.keys() {
        if named.contains(blob) {
            continue;
        }
        let (all, usable) = repo.with_index(|i| (i.all_locations(blob).to_vec(), i.has_usable(blob)));
        if !all.is_empty() && !usable {
            let in_named_pack = all.iter().any(|l| named_packs.contains(&pack_key(&l.pack)));
            if in_named_pack {
                continue;
            }
            report.problems.push(Problem {
                kind: "bad-content",
                key: all.first().map(|l| pack_key(&l.pack)),
                blob: Some(*blob),
                expected_size: all.first().map(|l| l.raw_length),
                actual_size: None,
                expected_hash: Some(blob.to_hex()),
                actual_hash: None,
                detail: "every stored copy was recorded as damaged and no snapshot has stored it again".into(),
                snapshots: snapshots_of(blob),
            });
        }
    }
    info!(
        check.snapshots = report.snapshots,
        check.packs = report.packs,
        check.problems = report.problems.len(),
        "check finished"
    );
    Ok(report)
}
