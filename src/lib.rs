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
//! - [`postgres`]: PostgreSQL point-in-time recovery over a barman-cloud archive
//!   (`docs/postgres.md`).
//! - [`cnpg`]: the CloudNativePG driver: Backup resources and recovery Clusters
//!   (`docs/cnpg.md`).
//! - [`policy`]: policy files: what to back up, when, and how long to keep it
//!   (`docs/policies.md`).
//! - [`units`]: the duration and size units of policy files.
//! - [`schedule`]: 5-field cron schedules in a time zone.
//! - [`scheduler`]: when the controller fires each policy job, with missed
//!   slots, overlap and injectable time.
//! - [`retention`]: the keep rules, with restic's `forget` semantics.
//! - [`prune`]: retention applied to a repository, with guard rails.
//! - [`kube_api`]: every Kubernetes API call the code makes, which the RBAC
//!   rules in `deploy/` grant.
//! - [`verify`]: restore verification: every component restored to one target time in
//!   scratch resources, checked and torn down (`docs/verification.md`).
//! - [`report`]: verification reports (JSON, Markdown, self-contained HTML) stored under
//!   `reports/` in the repository.
//! - [`controller`]: one cycle of policy jobs (`visage-dr run`), recorded per
//!   schedule slot.
//! - [`service`]: the long-running controller of `visage-dr serve`: the
//!   scheduler firing policy jobs, policy reload, job metrics and shutdown.
//! - [`restore`]: the whole-stack restore of databases, buckets and
//!   checkpoints to one instant, planned before anything is written.
//! - [`server`]: the checkpoint HTTP API that GPU workers push to.
//! - [`progress`]: progress bars for long work on a terminal.
//! - [`cli`]: the `visage-dr` command line, its error type and exit codes.

pub mod cli;
pub mod cnpg;
pub mod controller;
pub mod id;
pub mod kube_api;
pub mod policy;
pub mod postgres;
pub mod progress;
pub mod prune;
pub mod report;
pub mod repository;
pub mod restore;
pub mod retention;
pub mod s3;
pub mod schedule;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod sources;
pub mod units;
pub mod verify;
