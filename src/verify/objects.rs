//! Restores of repository content into scratch files: a sample of a bucket snapshot's objects
//! and the chosen checkpoint of each job, each checked against the SHA-256 and size that the
//! manifest records.

use std::path::Path;
use std::sync::Arc;

use rand::seq::index::sample;
use rand::Rng;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info_span, Instrument};

use crate::id::{Hasher, SnapshotId};
use crate::repository::manifest::{Entry, Manifest};
use crate::repository::pack_cache::PackCache;
use crate::repository::Repository;

/// Whole packs kept in memory while restoring: enough for objects that share a few packs,
/// at most 4 × 32 MiB.
const PACK_CACHE_PACKS: usize = 4;

/// Problems that a check's details list. The rest are only counted.
pub const LISTED_PROBLEMS: usize = 20;

/// A restored object that does not match its manifest entry, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectProblem {
    pub key: String,
    pub snapshot: SnapshotId,
    pub problem: String,
}

impl std::fmt::Display for ObjectProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "object {:?} of snapshot {}: {}", self.key, self.snapshot, self.problem)
    }
}

/// Restores `entry` of `snapshot` into the file `path` and checks its size and SHA-256.
///
/// Every blob read checks the blob's own hash, so a corrupted pack is found at the first
/// chunk it damages, and the problem names that blob.
pub async fn restore_entry(cache: &PackCache, snapshot: &SnapshotId, entry: &Entry, path: &Path) -> Result<(), ObjectProblem> {
    let problem = |problem: String| ObjectProblem { key: entry.key.clone(), snapshot: snapshot.clone(), problem };
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| problem(format!("cannot create the scratch file {}: {e}", path.display())))?;
    let mut hasher = Hasher::new();
    let mut size = 0u64;
    for blob in &entry.chunks {
        let data = cache.read_blob(blob).await.map_err(|e| problem(format!("blob {blob} cannot be read: {e}")))?;
        hasher.update(&data);
        size += data.len() as u64;
        file.write_all(&data)
            .await
            .map_err(|e| problem(format!("cannot write the scratch file {}: {e}", path.display())))?;
    }
    file.flush().await.map_err(|e| problem(format!("cannot write the scratch file {}: {e}", path.display())))?;
    if size != entry.size {
        return Err(problem(format!("restored {size} bytes, but the manifest records {}", entry.size)));
    }
    let actual = hasher.finish();
    if actual != entry.sha256 {
        return Err(problem(format!("restored content hashes to {actual}, but the manifest records {}", entry.sha256)));
    }
    debug!(s3.key = %entry.key, bytes = size, "object restored and verified");
    Ok(())
}

/// Result of restoring a sample of a bucket snapshot.
#[derive(Debug, Clone)]
pub struct SampleResult {
    pub restored: u64,
    pub bytes: u64,
    pub problems: Vec<ObjectProblem>,
}

/// Chooses up to `count` entries of `manifest` at random, or all of them when it has no more.
pub fn choose_sample<'a>(manifest: &'a Manifest, count: usize, rng: &mut impl Rng) -> Vec<&'a Entry> {
    if manifest.entries.len() <= count {
        return manifest.entries.iter().collect();
    }
    let mut indices = sample(rng, manifest.entries.len(), count).into_vec();
    indices.sort_unstable();
    indices.into_iter().map(|i| &manifest.entries[i]).collect()
}

/// Restores `entries` of `manifest` into numbered files under `dir` and checks each one.
pub async fn restore_sample(repo: &Arc<Repository>, manifest: &Manifest, entries: &[&Entry], dir: &Path) -> SampleResult {
    let span = info_span!("verify.bucket_sample", snapshot.id = %manifest.id, sample.objects = entries.len());
    async {
        let cache = PackCache::new(repo.clone(), PACK_CACHE_PACKS);
        let mut result = SampleResult { restored: 0, bytes: 0, problems: Vec::new() };
        for (n, entry) in entries.iter().enumerate() {
            let path = dir.join(n.to_string());
            match restore_entry(&cache, &manifest.id, entry, &path).await {
                Ok(()) => {
                    result.restored += 1;
                    result.bytes += entry.size;
                }
                Err(problem) => result.problems.push(problem),
            }
        }
        result
    }
    .instrument(span)
    .await
}

/// Formats up to [`LISTED_PROBLEMS`] problems and the count of the rest.
pub fn list_problems(problems: &[ObjectProblem]) -> String {
    let mut text: Vec<String> = problems.iter().take(LISTED_PROBLEMS).map(|p| p.to_string()).collect();
    if problems.len() > LISTED_PROBLEMS {
        text.push(format!("and {} more", problems.len() - LISTED_PROBLEMS));
    }
    text.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn manifest(count: usize) -> Manifest {
        let entries = (0..count)
            .map(|i| Entry {
                key: format!("k{i:03}"),
                size: 0,
                etag: None,
                last_modified: None,
                sha256: crate::id::Digest::of(b""),
                content_type: None,
                content_encoding: None,
                content_disposition: None,
                cache_control: None,
                content_language: None,
                expires: None,
                metadata: Default::default(),
                tags: Default::default(),
                chunks: Vec::new(),
            })
            .collect();
        Manifest {
            version: 1,
            id: SnapshotId::new(chrono::Utc::now()),
            kind: crate::repository::manifest::SnapshotKind::Bucket,
            source: "s3:b".into(),
            source_detail: Default::default(),
            started: chrono::Utc::now(),
            time: chrono::Utc::now(),
            status: crate::repository::manifest::SnapshotStatus::Complete,
            error: None,
            parent: None,
            objects: count as u64,
            bytes: 0,
            labels: Default::default(),
            entries,
        }
    }

    #[test]
    fn small_snapshot_sampled_whole() {
        let m = manifest(5);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        assert_eq!(choose_sample(&m, 5, &mut rng).len(), 5);
        assert_eq!(choose_sample(&m, 50, &mut rng).len(), 5);
    }

    #[test]
    fn large_sample_has_distinct_entries() {
        let m = manifest(100);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let chosen = choose_sample(&m, 10, &mut rng);
        assert_eq!(chosen.len(), 10);
        let mut keys: Vec<&str> = chosen.iter().map(|e| e.key.as_str()).collect();
        keys.dedup();
        assert_eq!(keys.len(), 10);
    }

    #[test]
    fn problems_list_is_capped() {
        let snapshot = SnapshotId::new(chrono::Utc::now());
        let problems: Vec<ObjectProblem> = (0..25)
            .map(|i| ObjectProblem { key: format!("k{i}"), snapshot: snapshot.clone(), problem: "bad".into() })
            .collect();
        let text = list_problems(&problems);
        assert!(text.contains("object \"k19\""), "{text}");
        assert!(!text.contains("object \"k20\""), "{text}");
        assert!(text.ends_with("and 5 more"), "{text}");
    }
}
