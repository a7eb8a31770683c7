//! PostgreSQL point-in-time recovery planning over a barman-cloud archive.

pub mod catalogue;
pub mod config;
pub mod target_time;
pub mod wal;
