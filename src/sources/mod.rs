//! Sources: the data that gets backed up. Each source reads its data and stores it in the
//! repository as snapshots with a stable source identity.

pub mod bucket;
pub mod checkpoint;
