//! visage-dr: backup and disaster recovery for a small Kubernetes stack.
//!
//! The crate is organised by concept:
//!
//! - [`id`]: typed identifiers (blob, pack, index, snapshot, lock).
//! - [`repository`]: the content-addressed repository: storage backends (local
//!   directory, S3), packs, indexes, snapshot manifests, locks, check and
//!   garbage collection. The stored format is specified in `docs/design.md`.
//! - [`s3`]: S3 client settings shared by the repository backend and the
//!   bucket source.
//! - [`sources`]: what gets backed up: S3 buckets (snapshot and restore) and
//!   training checkpoints.
//! - [`server`]: the checkpoint HTTP API that GPU workers push to.
//! - [`cli`]: the `visage-dr` command line, its error type and exit codes.

pub mod cli;
pub mod id;
pub mod postgres;
pub mod policy;
pub mod progress;
pub mod prune;
pub mod repository;
pub mod retention;
pub mod s3;
pub mod schedule;
pub mod server;
pub mod sources;
pub mod units;
