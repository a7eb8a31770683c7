//! PostgreSQL point-in-time recovery over a barman-cloud archive: planning, reading the
//! archive from object storage, the `local` driver and catalogue records.

pub mod catalogue;
pub mod config;
pub mod local;
pub mod records;
pub mod store;
pub mod target_time;
pub mod wal;
