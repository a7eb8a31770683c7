//! Retention rules: which snapshots of one source to keep, with restic's `forget` semantics.
//!
//! The count rules (`keep_last`, `keep_hourly`, `keep_daily`, `keep_weekly`, `keep_monthly`,
//! `keep_yearly`) and `keep_within` behave as in restic 0.16 and later
//! (`internal/data/snapshot_policy.go`):
//!
//! - Snapshots are walked newest first. Snapshots with equal times keep their input order, as
//!   restic's stable sort does.
//! - Each count rule keeps the newest snapshot of each of its periods until its count is used up.
//!   If the count is not used up when the walk ends, the rule also keeps the oldest snapshot even
//!   when its period already has a kept snapshot (reason `oldest <rule>`).
//! - `keep_within` keeps every snapshot strictly newer than the newest successful snapshot
//!   minus the duration, with calendar years and months (see [`Duration::subtract_from`]).
//! - The rules are ORed, so a snapshot is kept when any rule keeps it.
//!
//! Period boundaries are taken in the time zone passed to [`RetentionRules::apply`]. Weeks are
//! ISO 8601 weeks (Monday to Sunday, numbered within the ISO week-based year). Hours are local
//! clock hours, so the hour that repeats when daylight saving time ends counts as one hour, as
//! in restic.
//!
//! Beyond restic, the engine has:
//!
//! - Failed snapshots, which no rule counts. They are reported as removed with reason `failed`.
//! - `recovery_window`, which keeps every snapshot of a point-in-time recovery window and the
//!   base snapshot needed to reach its start.
//! - Guard rails: an empty rule set is an error. The newest successful snapshot, the newest
//!   successful verified snapshot and every successful final snapshot are always kept.
//!
//! NOTE: restic measures `keep_within` from the newest snapshot that is not in the future
//! relative to the local clock. This engine reads no clock, so a snapshot dated in the future
//! counts as the newest.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::units::Duration;

/// The retention rules of one policy.
///
/// `None`, a count of 0 and a zero duration all leave a rule unset, as in restic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRules {
    /// Number of newest snapshots to keep.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Number of hours for which to keep the newest snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    /// Number of days for which to keep the newest snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    /// Number of ISO weeks for which to keep the newest snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    /// Number of months for which to keep the newest snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    /// Number of years for which to keep the newest snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    /// Span before the newest successful snapshot in which every snapshot is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_within: Option<Duration>,
    /// Point-in-time recovery window before the newest successful snapshot. Every snapshot in
    /// the window is kept, together with the newest one before the window start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_window: Option<Duration>,
}

/// A snapshot as seen by the retention engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Time the snapshot was taken.
    pub time: DateTime<Utc>,
    /// Whether the snapshot completed successfully. Failed snapshots are never kept.
    pub ok: bool,
    /// Whether the snapshot is marked final, such as a checkpoint pushed as final. A successful
    /// final snapshot is kept regardless of the rules.
    pub is_final: bool,
    /// Whether the snapshot passed verification. The newest successful verified snapshot is kept
    /// regardless of the rules.
    pub verified: bool,
}

impl Candidate {
    /// Creates a successful snapshot that is neither final nor verified.
    pub fn succeeded(time: DateTime<Utc>) -> Self {
        Candidate {
            time,
            ok: true,
            is_final: false,
            verified: false,
        }
    }

    /// Creates a failed snapshot.
    pub fn failed(time: DateTime<Utc>) -> Self {
        Candidate {
            ok: false,
            ..Candidate::succeeded(time)
        }
    }
}

/// The outcome for one candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Whether the snapshot is kept.
    pub keep: bool,
    /// The rules and guard rails that keep the snapshot, or only [`Reason::Failed`] for a failed
    /// snapshot. Empty for a successful snapshot that is removed.
    pub reasons: Vec<Reason>,
}

/// A count rule that keeps one snapshot per calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeriodicRule {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl PeriodicRule {
    const ALL: [PeriodicRule; 5] = [
        PeriodicRule::Hourly,
        PeriodicRule::Daily,
        PeriodicRule::Weekly,
        PeriodicRule::Monthly,
        PeriodicRule::Yearly,
    ];

    fn name(self) -> &'static str {
        match self {
            PeriodicRule::Hourly => "hourly",
            PeriodicRule::Daily => "daily",
            PeriodicRule::Weekly => "weekly",
            PeriodicRule::Monthly => "monthly",
            PeriodicRule::Yearly => "yearly",
        }
    }

    fn count(self, rules: &RetentionRules) -> Option<u32> {
        match self {
            PeriodicRule::Hourly => rules.keep_hourly,
            PeriodicRule::Daily => rules.keep_daily,
            PeriodicRule::Weekly => rules.keep_weekly,
            PeriodicRule::Monthly => rules.keep_monthly,
            PeriodicRule::Yearly => rules.keep_yearly,
        }
    }

    /// Returns the reason naming the period of this rule that contains `local`. Two times fall
    /// into the same period exactly when their reasons are equal.
    fn period_of(self, local: DateTime<Tz>) -> Reason {
        match self {
            PeriodicRule::Hourly => Reason::Hourly {
                date: local.date_naive(),
                hour: local.hour(),
            },
            PeriodicRule::Daily => Reason::Daily {
                date: local.date_naive(),
            },
            PeriodicRule::Weekly => {
                let week = local.iso_week();
                Reason::Weekly {
                    year: week.year(),
                    week: week.week(),
                }
            }
            PeriodicRule::Monthly => Reason::Monthly {
                year: local.year(),
                month: local.month(),
            },
            PeriodicRule::Yearly => Reason::Yearly { year: local.year() },
        }
    }
}

impl fmt::Display for PeriodicRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a snapshot is kept, or [`Reason::Failed`] for why it is removed.
///
/// [`Display`](fmt::Display) gives the operator-facing text such as `daily 2026-06-14`. The
/// serde form is an object tagged by `reason`, such as
/// `{"reason":"daily","date":"2026-06-14"}`. Periods are given in the policy's time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// One of the `keep_last` newest snapshots.
    Last,
    /// Newest snapshot of an hour, given as its date and hour (0 to 23).
    Hourly { date: NaiveDate, hour: u32 },
    /// Newest snapshot of a day.
    Daily { date: NaiveDate },
    /// Newest snapshot of an ISO week, given as ISO week-based year and week number.
    Weekly { year: i32, week: u32 },
    /// Newest snapshot of a month (1 to 12).
    Monthly { year: i32, month: u32 },
    /// Newest snapshot of a year.
    Yearly { year: i32 },
    /// Oldest snapshot, kept because `rule` had count left after the walk.
    Oldest { rule: PeriodicRule },
    /// Within `duration` of the newest successful snapshot (`keep_within`).
    Within { duration: Duration },
    /// Inside the recovery window.
    RecoveryWindow { window: Duration },
    /// Newest snapshot before the recovery window start, needed to recover to that start.
    RecoveryBase { window: Duration },
    /// Marked final ([`Candidate::is_final`]).
    Final,
    /// Newest successful snapshot.
    Newest,
    /// Newest successful snapshot with [`Candidate::verified`] set.
    NewestVerified,
    /// The snapshot failed. Failed snapshots are always removed.
    Failed,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Last => f.write_str("last"),
            Reason::Hourly { date, hour } => write!(f, "hourly {date} {hour:02}h"),
            Reason::Daily { date } => write!(f, "daily {date}"),
            Reason::Weekly { year, week } => write!(f, "weekly {year}-W{week:02}"),
            Reason::Monthly { year, month } => write!(f, "monthly {year}-{month:02}"),
            Reason::Yearly { year } => write!(f, "yearly {year}"),
            Reason::Oldest { rule } => write!(f, "oldest {rule}"),
            Reason::Within { duration } => write!(f, "within {duration}"),
            Reason::RecoveryWindow { window } => write!(f, "recovery window {window}"),
            Reason::RecoveryBase { window } => write!(f, "base of recovery window {window}"),
            Reason::Final => f.write_str("final"),
            Reason::Newest => f.write_str("newest"),
            Reason::NewestVerified => f.write_str("newest verified"),
            Reason::Failed => f.write_str("failed"),
        }
    }
}

/// An error from [`RetentionRules::apply`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    #[error(
        "the retention policy sets no rule and would remove every snapshot; set at least one \
         of keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly, \
         keep_within or recovery_window"
    )]
    EmptyPolicy,
}

impl RetentionRules {
    /// Returns true when no rule is set. A count of 0 and a zero duration count as unset.
    pub fn is_empty(&self) -> bool {
        let counts = [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ];
        let durations = [self.keep_within, self.recovery_window];
        counts.iter().all(|count| count.unwrap_or(0) == 0)
            && durations
                .iter()
                .all(|duration| duration.is_none_or(|d| d.is_zero()))
    }

    /// Decides which candidates to keep, taking day, week, month and year boundaries in `tz`.
    ///
    /// Returns one decision per candidate, in input order. A kept snapshot lists its reasons in
    /// this order: `last`, the periodic rules from hourly to yearly, `within`, the recovery
    /// window, `final`, `newest`, `newest verified`.
    ///
    /// # Errors
    ///
    /// Returns [`RetentionError::EmptyPolicy`] when [`RetentionRules::is_empty`] is true, even
    /// for an empty candidate list.
    pub fn apply(&self, candidates: &[Candidate], tz: Tz) -> Result<Vec<Decision>, RetentionError> {
        if self.is_empty() {
            return Err(RetentionError::EmptyPolicy);
        }

        let mut reasons: Vec<Vec<Reason>> = candidates
            .iter()
            .map(|candidate| {
                if candidate.ok {
                    Vec::new()
                } else {
                    vec![Reason::Failed]
                }
            })
            .collect();

        // Indices of the successful candidates, newest first. `sort_by` is stable, so equal
        // times keep their input order.
        let mut newest_first: Vec<usize> = (0..candidates.len())
            .filter(|&index| candidates[index].ok)
            .collect();
        newest_first.sort_by(|&a, &b| candidates[b].time.cmp(&candidates[a].time));

        if let Some(&newest) = newest_first.first() {
            let walk = Walk {
                candidates,
                newest_first: &newest_first,
                newest_local: candidates[newest].time.with_timezone(&tz),
                tz,
            };
            walk.keep_last(self.keep_last.unwrap_or(0), &mut reasons);
            for rule in PeriodicRule::ALL {
                walk.keep_per_period(rule, rule.count(self).unwrap_or(0), &mut reasons);
            }
            if let Some(duration) = self.keep_within.filter(|d| !d.is_zero()) {
                walk.keep_within(duration, &mut reasons);
            }
            if let Some(window) = self.recovery_window.filter(|d| !d.is_zero()) {
                walk.keep_recovery_window(window, &mut reasons);
            }
            walk.keep_guarded(&mut reasons);
        }

        let decisions = candidates
            .iter()
            .zip(reasons)
            .map(|(candidate, reasons)| Decision {
                keep: candidate.ok && !reasons.is_empty(),
                reasons,
            })
            .collect();
        Ok(decisions)
    }
}

/// The successful candidates of one [`RetentionRules::apply`] call, walked newest first. Each
/// method appends its reasons to `reasons`, which is indexed like the candidates.
struct Walk<'a> {
    candidates: &'a [Candidate],
    newest_first: &'a [usize],
    newest_local: DateTime<Tz>,
    tz: Tz,
}

impl Walk<'_> {
    fn keep_last(&self, count: u32, reasons: &mut [Vec<Reason>]) {
        for &index in self.newest_first.iter().take(count as usize) {
            reasons[index].push(Reason::Last);
        }
    }

    /// Keeps the newest snapshot of each period until `count` is used up, then the oldest
    /// snapshot if count is left, as restic's bucket walk does.
    fn keep_per_period(&self, rule: PeriodicRule, count: u32, reasons: &mut [Vec<Reason>]) {
        let mut remaining = count;
        let mut last_kept_period: Option<Reason> = None;

        for (position, &index) in self.newest_first.iter().enumerate() {
            if remaining == 0 {
                break;
            }
            let period = rule.period_of(self.candidates[index].time.with_timezone(&self.tz));
            let is_oldest = position + 1 == self.newest_first.len();

            if last_kept_period.as_ref() != Some(&period) {
                reasons[index].push(period.clone());
                last_kept_period = Some(period);
                remaining -= 1;
            } else if is_oldest {
                reasons[index].push(Reason::Oldest { rule });
                remaining -= 1;
            }
        }
    }

    /// Keeps every snapshot strictly after the newest one minus `duration`, as restic does.
    fn keep_within(&self, duration: Duration, reasons: &mut [Vec<Reason>]) {
        let start = duration.subtract_from(self.newest_local);
        for &index in self.newest_first {
            if self.candidates[index].time > start {
                reasons[index].push(Reason::Within { duration });
            }
        }
    }

    /// Keeps every snapshot at or after the window start, and the newest snapshot before the
    /// start unless one is exactly at the start.
    fn keep_recovery_window(&self, window: Duration, reasons: &mut [Vec<Reason>]) {
        let start = window.subtract_from(self.newest_local);
        let mut reaches_start = false;

        for &index in self.newest_first {
            let time = self.candidates[index].time;
            if time >= start {
                reasons[index].push(Reason::RecoveryWindow { window });
                reaches_start |= time == start;
            } else {
                if !reaches_start {
                    reasons[index].push(Reason::RecoveryBase { window });
                }
                break;
            }
        }
    }

    fn keep_guarded(&self, reasons: &mut [Vec<Reason>]) {
        for &index in self.newest_first {
            if self.candidates[index].is_final {
                reasons[index].push(Reason::Final);
            }
        }

        reasons[self.newest_first[0]].push(Reason::Newest);

        let newest_verified = self
            .newest_first
            .iter()
            .find(|&&index| self.candidates[index].verified);
        if let Some(&index) = newest_verified {
            reasons[index].push(Reason::NewestVerified);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Europe::Berlin;
    use chrono_tz::UTC;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().expect("valid RFC 3339 time in test")
    }

    fn duration(text: &str) -> Duration {
        text.parse().expect("valid duration in test")
    }

    fn good(times: &[&str]) -> Vec<Candidate> {
        times
            .iter()
            .map(|time| Candidate::succeeded(utc(time)))
            .collect()
    }

    /// Returns the times of the kept candidates, newest first.
    fn kept_times(rules: &RetentionRules, candidates: &[Candidate], tz: Tz) -> Vec<DateTime<Utc>> {
        let decisions = rules.apply(candidates, tz).expect("non-empty rules");
        assert_eq!(decisions.len(), candidates.len());
        let mut kept: Vec<DateTime<Utc>> = candidates
            .iter()
            .zip(&decisions)
            .filter(|(_, decision)| decision.keep)
            .map(|(candidate, _)| candidate.time)
            .collect();
        kept.sort_by(|a, b| b.cmp(a));
        kept
    }

    /// Returns the reasons of the candidate at `time`, which must be unique in `candidates`.
    fn reasons_at(decisions: &[Decision], candidates: &[Candidate], time: &str) -> Vec<String> {
        let time = utc(time);
        let index = candidates
            .iter()
            .position(|c| c.time == time)
            .expect("time in list");
        decisions[index]
            .reasons
            .iter()
            .map(Reason::to_string)
            .collect()
    }

    struct Case {
        name: &'static str,
        rules: RetentionRules,
        tz: Tz,
        candidates: Vec<Candidate>,
        keep: Vec<&'static str>,
    }

    fn cases() -> Vec<Case> {
        let mut keep_last_failures = good(&[
            "2026-06-14T10:05:53Z",
            "2026-06-14T10:07:32Z",
            "2026-06-14T10:13:56Z",
            "2026-06-14T10:14:22Z",
            "2026-06-14T10:14:39Z",
            "2026-06-14T10:16:10Z",
        ]);
        for candidate in &mut keep_last_failures[2..5] {
            candidate.ok = false;
        }

        let mut within_then_failures: Vec<Candidate> = (20..=30)
            .map(|day| Candidate::succeeded(utc(&format!("2025-04-{day}T03:00:00Z"))))
            .collect();
        within_then_failures.push(Candidate::succeeded(utc("2025-05-01T03:00:00Z")));
        within_then_failures.extend(
            (2..=31).map(|day| Candidate::failed(utc(&format!("2025-05-{day:02}T03:00:00Z")))),
        );
        within_then_failures.push(Candidate::failed(utc("2025-06-01T03:00:00Z")));

        let mut daily_after_failure = good(&[
            "2026-06-15T03:00:00Z",
            "2026-06-14T03:00:00Z",
            "2026-06-13T03:00:00Z",
            "2026-06-12T03:00:00Z",
        ]);
        daily_after_failure[0].ok = false;

        let every_other_day = good(&[
            "2026-06-01T03:00:00Z",
            "2026-06-03T03:00:00Z",
            "2026-06-05T03:00:00Z",
            "2026-06-07T03:00:00Z",
            "2026-06-09T03:00:00Z",
            "2026-06-11T03:00:00Z",
            "2026-06-13T03:00:00Z",
            "2026-06-15T03:00:00Z",
        ]);
        let mut base_failed = every_other_day.clone();
        base_failed[4].ok = false;

        vec![
            Case {
                name: "daily keeps newest two days",
                rules: RetentionRules {
                    keep_daily: Some(2),
                    ..RetentionRules::default()
                },
                tz: UTC,
                candidates: good(&[
                    "2026-06-11T03:43:00Z",
                    "2026-06-12T03:43:00Z",
                    "2026-06-13T03:43:00Z",
                    "2026-06-14T03:43:00Z",
                    "2026-06-15T03:43:00Z",
                ]),
                keep: vec!["2026-06-15T03:43:00Z", "2026-06-14T03:43:00Z"],
            },
            Case {
                name: "last skips failed runs",
                rules: RetentionRules {
                    keep_last: Some(2),
                    ..RetentionRules::default()
                },
                tz: UTC,
                candidates: keep_last_failures,
                keep: vec!["2026-06-14T10:16:10Z", "2026-06-14T10:07:32Z"],
            },
            Case {
                name: "within measured from newest success",
                rules: RetentionRules {
                    keep_within: Some(duration("7d")),
                    ..RetentionRules::default()
                },
                tz: UTC,
                candidates: within_then_failures,
                keep: vec![
                    "2025-05-01T03:00:00Z",
                    "2025-04-30T03:00:00Z",
                    "2025-04-29T03:00:00Z",
                    "2025-04-28T03:00:00Z",
                    "2025-04-27T03:00:00Z",
                    "2025-04-26T03:00:00Z",
                    "2025-04-25T03:00:00Z",
                ],
            },
            Case {
                name: "daily ignores newer failure",
                rules: RetentionRules {
                    keep_daily: Some(2),
                    ..RetentionRules::default()
                },
                tz: UTC,
                candidates: daily_after_failure,
                keep: vec!["2026-06-14T03:00:00Z", "2026-06-13T03:00:00Z"],
            },
            Case {
                // 2024-12-29 is a Sunday in 2024-W52, and 2024-12-30 is the Monday of 2025-W01.
                name: "weekly ISO week across year end",
                rules: RetentionRules {
                    keep_weekly: Some(3),
                    ..RetentionRules::default()
                },
                tz: UTC,
                candidates: good(&[
                    "2024-12-29T12:00:00Z",
                    "2024-12-30T12:00:00Z",
                    "2025-01-05T12:00:00Z",
                    "2025-01-06T12:00:00Z",
                ]),
                keep: vec![
                    "2025-01-06T12:00:00Z",
                    "2025-01-05T12:00:00Z",
                    "2024-12-29T12:00:00Z",
                ],
            },
            Case {
                name: "yearly across year end",
                rules: RetentionRules {
                    keep_yearly: Some(2),
                    ..RetentionRules::default()
                },
                tz: UTC,
                candidates: good(&[
                    "2024-12-30T12:00:00Z",
                    "2024-12-31T23:59:59Z",
                    "2025-01-01T00:00:00Z",
                    "2025-01-02T00:00:00Z",
                ]),
                keep: vec!["2025-01-02T00:00:00Z", "2024-12-31T23:59:59Z"],
            },
            Case {
                name: "monthly keeps leap day",
                rules: RetentionRules {
                    keep_monthly: Some(2),
                    ..RetentionRules::default()
                },
                tz: UTC,
                candidates: good(&[
                    "2024-02-28T12:00:00Z",
                    "2024-02-29T12:00:00Z",
                    "2024-03-01T12:00:00Z",
                ]),
                keep: vec!["2024-03-01T12:00:00Z", "2024-02-29T12:00:00Z"],
            },
            Case {
                name: "daily counts leap day",
                rules: RetentionRules {
                    keep_daily: Some(2),
                    ..RetentionRules::default()
                },
                tz: UTC,
                candidates: good(&[
                    "2024-02-28T12:00:00Z",
                    "2024-02-29T12:00:00Z",
                    "2024-03-01T12:00:00Z",
                ]),
                keep: vec!["2024-03-01T12:00:00Z", "2024-02-29T12:00:00Z"],
            },
            Case {
                // 2025-02-28 minus one year is 2024-02-28, so the leap day is within the year.
                name: "within year spans leap day",
                rules: RetentionRules {
                    keep_within: Some(duration("1y")),
                    ..RetentionRules::default()
                },
                tz: UTC,
                candidates: good(&[
                    "2024-02-28T12:00:00Z",
                    "2024-02-29T12:00:00Z",
                    "2025-02-28T12:00:00Z",
                ]),
                keep: vec!["2025-02-28T12:00:00Z", "2024-02-29T12:00:00Z"],
            },
            Case {
                name: "monthly keeps month ends",
                rules: RetentionRules {
                    keep_monthly: Some(3),
                    ..RetentionRules::default()
                },
                tz: UTC,
                candidates: good(&[
                    "2025-12-31T23:00:00Z",
                    "2026-01-15T23:00:00Z",
                    "2026-01-31T23:00:00Z",
                    "2026-02-28T23:00:00Z",
                    "2026-03-15T23:00:00Z",
                    "2026-03-31T23:00:00Z",
                ]),
                keep: vec![
                    "2026-03-31T23:00:00Z",
                    "2026-02-28T23:00:00Z",
                    "2026-01-31T23:00:00Z",
                ],
            },
            Case {
                // In Berlin 2026-03-31T23:00Z is April 1 01:00 and 2026-02-28T23:00Z is March 1.
                name: "monthly month ends in Berlin",
                rules: RetentionRules {
                    keep_monthly: Some(2),
                    ..RetentionRules::default()
                },
                tz: Berlin,
                candidates: good(&[
                    "2026-02-28T23:00:00Z",
                    "2026-03-31T21:00:00Z",
                    "2026-03-31T23:00:00Z",
                ]),
                keep: vec!["2026-03-31T23:00:00Z", "2026-03-31T21:00:00Z"],
            },
            Case {
                name: "monthly month ends in UTC",
                rules: RetentionRules {
                    keep_monthly: Some(2),
                    ..RetentionRules::default()
                },
                tz: UTC,
                candidates: good(&[
                    "2026-02-28T23:00:00Z",
                    "2026-03-31T21:00:00Z",
                    "2026-03-31T23:00:00Z",
                ]),
                keep: vec!["2026-03-31T23:00:00Z", "2026-02-28T23:00:00Z"],
            },
            Case {
                // Berlin switches to CEST on 2026-03-29. Local 00:30 on that day is 23:30Z on
                // March 28, and local 23:30 is 21:30Z.
                name: "daily spring forward in Berlin",
                rules: RetentionRules {
                    keep_daily: Some(3),
                    ..RetentionRules::default()
                },
                tz: Berlin,
                candidates: good(&[
                    "2026-03-28T22:00:00Z",
                    "2026-03-28T23:30:00Z",
                    "2026-03-29T21:30:00Z",
                    "2026-03-29T22:30:00Z",
                ]),
                keep: vec![
                    "2026-03-29T22:30:00Z",
                    "2026-03-29T21:30:00Z",
                    "2026-03-28T22:00:00Z",
                ],
            },
            Case {
                name: "daily spring forward in UTC",
                rules: RetentionRules {
                    keep_daily: Some(2),
                    ..RetentionRules::default()
                },
                tz: UTC,
                candidates: good(&[
                    "2026-03-28T22:00:00Z",
                    "2026-03-28T23:30:00Z",
                    "2026-03-29T21:30:00Z",
                    "2026-03-29T22:30:00Z",
                ]),
                keep: vec!["2026-03-29T22:30:00Z", "2026-03-28T23:30:00Z"],
            },
            Case {
                // Berlin switches back to CET on 2026-10-25. Local 00:30 on that day is 22:30Z
                // on October 24, and local 23:30 is 22:30Z on October 25.
                name: "daily fall back in Berlin",
                rules: RetentionRules {
                    keep_daily: Some(3),
                    ..RetentionRules::default()
                },
                tz: Berlin,
                candidates: good(&[
                    "2026-10-24T21:00:00Z",
                    "2026-10-24T22:30:00Z",
                    "2026-10-25T22:30:00Z",
                    "2026-10-25T23:30:00Z",
                ]),
                keep: vec![
                    "2026-10-25T23:30:00Z",
                    "2026-10-25T22:30:00Z",
                    "2026-10-24T21:00:00Z",
                ],
            },
            Case {
                name: "hourly across fall back",
                rules: RetentionRules {
                    keep_hourly: Some(3),
                    ..RetentionRules::default()
                },
                tz: Berlin,
                // 00:30Z and 01:30Z are both 02:30 local, once in CEST and once in CET, so they
                // share the local hour 02h.
                candidates: good(&[
                    "2026-10-24T23:30:00Z",
                    "2026-10-25T00:30:00Z",
                    "2026-10-25T01:30:00Z",
                    "2026-10-25T02:30:00Z",
                ]),
                keep: vec![
                    "2026-10-25T02:30:00Z",
                    "2026-10-25T01:30:00Z",
                    "2026-10-24T23:30:00Z",
                ],
            },
            Case {
                name: "recovery window reaching start",
                rules: RetentionRules {
                    recovery_window: Some(duration("4d")),
                    ..RetentionRules::default()
                },
                tz: UTC,
                candidates: every_other_day.clone(),
                keep: vec![
                    "2026-06-15T03:00:00Z",
                    "2026-06-13T03:00:00Z",
                    "2026-06-11T03:00:00Z",
                ],
            },
            Case {
                name: "recovery window keeps base",
                rules: RetentionRules {
                    recovery_window: Some(duration("5d")),
                    ..RetentionRules::default()
                },
                tz: UTC,
                candidates: every_other_day.clone(),
                keep: vec![
                    "2026-06-15T03:00:00Z",
                    "2026-06-13T03:00:00Z",
                    "2026-06-11T03:00:00Z",
                    "2026-06-09T03:00:00Z",
                ],
            },
            Case {
                name: "recovery base skips failure",
                rules: RetentionRules {
                    recovery_window: Some(duration("5d")),
                    ..RetentionRules::default()
                },
                tz: UTC,
                candidates: base_failed,
                keep: vec![
                    "2026-06-15T03:00:00Z",
                    "2026-06-13T03:00:00Z",
                    "2026-06-11T03:00:00Z",
                    "2026-06-07T03:00:00Z",
                ],
            },
            Case {
                // 2026-06-15 minus one month is 2026-05-15, so the base is the May 14 snapshot.
                name: "recovery window in months",
                rules: RetentionRules {
                    recovery_window: Some(duration("1m")),
                    ..RetentionRules::default()
                },
                tz: UTC,
                candidates: good(&[
                    "2026-05-01T03:00:00Z",
                    "2026-05-14T03:00:00Z",
                    "2026-05-16T03:00:00Z",
                    "2026-06-15T03:00:00Z",
                ]),
                keep: vec![
                    "2026-06-15T03:00:00Z",
                    "2026-05-16T03:00:00Z",
                    "2026-05-14T03:00:00Z",
                ],
            },
            Case {
                name: "recovery window ORed with daily",
                rules: RetentionRules {
                    keep_daily: Some(1),
                    recovery_window: Some(duration("3d")),
                    ..RetentionRules::default()
                },
                tz: UTC,
                candidates: every_other_day,
                keep: vec![
                    "2026-06-15T03:00:00Z",
                    "2026-06-13T03:00:00Z",
                    "2026-06-11T03:00:00Z",
                ],
            },
            Case {
                name: "within excludes exact start",
                rules: RetentionRules {
                    keep_within: Some(duration("2d")),
                    ..RetentionRules::default()
                },
                tz: UTC,
                candidates: good(&[
                    "2026-06-13T03:00:00Z",
                    "2026-06-13T03:00:01Z",
                    "2026-06-15T03:00:00Z",
                ]),
                keep: vec!["2026-06-15T03:00:00Z", "2026-06-13T03:00:01Z"],
            },
            Case {
                name: "rules are ORed",
                rules: RetentionRules {
                    keep_last: Some(1),
                    keep_monthly: Some(2),
                    ..RetentionRules::default()
                },
                tz: UTC,
                candidates: good(&[
                    "2026-04-10T03:00:00Z",
                    "2026-05-10T03:00:00Z",
                    "2026-05-20T03:00:00Z",
                    "2026-06-10T03:00:00Z",
                    "2026-06-11T03:00:00Z",
                ]),
                keep: vec!["2026-06-11T03:00:00Z", "2026-05-20T03:00:00Z"],
            },
        ]
    }

    #[test]
    fn rules_keep_expected_snapshots() {
        for case in cases() {
            let expected: Vec<DateTime<Utc>> = case.keep.iter().map(|time| utc(time)).collect();
            let kept = kept_times(&case.rules, &case.candidates, case.tz);
            assert_eq!(kept, expected, "case {:?}", case.name);
        }
    }

    #[test]
    fn empty_list_gives_no_decisions() {
        let rules = RetentionRules {
            keep_daily: Some(7),
            ..RetentionRules::default()
        };
        assert_eq!(rules.apply(&[], UTC), Ok(Vec::new()));
    }

    #[test]
    fn empty_policy_is_error() {
        let candidates = good(&["2026-06-15T03:00:00Z"]);
        let unset_rules = [
            RetentionRules::default(),
            RetentionRules {
                keep_last: Some(0),
                keep_daily: Some(0),
                keep_within: Some(duration("0d")),
                recovery_window: Some(duration("0h")),
                ..RetentionRules::default()
            },
        ];
        for rules in unset_rules {
            assert!(rules.is_empty(), "{rules:?}");
            assert_eq!(
                rules.apply(&candidates, UTC),
                Err(RetentionError::EmptyPolicy)
            );
            assert_eq!(rules.apply(&[], UTC), Err(RetentionError::EmptyPolicy));
        }
    }

    #[test]
    fn is_empty_false_for_each_rule() {
        let rules = [
            RetentionRules {
                keep_last: Some(1),
                ..RetentionRules::default()
            },
            RetentionRules {
                keep_hourly: Some(1),
                ..RetentionRules::default()
            },
            RetentionRules {
                keep_daily: Some(1),
                ..RetentionRules::default()
            },
            RetentionRules {
                keep_weekly: Some(1),
                ..RetentionRules::default()
            },
            RetentionRules {
                keep_monthly: Some(1),
                ..RetentionRules::default()
            },
            RetentionRules {
                keep_yearly: Some(1),
                ..RetentionRules::default()
            },
            RetentionRules {
                keep_within: Some(duration("1s")),
                ..RetentionRules::default()
            },
            RetentionRules {
                recovery_window: Some(duration("1d")),
                ..RetentionRules::default()
            },
        ];
        for rules in rules {
            assert!(!rules.is_empty(), "{rules:?}");
        }
    }

    #[test]
    fn failed_snapshots_are_removed_with_reason() {
        let mut candidates = good(&["2026-06-14T03:00:00Z", "2026-06-15T03:00:00Z"]);
        candidates[1].ok = false;
        candidates[1].is_final = true;
        candidates[1].verified = true;
        let rules = RetentionRules {
            keep_last: Some(5),
            ..RetentionRules::default()
        };

        let decisions = rules.apply(&candidates, UTC).unwrap();

        assert_eq!(
            decisions[1],
            Decision {
                keep: false,
                reasons: vec![Reason::Failed]
            }
        );
        assert!(decisions[0].keep);
        assert_eq!(decisions[0].reasons, vec![Reason::Last, Reason::Newest]);
    }

    #[test]
    fn only_failures_are_all_removed() {
        let candidates: Vec<Candidate> = ["2026-06-14T03:00:00Z", "2026-06-15T03:00:00Z"]
            .iter()
            .map(|time| Candidate::failed(utc(time)))
            .collect();
        let rules = RetentionRules {
            keep_within: Some(duration("30d")),
            recovery_window: Some(duration("30d")),
            ..RetentionRules::default()
        };

        let decisions = rules.apply(&candidates, UTC).unwrap();

        for decision in decisions {
            assert!(!decision.keep);
            assert_eq!(decision.reasons, vec![Reason::Failed]);
        }
    }

    #[test]
    fn newest_success_has_newest_reason() {
        let mut candidates = good(&[
            "2026-06-10T03:00:00Z",
            "2026-06-15T03:00:00Z",
            "2026-06-16T03:00:00Z",
        ]);
        candidates[2].ok = false;
        let rules = RetentionRules {
            recovery_window: Some(duration("1h")),
            ..RetentionRules::default()
        };

        let decisions = rules.apply(&candidates, UTC).unwrap();

        assert_eq!(
            reasons_at(&decisions, &candidates, "2026-06-15T03:00:00Z"),
            ["recovery window 1h", "newest"]
        );
        assert_eq!(
            reasons_at(&decisions, &candidates, "2026-06-10T03:00:00Z"),
            ["base of recovery window 1h"]
        );
        assert_eq!(
            reasons_at(&decisions, &candidates, "2026-06-16T03:00:00Z"),
            ["failed"]
        );
    }

    #[test]
    fn final_snapshots_are_kept() {
        let mut candidates = good(&[
            "2026-01-01T03:00:00Z",
            "2026-03-01T03:00:00Z",
            "2026-06-15T03:00:00Z",
        ]);
        candidates[0].is_final = true;
        let rules = RetentionRules {
            keep_last: Some(1),
            ..RetentionRules::default()
        };

        let decisions = rules.apply(&candidates, UTC).unwrap();

        assert!(decisions[0].keep);
        assert_eq!(decisions[0].reasons, vec![Reason::Final]);
        assert!(!decisions[1].keep);
        assert!(decisions[1].reasons.is_empty());
        assert_eq!(decisions[2].reasons, vec![Reason::Last, Reason::Newest]);
    }

    #[test]
    fn newest_verified_is_kept() {
        let mut candidates = good(&[
            "2026-06-11T03:00:00Z",
            "2026-06-12T03:00:00Z",
            "2026-06-13T03:00:00Z",
            "2026-06-14T03:00:00Z",
            "2026-06-15T03:00:00Z",
        ]);
        candidates[0].verified = true;
        candidates[1].verified = true;
        // A newer verified snapshot that failed does not count.
        candidates[3].verified = true;
        candidates[3].ok = false;
        let rules = RetentionRules {
            keep_last: Some(1),
            ..RetentionRules::default()
        };

        let decisions = rules.apply(&candidates, UTC).unwrap();
        let kept: Vec<bool> = decisions.iter().map(|decision| decision.keep).collect();

        assert_eq!(kept, [false, true, false, false, true]);
        assert_eq!(decisions[1].reasons, vec![Reason::NewestVerified]);
        assert_eq!(decisions[3].reasons, vec![Reason::Failed]);
    }

    #[test]
    fn newest_verified_shares_reason_list() {
        let mut candidates = good(&["2026-06-15T03:00:00Z"]);
        candidates[0].verified = true;
        candidates[0].is_final = true;
        let rules = RetentionRules {
            keep_daily: Some(1),
            ..RetentionRules::default()
        };

        let decisions = rules.apply(&candidates, UTC).unwrap();

        let texts: Vec<String> = decisions[0].reasons.iter().map(Reason::to_string).collect();
        assert_eq!(
            texts,
            ["daily 2026-06-15", "final", "newest", "newest verified"]
        );
    }

    #[test]
    fn oldest_daily_reason() {
        let candidates = good(&[
            "2026-06-13T08:00:00Z",
            "2026-06-13T10:00:00Z",
            "2026-06-14T09:00:00Z",
            "2026-06-14T10:00:00Z",
        ]);
        let rules = RetentionRules {
            keep_daily: Some(5),
            ..RetentionRules::default()
        };

        let decisions = rules.apply(&candidates, UTC).unwrap();

        assert_eq!(
            reasons_at(&decisions, &candidates, "2026-06-14T10:00:00Z"),
            ["daily 2026-06-14", "newest"]
        );
        assert!(reasons_at(&decisions, &candidates, "2026-06-14T09:00:00Z").is_empty());
        assert_eq!(
            reasons_at(&decisions, &candidates, "2026-06-13T10:00:00Z"),
            ["daily 2026-06-13"]
        );
        assert_eq!(
            reasons_at(&decisions, &candidates, "2026-06-13T08:00:00Z"),
            ["oldest daily"]
        );
    }

    #[test]
    fn oldest_not_kept_when_count_used() {
        let candidates = good(&["2026-06-14T08:00:00Z", "2026-06-14T10:00:00Z"]);
        let rules = RetentionRules {
            keep_daily: Some(1),
            ..RetentionRules::default()
        };

        let kept = kept_times(&rules, &candidates, UTC);

        assert_eq!(kept, [utc("2026-06-14T10:00:00Z")]);
    }

    #[test]
    fn period_reason_texts() {
        let candidates = good(&["2026-06-14T10:20:00Z", "2026-06-14T10:25:00Z"]);
        let rules = RetentionRules {
            keep_last: Some(1),
            keep_hourly: Some(1),
            keep_daily: Some(1),
            keep_weekly: Some(1),
            keep_monthly: Some(1),
            keep_yearly: Some(1),
            keep_within: Some(duration("7d")),
            recovery_window: Some(duration("30d")),
        };

        let decisions = rules.apply(&candidates, UTC).unwrap();

        assert_eq!(
            reasons_at(&decisions, &candidates, "2026-06-14T10:25:00Z"),
            [
                "last",
                "hourly 2026-06-14 10h",
                "daily 2026-06-14",
                "weekly 2026-W24",
                "monthly 2026-06",
                "yearly 2026",
                "within 7d",
                "recovery window 30d",
                "newest",
            ]
        );
        assert_eq!(
            reasons_at(&decisions, &candidates, "2026-06-14T10:20:00Z"),
            ["within 7d", "recovery window 30d"]
        );
    }

    #[test]
    fn reason_display_texts() {
        let date = NaiveDate::from_ymd_opt(2026, 6, 14).unwrap();
        let cases = [
            (Reason::Last, "last"),
            (Reason::Hourly { date, hour: 7 }, "hourly 2026-06-14 07h"),
            (Reason::Daily { date }, "daily 2026-06-14"),
            (
                Reason::Weekly {
                    year: 2025,
                    week: 1,
                },
                "weekly 2025-W01",
            ),
            (
                Reason::Monthly {
                    year: 2026,
                    month: 5,
                },
                "monthly 2026-05",
            ),
            (Reason::Yearly { year: 2026 }, "yearly 2026"),
            (
                Reason::Oldest {
                    rule: PeriodicRule::Weekly,
                },
                "oldest weekly",
            ),
            (
                Reason::Within {
                    duration: duration("7d"),
                },
                "within 7d",
            ),
            (
                Reason::RecoveryWindow {
                    window: duration("30d"),
                },
                "recovery window 30d",
            ),
            (
                Reason::RecoveryBase {
                    window: duration("30d"),
                },
                "base of recovery window 30d",
            ),
            (Reason::Final, "final"),
            (Reason::Newest, "newest"),
            (Reason::NewestVerified, "newest verified"),
            (Reason::Failed, "failed"),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
    }

    #[test]
    fn reason_json_form() {
        let date = NaiveDate::from_ymd_opt(2026, 6, 14).unwrap();
        let cases = [
            (Reason::Last, r#"{"reason":"last"}"#),
            (
                Reason::Hourly { date, hour: 10 },
                r#"{"reason":"hourly","date":"2026-06-14","hour":10}"#,
            ),
            (
                Reason::Daily { date },
                r#"{"reason":"daily","date":"2026-06-14"}"#,
            ),
            (
                Reason::Weekly {
                    year: 2026,
                    week: 24,
                },
                r#"{"reason":"weekly","year":2026,"week":24}"#,
            ),
            (
                Reason::Monthly {
                    year: 2026,
                    month: 5,
                },
                r#"{"reason":"monthly","year":2026,"month":5}"#,
            ),
            (
                Reason::Yearly { year: 2026 },
                r#"{"reason":"yearly","year":2026}"#,
            ),
            (
                Reason::Oldest {
                    rule: PeriodicRule::Daily,
                },
                r#"{"reason":"oldest","rule":"daily"}"#,
            ),
            (
                Reason::Within {
                    duration: duration("7d"),
                },
                r#"{"reason":"within","duration":"7d"}"#,
            ),
            (
                Reason::RecoveryWindow {
                    window: duration("30d"),
                },
                r#"{"reason":"recovery_window","window":"30d"}"#,
            ),
            (
                Reason::RecoveryBase {
                    window: duration("30d"),
                },
                r#"{"reason":"recovery_base","window":"30d"}"#,
            ),
            (Reason::Final, r#"{"reason":"final"}"#),
            (Reason::Newest, r#"{"reason":"newest"}"#),
            (Reason::NewestVerified, r#"{"reason":"newest_verified"}"#),
            (Reason::Failed, r#"{"reason":"failed"}"#),
        ];
        for (reason, json) in cases {
            assert_eq!(serde_json::to_string(&reason).unwrap(), json);
            assert_eq!(serde_json::from_str::<Reason>(json).unwrap(), reason);
        }
    }

    #[test]
    fn equal_times_keep_input_order() {
        let candidates = good(&[
            "2026-06-15T03:00:00Z",
            "2026-06-15T03:00:00Z",
            "2026-06-15T03:00:00Z",
        ]);
        let rules = RetentionRules {
            keep_last: Some(2),
            ..RetentionRules::default()
        };

        let decisions = rules.apply(&candidates, UTC).unwrap();

        assert_eq!(decisions[0].reasons, vec![Reason::Last, Reason::Newest]);
        assert_eq!(decisions[1].reasons, vec![Reason::Last]);
        assert!(!decisions[2].keep);
    }

    #[test]
    fn equal_times_are_separate_snapshots() {
        let candidates = good(&[
            "2026-06-14T03:00:00Z",
            "2026-06-15T03:00:00Z",
            "2026-06-15T03:00:00Z",
        ]);
        let rules = RetentionRules {
            keep_within: Some(duration("1h")),
            ..RetentionRules::default()
        };

        let kept = kept_times(&rules, &candidates, UTC);

        assert_eq!(
            kept,
            [utc("2026-06-15T03:00:00Z"), utc("2026-06-15T03:00:00Z")]
        );
    }

    #[test]
    fn rules_parse_from_json() {
        let rules: RetentionRules = serde_json::from_str(
            r#"{"keep_daily":7,"keep_within":"1y6m","recovery_window":"30d"}"#,
        )
        .unwrap();
        assert_eq!(
            rules,
            RetentionRules {
                keep_daily: Some(7),
                keep_within: Some(duration("1y6m")),
                recovery_window: Some(duration("30d")),
                ..RetentionRules::default()
            }
        );
        assert_eq!(
            serde_json::to_string(&rules).unwrap(),
            r#"{"keep_daily":7,"keep_within":"1y6m","recovery_window":"30d"}"#
        );

        let unknown = serde_json::from_str::<RetentionRules>(r#"{"keep_dayly":7}"#).unwrap_err();
        assert!(unknown.to_string().contains("keep_dayly"), "{unknown}");
        let bad_unit =
            serde_json::from_str::<RetentionRules>(r#"{"keep_within":"7x"}"#).unwrap_err();
        assert!(
            bad_unit.to_string().contains("unknown unit \"x\""),
            "{bad_unit}"
        );
    }
}
