//! The target time of a verification run: the recoverable window of each component, their
//! intersection, and a random instant inside it.

use chrono::{DateTime, Duration, Utc};
use rand::Rng;

use crate::postgres::catalogue::Catalogue;
use crate::postgres::wal::WalSegment;

/// Archived WAL segments that must follow a random target, so that the archive contains commits
/// after it. PostgreSQL stops recovery at the first commit after the target, and when the WAL
/// ends before one it fails with "recovery ended before configured recovery target was
/// reached". A segment's time is estimated from its upload, which comes after its last commit,
/// so the newest segment alone does not prove a commit after the target.
pub const SEGMENTS_AFTER_RANDOM_TARGET: u64 = 2;

/// A closed interval of instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Interval {
    fn length(&self) -> Duration {
        self.end - self.start
    }
}

/// The instants that one component can be restored to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentWindow {
    /// Such as `database app` or `bucket uploads`, for error messages.
    pub name: String,
    /// Sorted, non-overlapping intervals.
    pub intervals: Vec<Interval>,
}

/// Returns the instants a database can be restored to with recovery stopping at the target.
/// Each reachable range of its archive counts from just after the end of its first base
/// backup. It ends at the estimated time of the segment [`SEGMENTS_AFTER_RANDOM_TARGET`]
/// positions before the range's last one.
pub fn database_window(name: &str, catalogue: &Catalogue) -> ComponentWindow {
    let mut intervals = Vec::new();
    for range in &catalogue.recoverable_ranges {
        let Some(bound) = segment_before(catalogue, range.last_segment, SEGMENTS_AFTER_RANDOM_TARGET) else {
            continue;
        };
        // Targets must lie strictly after the backup's end.
        let start = range.after + Duration::milliseconds(1);
        let end = bound.min(range.until);
        if start <= end {
            intervals.push(Interval { start, end });
        }
    }
    intervals.sort_by_key(|i| i.start);
    ComponentWindow { name: format!("database {name}"), intervals }
}

/// Estimated time of the archived segment `back` positions before `segment` on its timeline.
fn segment_before(catalogue: &Catalogue, segment: WalSegment, back: u64) -> Option<DateTime<Utc>> {
    let number = segment.segment_number(catalogue.segment_size)?;
    let earlier = WalSegment::from_segment_number(segment.timeline, number.checked_sub(back)?, catalogue.segment_size)?;
    catalogue.estimated_time(earlier)
}

/// Returns the instants a bucket can be restored to: from its oldest complete snapshot to `now`.
pub fn bucket_window(name: &str, oldest_snapshot: Option<DateTime<Utc>>, now: DateTime<Utc>) -> ComponentWindow {
    let intervals = match oldest_snapshot {
        Some(start) if start <= now => vec![Interval { start, end: now }],
        _ => Vec::new(),
    };
    ComponentWindow { name: format!("bucket {name}"), intervals }
}

/// Intersects two sorted lists of intervals.
fn intersect(a: &[Interval], b: &[Interval]) -> Vec<Interval> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let start = a[i].start.max(b[j].start);
        let end = a[i].end.min(b[j].end);
        if start <= end {
            out.push(Interval { start, end });
        }
        if a[i].end < b[j].end {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Errors of choosing a target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("{name} has no recoverable window: {hint}")]
    ComponentEmpty { name: String, hint: &'static str },
    #[error("no instant is recoverable for every component ({windows}); take new backups of the components whose window ends first, or give --target-time")]
    NoCommonInstant { windows: String },
}

fn hint_for(name: &str) -> &'static str {
    if name.starts_with("database") {
        "it needs a completed base backup followed by at least three archived WAL segments; right after a first base backup, wait until more WAL is archived (archive_timeout, or SELECT pg_switch_wal()) and run again, and otherwise check that WAL archiving works"
    } else {
        "it has no complete snapshot yet; take one with `visage-dr run --job bucket:<name>`"
    }
}

/// Intersects the windows of every component. `None` when there is no component.
pub fn common_window(components: &[ComponentWindow]) -> Result<Option<Vec<Interval>>, WindowError> {
    let mut common: Option<Vec<Interval>> = None;
    for component in components {
        if component.intervals.is_empty() {
            return Err(WindowError::ComponentEmpty { name: component.name.clone(), hint: hint_for(&component.name) });
        }
        common = Some(match common {
            None => component.intervals.clone(),
            Some(so_far) => intersect(&so_far, &component.intervals),
        });
    }
    if common.as_ref().is_some_and(|c| c.is_empty()) {
        let windows: Vec<String> = components
            .iter()
            .map(|c| {
                let first = c.intervals.first().expect("checked above");
                let last = c.intervals.last().expect("checked above");
                format!("{} from {} to {}", c.name, super::rfc3339(first.start), super::rfc3339(last.end))
            })
            .collect();
        return Err(WindowError::NoCommonInstant { windows: windows.join(", ") });
    }
    Ok(common)
}

/// Picks an instant uniformly over the total length of `intervals`, to the millisecond.
pub fn random_instant(intervals: &[Interval], rng: &mut impl Rng) -> Option<DateTime<Utc>> {
    let total: i64 = intervals.iter().map(|i| i.length().num_milliseconds()).sum();
    if intervals.is_empty() {
        return None;
    }
    let mut offset = rng.gen_range(0..=total);
    for interval in intervals {
        let length = interval.length().num_milliseconds();
        if offset <= length {
            return Some(interval.start + Duration::milliseconds(offset));
        }
        offset -= length + 1;
    }
    intervals.last().map(|i| i.end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rand::SeedableRng;

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 5, 6, minute, 0).unwrap()
    }

    fn interval(start: u32, end: u32) -> Interval {
        Interval { start: at(start), end: at(end) }
    }

    fn window(name: &str, intervals: Vec<Interval>) -> ComponentWindow {
        ComponentWindow { name: name.to_owned(), intervals }
    }

    #[test]
    fn common_window_intersects_components() {
        let cases = [
            (vec![interval(0, 30)], vec![interval(10, 40)], vec![interval(10, 30)]),
            (vec![interval(0, 10), interval(20, 30)], vec![interval(5, 25)], vec![interval(5, 10), interval(20, 25)]),
            (vec![interval(0, 10)], vec![interval(10, 20)], vec![interval(10, 10)]),
            (vec![interval(0, 59)], vec![interval(0, 59)], vec![interval(0, 59)]),
        ];
        for (a, b, expected) in cases {
            let components = [window("database app", a.clone()), window("bucket uploads", b.clone())];
            let common = common_window(&components).unwrap().unwrap();
            assert_eq!(common, expected, "{a:?} and {b:?}");
        }
    }

    #[test]
    fn common_window_without_components() {
        assert_eq!(common_window(&[]).unwrap(), None);
    }

    #[test]
    fn common_window_names_the_empty_component() {
        let components = [window("database app", vec![interval(0, 10)]), window("bucket uploads", vec![])];
        let error = common_window(&components).unwrap_err();
        assert!(error.to_string().starts_with("bucket uploads has no recoverable window"), "{error}");
    }

    #[test]
    fn common_window_reports_disjoint_windows() {
        let components = [window("database app", vec![interval(0, 10)]), window("bucket uploads", vec![interval(20, 30)])];
        let error = common_window(&components).unwrap_err().to_string();
        assert!(error.contains("database app from 2026-12-05T06:00:00.000Z to 2026-12-05T06:10:00.000Z"), "{error}");
        assert!(error.contains("bucket uploads from 2026-12-05T06:20:00.000Z"), "{error}");
    }

    #[test]
    fn random_instant_stays_inside() {
        let intervals = [interval(0, 1), interval(30, 31)];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut halves = [0, 0];
        for _ in 0..1000 {
            let t = random_instant(&intervals, &mut rng).unwrap();
            let inside = intervals.iter().position(|i| i.start <= t && t <= i.end);
            assert!(inside.is_some(), "{t} is outside {intervals:?}");
            halves[inside.unwrap()] += 1;
        }
        // Both intervals are one minute long, so each gets about half of the picks.
        assert!(halves[0] > 400, "{halves:?}");
        assert!(halves[1] > 400, "{halves:?}");
    }

    #[test]
    fn random_instant_of_a_single_instant() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(random_instant(&[interval(5, 5)], &mut rng), Some(at(5)));
        assert_eq!(random_instant(&[], &mut rng), None);
    }

    #[test]
    fn bucket_window_starts_at_oldest_snapshot() {
        let w = bucket_window("uploads", Some(at(3)), at(9));
        assert_eq!(w.intervals, vec![interval(3, 9)]);
        assert!(bucket_window("uploads", None, at(9)).intervals.is_empty());
    }
}
