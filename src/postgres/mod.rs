//! PostgreSQL point-in-time recovery planning over a barman-cloud archive.

pub mod catalogue;
pub mod target_time;
pub mod wal;
