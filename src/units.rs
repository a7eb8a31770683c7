//! Units for the duration and size fields of policy files.
//!
//! Every duration field uses [`Duration`] and every size field uses [`ByteSize`], so one unit
//! table applies to all policy files. `m` means calendar months everywhere, never minutes.
//!
//! | Duration unit | Meaning |
//! |---|---|
//! | `s` | seconds |
//! | `min` | minutes |
//! | `h` | hours |
//! | `d` | calendar days |
//! | `w` | weeks of 7 calendar days |
//! | `m` | calendar months |
//! | `y` | calendar years |
//!
//! A duration is one or more `<number><unit>` terms without spaces, in any order, each unit at
//! most once: `30d`, `12h`, `90min`, `1y6m`, `2d12h`.
//!
//! | Size unit | Bytes |
//! |---|---|
//! | none or `B` | 1 |
//! | `KB`, `MB`, `GB`, `TB` | 1000, 1000², 1000³, 1000⁴ |
//! | `KiB`, `MiB`, `GiB`, `TiB` | 1024, 1024², 1024³, 1024⁴ |
//!
//! A size is a number with an optional decimal fraction and an optional unit: `4096`, `512MiB`,
//! `1.5GiB`, `100MB`. Unit names are case-sensitive.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, Offset, TimeDelta, TimeZone,
};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The duration units as listed in parse errors.
const DURATION_UNITS_HINT: &str = "s, min, h, d, w, m (months), y";

/// The size units as listed in parse errors.
const BYTE_SIZE_UNITS_HINT: &str =
    "B, KB, MB, GB, TB (1000-based), KiB, MiB, GiB, TiB (1024-based), or no unit for bytes";

/// Maximum number of significant decimal places accepted in a size such as `1.5GiB`.
const MAX_BYTE_SIZE_DECIMALS: usize = 24;

/// A calendar-aware span of time such as `30d`, `6m` or `1y6m`.
///
/// Each field counts one unit. The fields are not normalised: `14d` and `2w` are different
/// values, so [`Display`](fmt::Display) prints back the units that were parsed. Months and years
/// have no fixed length, so only [`Duration::subtract_from`] can apply them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Duration {
    pub years: u32,
    pub months: u32,
    pub weeks: u32,
    pub days: u32,
    pub hours: u32,
    pub minutes: u32,
    pub seconds: u32,
}

/// One unit of a [`Duration`], listed from the largest to the smallest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DurationUnit {
    Year,
    Month,
    Week,
    Day,
    Hour,
    Minute,
    Second,
}

impl DurationUnit {
    const ALL: [DurationUnit; 7] = [
        DurationUnit::Year,
        DurationUnit::Month,
        DurationUnit::Week,
        DurationUnit::Day,
        DurationUnit::Hour,
        DurationUnit::Minute,
        DurationUnit::Second,
    ];

    fn suffix(self) -> &'static str {
        match self {
            DurationUnit::Year => "y",
            DurationUnit::Month => "m",
            DurationUnit::Week => "w",
            DurationUnit::Day => "d",
            DurationUnit::Hour => "h",
            DurationUnit::Minute => "min",
            DurationUnit::Second => "s",
        }
    }

    fn from_suffix(suffix: &str) -> Option<DurationUnit> {
        DurationUnit::ALL
            .into_iter()
            .find(|unit| unit.suffix() == suffix)
    }

    fn field_mut(self, duration: &mut Duration) -> &mut u32 {
        match self {
            DurationUnit::Year => &mut duration.years,
            DurationUnit::Month => &mut duration.months,
            DurationUnit::Week => &mut duration.weeks,
            DurationUnit::Day => &mut duration.days,
            DurationUnit::Hour => &mut duration.hours,
            DurationUnit::Minute => &mut duration.minutes,
            DurationUnit::Second => &mut duration.seconds,
        }
    }
}

impl Duration {
    /// Returns true when every field is zero.
    pub fn is_zero(&self) -> bool {
        *self == Duration::default()
    }

    /// Converts to a fixed-length duration, counting a day as 86,400 seconds and a week as 7 days.
    ///
    /// Returns `None` when the duration has months or years, because those have no fixed length.
    pub fn to_std(&self) -> Option<std::time::Duration> {
        if self.years != 0 || self.months != 0 {
            return None;
        }
        Some(std::time::Duration::from_secs(self.fixed_seconds()))
    }

    /// Subtracts the duration from `t` the way restic's `forget --keep-within` does.
    ///
    /// restic (`internal/data/snapshot_policy.go`, 0.16 and later) computes
    /// `t.AddDate(-years, -months, -days).Add(-hours)` with Go's `time` package, and this method
    /// follows the same two steps:
    ///
    /// 1. Years, months, weeks (as 7 days) and days move the wall-clock date in `t`'s time zone,
    ///    keeping the time of day. A day of the month that does not exist rolls over into the next
    ///    month, as in Go's `time.Date`. So March 31 minus 1 month is "February 31", which is
    ///    March 3 in a common year and March 2 in a leap year. A wall-clock time that falls into a
    ///    daylight-saving gap or overlap is resolved as Go's `time.Date` resolves it, which
    ///    depends on the zone: in Europe/Berlin a reading in the spring-forward gap moves one
    ///    hour forward, and in America/New_York it moves one hour back.
    /// 2. Hours, minutes and seconds are then subtracted as elapsed time.
    ///
    /// A result before chrono's earliest representable time saturates to a time near that limit.
    pub fn subtract_from<Tz: TimeZone>(&self, t: DateTime<Tz>) -> DateTime<Tz> {
        let zone = t.timezone();
        self.checked_subtract_from(t)
            .unwrap_or_else(|| zone.from_utc_datetime(&earliest_safe_utc()))
    }

    fn checked_subtract_from<Tz: TimeZone>(&self, t: DateTime<Tz>) -> Option<DateTime<Tz>> {
        let zone = t.timezone();
        let wall = t.naive_local();

        let total_months = i64::from(wall.year()) * 12 + i64::from(wall.month0())
            - i64::from(self.years) * 12
            - i64::from(self.months);
        let year = i32::try_from(total_months.div_euclid(12)).ok()?;
        let month = u32::try_from(total_months.rem_euclid(12)).ok()? + 1;
        let days_back = i64::from(self.weeks) * 7 + i64::from(self.days);
        let date = NaiveDate::from_ymd_opt(year, month, 1)?
            .checked_add_signed(TimeDelta::try_days(i64::from(wall.day()) - 1 - days_back)?)?;

        let shifted = resolve_wall_clock(&zone, date.and_time(wall.time()))?;
        let elapsed = TimeDelta::try_seconds(
            i64::from(self.hours) * 3600 + i64::from(self.minutes) * 60 + i64::from(self.seconds),
        )?;
        let utc = shifted.checked_sub_signed(elapsed)?;
        (utc >= earliest_safe_utc()).then(|| zone.from_utc_datetime(&utc))
    }

    fn fixed_seconds(&self) -> u64 {
        u64::from(self.weeks) * 7 * 86_400
            + u64::from(self.days) * 86_400
            + u64::from(self.hours) * 3_600
            + u64::from(self.minutes) * 60
            + u64::from(self.seconds)
    }

    fn count(&self, unit: DurationUnit) -> u32 {
        match unit {
            DurationUnit::Year => self.years,
            DurationUnit::Month => self.months,
            DurationUnit::Week => self.weeks,
            DurationUnit::Day => self.days,
            DurationUnit::Hour => self.hours,
            DurationUnit::Minute => self.minutes,
            DurationUnit::Second => self.seconds,
        }
    }
}

/// Converts a wall-clock reading in `zone` to UTC with the rule of Go's `time.Date`.
///
/// Go looks up the offset in force at the wall-clock reading taken as a UTC instant. If that
/// offset does not hold at the resulting instant, it takes the offset in force at that instant.
/// So a reading inside a spring-forward gap moves forward by the gap's length in zones east of
/// UTC (Europe/Berlin) and back in zones west of it (America/New_York). For a reading that
/// occurs twice, the sign of the offset likewise decides which of the two is taken.
fn resolve_wall_clock<Tz: TimeZone>(zone: &Tz, wall: NaiveDateTime) -> Option<NaiveDateTime> {
    let guess: FixedOffset = zone.offset_from_utc_datetime(&wall).fix();
    let utc = wall.checked_sub_offset(guess)?;
    let actual: FixedOffset = zone.offset_from_utc_datetime(&utc).fix();
    if actual == guess {
        Some(utc)
    } else {
        wall.checked_sub_offset(actual)
    }
}

/// Earliest UTC time that [`Duration::subtract_from`] returns, two days after chrono's minimum
/// so that the local time in any zone stays representable.
fn earliest_safe_utc() -> NaiveDateTime {
    NaiveDateTime::MIN + TimeDelta::days(2)
}

impl fmt::Display for Duration {
    /// Prints each non-zero field from years down to seconds, such as `1y6m` or `2d12h`, and
    /// `0s` for a zero duration.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("0s");
        }
        for unit in DurationUnit::ALL {
            let count = self.count(unit);
            if count != 0 {
                write!(f, "{count}{}", unit.suffix())?;
            }
        }
        Ok(())
    }
}

/// An invalid duration string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {kind}; use one of {DURATION_UNITS_HINT}")]
pub struct ParseDurationError {
    input: String,
    kind: DurationErrorKind,
}

impl ParseDurationError {
    /// Returns the string that failed to parse.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// Returns what is wrong with the input.
    pub fn kind(&self) -> &DurationErrorKind {
        &self.kind
    }
}

/// The cause of a [`ParseDurationError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationErrorKind {
    #[error("the value is empty")]
    Empty,
    #[error("whitespace is not allowed, write terms together such as \"2d12h\"")]
    Whitespace,
    #[error("negative durations are not allowed")]
    Negative,
    #[error("fractions are not allowed, combine units instead such as \"1d12h\"")]
    Fraction,
    #[error("expected a number before {text:?}")]
    MissingNumber { text: String },
    #[error("number {number} has no unit")]
    MissingUnit { number: String },
    #[error("unknown unit {unit:?}")]
    UnknownUnit { unit: String },
    #[error("unit {unit:?} appears more than once")]
    RepeatedUnit { unit: String },
    #[error("number {number} is too large (maximum {})", u32::MAX)]
    TooLarge { number: String },
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |kind| ParseDurationError {
            input: input.to_owned(),
            kind,
        };

        let text = input.trim();
        if text.is_empty() {
            return Err(error(DurationErrorKind::Empty));
        }
        if text.contains(char::is_whitespace) {
            return Err(error(DurationErrorKind::Whitespace));
        }
        if text.contains('-') {
            return Err(error(DurationErrorKind::Negative));
        }

        let mut duration = Duration::default();
        let mut seen: Vec<DurationUnit> = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let (digits, after_digits) = split_leading(rest, |c| c.is_ascii_digit());
            let (suffix, after_suffix) = split_leading(after_digits, |c| !c.is_ascii_digit());
            rest = after_suffix;

            if suffix.starts_with(['.', ',']) {
                return Err(error(DurationErrorKind::Fraction));
            }
            if digits.is_empty() {
                return Err(error(DurationErrorKind::MissingNumber {
                    text: suffix.to_owned(),
                }));
            }
            if suffix.is_empty() {
                return Err(error(DurationErrorKind::MissingUnit {
                    number: digits.to_owned(),
                }));
            }
            let Some(unit) = DurationUnit::from_suffix(suffix) else {
                return Err(error(DurationErrorKind::UnknownUnit {
                    unit: suffix.to_owned(),
                }));
            };
            if seen.contains(&unit) {
                return Err(error(DurationErrorKind::RepeatedUnit {
                    unit: suffix.to_owned(),
                }));
            }
            seen.push(unit);

            // `digits` contains only ASCII digits, so parsing fails only on overflow.
            let count: u32 = digits.parse().map_err(|_| {
                error(DurationErrorKind::TooLarge {
                    number: digits.to_owned(),
                })
            })?;
            *unit.field_mut(&mut duration) = count;
        }
        Ok(duration)
    }
}

/// Splits `text` after its longest prefix whose characters all satisfy `predicate`.
fn split_leading(text: &str, predicate: impl Fn(char) -> bool) -> (&str, &str) {
    let end = text.find(|c: char| !predicate(c)).unwrap_or(text.len());
    text.split_at(end)
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a duration string such as \"30d\" or \"1y6m\" with units {DURATION_UNITS_HINT}"
                )
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Duration, E> {
                value.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

/// A number of bytes, written in policy files as `20GiB`, `100MB` or `4096`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Returns the number of bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

/// Size units with their multipliers, largest first within each base.
const BYTE_SIZE_UNITS: [(&str, u64); 9] = [
    ("TiB", 1 << 40),
    ("TB", 1_000_000_000_000),
    ("GiB", 1 << 30),
    ("GB", 1_000_000_000),
    ("MiB", 1 << 20),
    ("MB", 1_000_000),
    ("KiB", 1 << 10),
    ("KB", 1_000),
    ("B", 1),
];

impl fmt::Display for ByteSize {
    /// Prints the value in the largest unit that divides it exactly, such as `1536MiB` for
    /// 1.5 GiB, `100MB`, `4097B` or `0B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        let (name, multiplier) = BYTE_SIZE_UNITS
            .into_iter()
            .find(|&(_, multiplier)| bytes != 0 && bytes.is_multiple_of(multiplier))
            .unwrap_or(("B", 1));
        write!(f, "{}{name}", bytes / multiplier)
    }
}

/// An invalid size string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid byte size {input:?}: {kind}; use a number with one of {BYTE_SIZE_UNITS_HINT}")]
pub struct ParseByteSizeError {
    input: String,
    kind: ByteSizeErrorKind,
}

impl ParseByteSizeError {
    /// Returns the string that failed to parse.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// Returns what is wrong with the input.
    pub fn kind(&self) -> &ByteSizeErrorKind {
        &self.kind
    }
}

/// The cause of a [`ParseByteSizeError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeErrorKind {
    #[error("the value is empty")]
    Empty,
    #[error("whitespace is not allowed, write the unit right after the number such as \"20GiB\"")]
    Whitespace,
    #[error("negative sizes are not allowed")]
    Negative,
    #[error("{text:?} is not a number")]
    InvalidNumber { text: String },
    #[error("unknown unit {unit:?}")]
    UnknownUnit { unit: String },
    #[error("the value is not a whole number of bytes")]
    NotWholeBytes,
    #[error("more than {MAX_BYTE_SIZE_DECIMALS} decimal places")]
    TooManyDecimals,
    #[error("the value is larger than {} bytes", u64::MAX)]
    TooLarge,
}

impl FromStr for ByteSize {
    type Err = ParseByteSizeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |kind| ParseByteSizeError {
            input: input.to_owned(),
            kind,
        };

        let text = input.trim();
        if text.is_empty() {
            return Err(error(ByteSizeErrorKind::Empty));
        }
        if text.contains(char::is_whitespace) {
            return Err(error(ByteSizeErrorKind::Whitespace));
        }
        if text.starts_with('-') {
            return Err(error(ByteSizeErrorKind::Negative));
        }

        let (number, unit) = split_leading(text, |c| c.is_ascii_digit() || c == '.');
        let multiplier = if unit.is_empty() {
            1
        } else {
            BYTE_SIZE_UNITS
                .into_iter()
                .find(|&(name, _)| name == unit)
                .map(|(_, multiplier)| multiplier)
                .ok_or_else(|| {
                    error(ByteSizeErrorKind::UnknownUnit {
                        unit: unit.to_owned(),
                    })
                })?
        };

        let invalid_number = || {
            error(ByteSizeErrorKind::InvalidNumber {
                text: number.to_owned(),
            })
        };
        let (whole, fraction) = match number.split_once('.') {
            Some((whole, fraction)) => (whole, fraction),
            None => (number, ""),
        };
        let is_digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !is_digits(whole) || !is_digits(fraction) || number.ends_with('.') {
            return Err(invalid_number());
        }

        let too_large = || error(ByteSizeErrorKind::TooLarge);
        let whole: u128 = whole.parse().map_err(|_| too_large())?;
        let mut bytes = whole
            .checked_mul(u128::from(multiplier))
            .ok_or_else(too_large)?;

        let fraction = fraction.trim_end_matches('0');
        if !fraction.is_empty() {
            if fraction.len() > MAX_BYTE_SIZE_DECIMALS {
                return Err(error(ByteSizeErrorKind::TooManyDecimals));
            }
            // With at most 24 digits the numerator stays below 10^24 * 2^40, well inside u128.
            let numerator: u128 =
                fraction.parse::<u128>().map_err(|_| invalid_number())? * u128::from(multiplier);
            let denominator = 10u128.pow(fraction.len() as u32);
            if !numerator.is_multiple_of(denominator) {
                return Err(error(ByteSizeErrorKind::NotWholeBytes));
            }
            bytes += numerator / denominator;
        }

        u64::try_from(bytes).map(ByteSize).map_err(|_| too_large())
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ByteSizeVisitor;

        impl Visitor<'_> for ByteSizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a byte count or a size string such as \"20GiB\" with units {BYTE_SIZE_UNITS_HINT}"
                )
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(value))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<ByteSize, E> {
                u64::try_from(value).map(ByteSize).map_err(|_| {
                    E::custom(format_args!(
                        "invalid byte size {value}: negative sizes are not allowed"
                    ))
                })
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<ByteSize, E> {
                value.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_any(ByteSizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use chrono_tz::America::New_York;
    use chrono_tz::Europe::Berlin;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().expect("valid RFC 3339 time in test")
    }

    fn duration(text: &str) -> Duration {
        text.parse().expect("valid duration in test")
    }

    #[test]
    fn duration_parses_each_unit() {
        let cases = [
            (
                "45s",
                Duration {
                    seconds: 45,
                    ..Duration::default()
                },
            ),
            (
                "90min",
                Duration {
                    minutes: 90,
                    ..Duration::default()
                },
            ),
            (
                "12h",
                Duration {
                    hours: 12,
                    ..Duration::default()
                },
            ),
            (
                "30d",
                Duration {
                    days: 30,
                    ..Duration::default()
                },
            ),
            (
                "2w",
                Duration {
                    weeks: 2,
                    ..Duration::default()
                },
            ),
            (
                "6m",
                Duration {
                    months: 6,
                    ..Duration::default()
                },
            ),
            (
                "1y",
                Duration {
                    years: 1,
                    ..Duration::default()
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(duration(text), expected, "parsing {text:?}");
        }
    }

    #[test]
    fn duration_m_means_months() {
        let parsed = duration("6m");
        assert_eq!(parsed.months, 6);
        assert_eq!(parsed.minutes, 0);
        assert_eq!(parsed.to_std(), None);
    }

    #[test]
    fn duration_parses_combinations() {
        let cases = [
            (
                "1y6m",
                Duration {
                    years: 1,
                    months: 6,
                    ..Duration::default()
                },
            ),
            (
                "2d12h",
                Duration {
                    days: 2,
                    hours: 12,
                    ..Duration::default()
                },
            ),
            (
                "1y1d1m",
                Duration {
                    years: 1,
                    months: 1,
                    days: 1,
                    ..Duration::default()
                },
            ),
            (
                "1h30min15s",
                Duration {
                    hours: 1,
                    minutes: 30,
                    seconds: 15,
                    ..Duration::default()
                },
            ),
            (
                "1m30min",
                Duration {
                    months: 1,
                    minutes: 30,
                    ..Duration::default()
                },
            ),
            (
                "30min1m",
                Duration {
                    months: 1,
                    minutes: 30,
                    ..Duration::default()
                },
            ),
            (
                "1y2m3w4d5h6min7s",
                Duration {
                    years: 1,
                    months: 2,
                    weeks: 3,
                    days: 4,
                    hours: 5,
                    minutes: 6,
                    seconds: 7,
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(duration(text), expected, "parsing {text:?}");
        }
    }

    #[test]
    fn duration_trims_surrounding_whitespace() {
        assert_eq!(duration(" 30d\n"), duration("30d"));
    }

    #[test]
    fn duration_rejects_invalid_input() {
        let cases = [
            ("", DurationErrorKind::Empty),
            ("   ", DurationErrorKind::Empty),
            ("30 d", DurationErrorKind::Whitespace),
            ("1d 12h", DurationErrorKind::Whitespace),
            ("-5d", DurationErrorKind::Negative),
            ("5d-2h", DurationErrorKind::Negative),
            ("1.5d", DurationErrorKind::Fraction),
            ("d", DurationErrorKind::MissingNumber { text: "d".into() }),
            ("+5d", DurationErrorKind::MissingNumber { text: "+".into() }),
            (
                "30",
                DurationErrorKind::MissingUnit {
                    number: "30".into(),
                },
            ),
            (
                "1d30",
                DurationErrorKind::MissingUnit {
                    number: "30".into(),
                },
            ),
            ("30x", DurationErrorKind::UnknownUnit { unit: "x".into() }),
            ("30M", DurationErrorKind::UnknownUnit { unit: "M".into() }),
            (
                "30mins",
                DurationErrorKind::UnknownUnit {
                    unit: "mins".into(),
                },
            ),
            ("1d2d", DurationErrorKind::RepeatedUnit { unit: "d".into() }),
            (
                "4294967296s",
                DurationErrorKind::TooLarge {
                    number: "4294967296".into(),
                },
            ),
            (
                "99999999999999999999999d",
                DurationErrorKind::TooLarge {
                    number: "99999999999999999999999".into(),
                },
            ),
        ];
        for (text, expected) in cases {
            let error = text.parse::<Duration>().expect_err(text);
            assert_eq!(error.kind(), &expected, "parsing {text:?}");
            assert_eq!(error.input(), text);
        }
    }

    #[test]
    fn duration_error_names_value_and_units() {
        let error = "30x".parse::<Duration>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid duration \"30x\": unknown unit \"x\"; use one of s, min, h, d, w, m (months), y"
        );
    }

    #[test]
    fn duration_accepts_max_u32() {
        assert_eq!(duration("4294967295s").seconds, u32::MAX);
    }

    #[test]
    fn duration_display_round_trips() {
        for text in [
            "30d",
            "12h",
            "90min",
            "2w",
            "6m",
            "1y",
            "45s",
            "1y6m",
            "2d12h",
            "1y2m3w4d5h6min7s",
        ] {
            assert_eq!(duration(text).to_string(), text);
        }
        assert_eq!(duration("1y1d1m").to_string(), "1y1m1d");
        assert_eq!(duration("0d").to_string(), "0s");
        assert_eq!(duration(&duration("0d").to_string()), duration("0d"));
    }

    #[test]
    fn duration_serde_uses_strings() {
        let json = serde_json::to_string(&duration("1y6m")).unwrap();
        assert_eq!(json, "\"1y6m\"");
        let parsed: Duration = serde_json::from_str("\"2d12h\"").unwrap();
        assert_eq!(parsed, duration("2d12h"));

        let error = serde_json::from_str::<Duration>("\"30x\"").unwrap_err();
        assert!(error.to_string().contains("unknown unit \"x\""), "{error}");
        assert!(serde_json::from_str::<Duration>("30").is_err());
    }

    #[test]
    fn duration_is_zero() {
        assert!(Duration::default().is_zero());
        assert!(duration("0d").is_zero());
        assert!(duration("0y0h").is_zero());
        assert!(!duration("1s").is_zero());
        assert!(!duration("1y").is_zero());
    }

    #[test]
    fn duration_to_std_counts_fixed_units() {
        let cases = [
            ("45s", Some(45)),
            ("90min", Some(5_400)),
            ("12h", Some(43_200)),
            ("2d12h", Some(216_000)),
            ("2w", Some(1_209_600)),
            ("6m", None),
            ("1y", None),
            ("1y2d", None),
        ];
        for (text, seconds) in cases {
            let expected = seconds.map(std::time::Duration::from_secs);
            assert_eq!(duration(text).to_std(), expected, "converting {text:?}");
        }
    }

    #[test]
    fn subtract_follows_go_add_date() {
        let cases = [
            ("2025-03-31T10:00:00Z", "1m", "2025-03-03T10:00:00Z"),
            ("2024-03-31T10:00:00Z", "1m", "2024-03-02T10:00:00Z"),
            ("2024-02-29T10:00:00Z", "1y", "2023-03-01T10:00:00Z"),
            ("2025-02-28T10:00:00Z", "1y", "2024-02-28T10:00:00Z"),
            ("2026-01-15T10:00:00Z", "2m", "2025-11-15T10:00:00Z"),
            ("2026-01-01T00:00:00Z", "1d", "2025-12-31T00:00:00Z"),
            ("2026-06-15T03:00:00Z", "2w", "2026-06-01T03:00:00Z"),
            ("2026-06-15T03:00:00Z", "90min", "2026-06-15T01:30:00Z"),
            ("2026-06-15T03:00:00Z", "1y1m1d1h", "2025-05-14T02:00:00Z"),
            ("2026-06-15T03:00:00.5Z", "45s", "2026-06-15T02:59:15.5Z"),
            ("2026-06-15T03:00:00Z", "0s", "2026-06-15T03:00:00Z"),
        ];
        for (start, text, expected) in cases {
            assert_eq!(
                duration(text).subtract_from(utc(start)),
                utc(expected),
                "{start} minus {text}"
            );
        }
    }

    #[test]
    fn subtract_days_keeps_local_clock() {
        // 2026-03-29 is the spring-forward day in Berlin: 2026-03-28 12:00 CET is 11:00Z and
        // 2026-03-29 12:00 CEST is 10:00Z.
        let noon_after = utc("2026-03-29T10:00:00Z").with_timezone(&Berlin);
        let day_before = duration("1d").subtract_from(noon_after);
        assert_eq!(day_before.with_timezone(&Utc), utc("2026-03-28T11:00:00Z"));

        let day_as_hours = duration("24h").subtract_from(noon_after);
        assert_eq!(
            day_as_hours.with_timezone(&Utc),
            utc("2026-03-28T10:00:00Z")
        );
    }

    #[test]
    fn subtract_resolves_dst_gap_like_go() {
        // 2026-03-30 02:30 CEST minus one day is 2026-03-29 02:30, which does not exist in Berlin.
        // Go's time.Date applies the CET offset and yields 03:30 CEST, which is 01:30Z.
        let start = utc("2026-03-30T00:30:00Z").with_timezone(&Berlin);
        let result = duration("1d").subtract_from(start);
        assert_eq!(result.with_timezone(&Utc), utc("2026-03-29T01:30:00Z"));
    }

    #[test]
    fn subtract_resolves_dst_gap_west_of_utc() {
        // 2026-03-09 02:30 EDT minus one day is 2026-03-08 02:30, which does not exist in New
        // York. Go's time.Date applies the EDT offset and yields 01:30 EST, which is 06:30Z.
        let start = utc("2026-03-09T06:30:00Z").with_timezone(&New_York);
        let result = duration("1d").subtract_from(start);
        assert_eq!(result.with_timezone(&Utc), utc("2026-03-08T06:30:00Z"));
    }

    #[test]
    fn subtract_resolves_dst_overlap_like_go() {
        // 2026-10-26 02:30 CET minus one day is 2026-10-25 02:30, which occurs twice in Berlin.
        // Go's time.Date picks the CET reading, which is 01:30Z.
        let start = utc("2026-10-26T01:30:00Z").with_timezone(&Berlin);
        let result = duration("1d").subtract_from(start);
        assert_eq!(result.with_timezone(&Utc), utc("2026-10-25T01:30:00Z"));
    }

    #[test]
    fn subtract_saturates_on_overflow() {
        let huge = duration("4294967295y");
        let result = huge.subtract_from(utc("2026-01-01T00:00:00Z").with_timezone(&Berlin));
        assert!(result < utc("-100000-01-01T00:00:00Z"));
        // The local time of the saturated result is still representable.
        let _ = result.naive_local();

        let many_days = duration("4294967295w4294967295d");
        assert!(
            many_days.subtract_from(utc("2026-01-01T00:00:00Z")) < utc("-100000-01-01T00:00:00Z")
        );
    }

    #[test]
    fn byte_size_parses_units() {
        let cases = [
            ("4096", 4096),
            ("0", 0),
            ("17B", 17),
            ("1KB", 1_000),
            ("100MB", 100_000_000),
            ("3GB", 3_000_000_000),
            ("2TB", 2_000_000_000_000),
            ("1KiB", 1024),
            ("512MiB", 512 * 1024 * 1024),
            ("20GiB", 20 * 1024 * 1024 * 1024),
            ("1TiB", 1 << 40),
            ("1.5GiB", 1_610_612_736),
            ("1.50GiB", 1_610_612_736),
            ("2.5KB", 2_500),
            ("0.5KiB", 512),
            ("1.0B", 1),
            ("18446744073709551615", u64::MAX),
        ];
        for (text, bytes) in cases {
            let parsed: ByteSize = text.parse().unwrap_or_else(|error| panic!("{error}"));
            assert_eq!(parsed, ByteSize(bytes), "parsing {text:?}");
        }
    }

    #[test]
    fn byte_size_rejects_invalid_input() {
        let cases = [
            ("", ByteSizeErrorKind::Empty),
            (" ", ByteSizeErrorKind::Empty),
            ("20 GiB", ByteSizeErrorKind::Whitespace),
            ("-1GiB", ByteSizeErrorKind::Negative),
            ("GiB", ByteSizeErrorKind::InvalidNumber { text: "".into() }),
            (
                ".5GiB",
                ByteSizeErrorKind::InvalidNumber { text: ".5".into() },
            ),
            (
                "1.GiB",
                ByteSizeErrorKind::InvalidNumber { text: "1.".into() },
            ),
            (
                "1.2.3GiB",
                ByteSizeErrorKind::InvalidNumber {
                    text: "1.2.3".into(),
                },
            ),
            (
                "20gib",
                ByteSizeErrorKind::UnknownUnit { unit: "gib".into() },
            ),
            ("20G", ByteSizeErrorKind::UnknownUnit { unit: "G".into() }),
            (
                "1PiB",
                ByteSizeErrorKind::UnknownUnit { unit: "PiB".into() },
            ),
            ("1.5B", ByteSizeErrorKind::NotWholeBytes),
            ("0.1KiB", ByteSizeErrorKind::NotWholeBytes),
            (
                "0.0000000000000000000000001TB",
                ByteSizeErrorKind::TooManyDecimals,
            ),
            ("18446744073709551616", ByteSizeErrorKind::TooLarge),
            ("16777216TiB", ByteSizeErrorKind::TooLarge),
            (
                "999999999999999999999999999999999999999999TB",
                ByteSizeErrorKind::TooLarge,
            ),
        ];
        for (text, expected) in cases {
            let error = text.parse::<ByteSize>().expect_err(text);
            assert_eq!(error.kind(), &expected, "parsing {text:?}");
        }
    }

    #[test]
    fn byte_size_error_names_value_and_units() {
        let error = "20G".parse::<ByteSize>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid byte size \"20G\": unknown unit \"G\"; use a number with one of B, KB, MB, \
             GB, TB (1000-based), KiB, MiB, GiB, TiB (1024-based), or no unit for bytes"
        );
    }

    #[test]
    fn byte_size_display_uses_largest_exact_unit() {
        let cases = [
            (0, "0B"),
            (1, "1B"),
            (4097, "4097B"),
            (4096, "4KiB"),
            (1_000, "1KB"),
            (100_000_000, "100MB"),
            (1_610_612_736, "1536MiB"),
            (20 << 30, "20GiB"),
            (3 << 40, "3TiB"),
            (5_000_000_000_000, "5TB"),
            (u64::MAX, "18446744073709551615B"),
        ];
        for (bytes, expected) in cases {
            let size = ByteSize(bytes);
            assert_eq!(size.to_string(), expected);
            assert_eq!(
                expected.parse::<ByteSize>().unwrap(),
                size,
                "round trip of {expected}"
            );
        }
    }

    #[test]
    fn byte_size_serde_accepts_string_or_integer() {
        assert_eq!(
            serde_json::from_str::<ByteSize>("\"20GiB\"").unwrap(),
            ByteSize(20 << 30)
        );
        assert_eq!(
            serde_json::from_str::<ByteSize>("4096").unwrap(),
            ByteSize(4096)
        );
        assert_eq!(
            serde_json::to_string(&ByteSize(512 << 20)).unwrap(),
            "\"512MiB\""
        );

        let negative = serde_json::from_str::<ByteSize>("-5").unwrap_err();
        assert!(negative.to_string().contains("negative"), "{negative}");
        let fractional = serde_json::from_str::<ByteSize>("1.5").unwrap_err();
        assert!(fractional.to_string().contains("20GiB"), "{fractional}");
        let unknown = serde_json::from_str::<ByteSize>("\"20G\"").unwrap_err();
        assert!(
            unknown.to_string().contains("unknown unit \"G\""),
            "{unknown}"
        );
    }
}
