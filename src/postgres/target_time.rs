//! The `--target-time` of a point-in-time recovery: parsing, validation and the form written
//! to PostgreSQL's `recovery_target_time`.
//!
//! Only absolute times with an explicit numeric UTC offset are accepted. PostgreSQL reads a
//! time without an offset in the server's `TimeZone` setting and resolves zone abbreviations
//! through `timezone_abbreviations`, so such text could name a different instant on the
//! restoring server. Parsing never reads the process time zone (`TZ`).

use std::fmt;

use chrono::{
    DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike, Utc,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Example shown in error messages.
const EXAMPLE: &str = "2026-05-28T12:00:00Z";

/// Accepted forms, shown in error messages.
const ACCEPTED_FORMS: &str = "YYYY-MM-DDTHH:MM:SS[.ffffff] followed by Z or a UTC offset \
     such as +02:00, or YYYY-MM-DD HH:MM:SS[.ffffff]+HH[:MM]";

/// Errors from parsing a recovery target time. Each message quotes the input and shows what
/// to write instead.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TargetTimeError {
    #[error("target time is empty: give a timestamp with a UTC offset, such as {EXAMPLE}")]
    Empty,

    #[error(
        "target time {input:?} is not a timestamp: words such as now, latest or yesterday are \
         not accepted, so give an absolute time with a UTC offset, such as {EXAMPLE}"
    )]
    NotATimestamp { input: String },

    #[error("target time {input:?} is malformed: {problem}; expected {ACCEPTED_FORMS}, for example {EXAMPLE}")]
    Malformed {
        input: String,
        problem: &'static str,
    },

    #[error(
        "target time {input:?} has no UTC offset: write the offset explicitly, \
         for example {suggestion} if the time is in UTC"
    )]
    MissingOffset { input: String, suggestion: String },

    #[error(
        "target time {input:?} uses the time zone name {zone:?}: only numeric UTC offsets are \
         accepted, because zone names and abbreviations can be ambiguous or resolve differently \
         on the restoring server; write for example {suggestion}"
    )]
    ZoneName {
        input: String,
        zone: String,
        suggestion: String,
    },

    #[error("target time {input:?} has an invalid date: {reason}")]
    InvalidDate { input: String, reason: String },

    #[error("target time {input:?} has an invalid time of day: {reason}")]
    InvalidTime { input: String, reason: String },

    #[error(
        "target time {input:?} has an invalid UTC offset {offset:?}: use Z, +HH:MM or -HH:MM \
         with hours 00-23 and minutes 00-59"
    )]
    InvalidOffset { input: String, offset: String },

    #[error(
        "target time {input:?} has {digits} fractional-second digits: PostgreSQL timestamps \
         have microsecond precision and the value is not rounded, so give at most 6 digits"
    )]
    TooPrecise { input: String, digits: usize },

    #[error(
        "target time {input:?} is {target}, which is in the future (current time {now}): \
         give a time at or before the current time"
    )]
    InFuture {
        input: String,
        target: String,
        now: String,
    },
}

/// A recovery target instant in UTC with microsecond precision, the precision of a
/// PostgreSQL `timestamptz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetTime(DateTime<Utc>);

impl TargetTime {
    /// Parses a `--target-time` value and rejects it when it lies after `now`.
    ///
    /// Accepted forms, with `T`/`t` or a space between date and time:
    /// - `2026-05-28T12:00:00Z` and `2026-05-28t12:00:00z`
    /// - `2026-05-28T14:00:00+02:00`, `2026-05-28T14:00:00+02`
    /// - `2026-05-28 14:00:00+02`, `2026-05-28 14:00:00.5+02:00`, `2026-05-28 14:00:00 +02:00`
    ///
    /// The fraction takes 1 to 6 digits. Leading and trailing whitespace is ignored.
    pub fn parse(input: &str, now: DateTime<Utc>) -> Result<TargetTime, TargetTimeError> {
        let target = parse_timestamp(input)?;
        if target.0 > now {
            return Err(TargetTimeError::InFuture {
                input: input.to_string(),
                target: target.to_string(),
                now: TargetTime(truncate_to_micros(now)).to_string(),
            });
        }
        Ok(target)
    }

    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }

    /// Formats the instant for `recovery_target_time`: `YYYY-MM-DD HH:MM:SS+00:00`, with
    /// `.ffffff` after the seconds when the microseconds are not zero.
    ///
    /// The fraction always has six digits so the text is the exact stored value. PostgreSQL
    /// accepts fractions with or without trailing zeros. The output never contains `T`, `Z` or
    /// a zone name.
    pub fn to_postgres(&self) -> String {
        format!(
            "{} {}+00:00",
            self.0.format("%Y-%m-%d"),
            format_time_of_day(self.0)
        )
    }
}

/// Formats as RFC 3339 in UTC with `Z`, with the same fraction rule as
/// [`TargetTime::to_postgres`]: `2026-05-28T12:00:00Z`, `2026-05-28T12:00:00.123456Z`.
impl fmt::Display for TargetTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}T{}Z",
            self.0.format("%Y-%m-%d"),
            format_time_of_day(self.0)
        )
    }
}

impl From<TargetTime> for DateTime<Utc> {
    fn from(target: TargetTime) -> Self {
        target.0
    }
}

/// Serializes as the RFC 3339 text of [`Display`](fmt::Display).
impl Serialize for TargetTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Deserializes any form that [`TargetTime::parse`] accepts. There is no current time here,
/// so a time in the future is not rejected.
impl<'de> Deserialize<'de> for TargetTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_timestamp(&text).map_err(serde::de::Error::custom)
    }
}

fn format_time_of_day(instant: DateTime<Utc>) -> String {
    let micros = instant.nanosecond() / 1_000;
    if micros == 0 {
        instant.format("%H:%M:%S").to_string()
    } else {
        format!("{}.{micros:06}", instant.format("%H:%M:%S"))
    }
}

fn truncate_to_micros(instant: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = instant.nanosecond() % 1_000_000_000;
    instant
        .with_nanosecond(nanos - nanos % 1_000)
        .unwrap_or(instant)
}

/// Date and time of day as written, before the offset is applied.
struct LocalParts {
    date: NaiveDate,
    time: NaiveTime,
    /// The date and time as typed, with `T` as separator: used to build suggestions.
    text: String,
}

/// Parses the syntax of a target time without comparing it to the current time.
fn parse_timestamp(raw_input: &str) -> Result<TargetTime, TargetTimeError> {
    let input = raw_input.trim();
    if input.is_empty() {
        return Err(TargetTimeError::Empty);
    }
    let malformed = |problem| TargetTimeError::Malformed {
        input: raw_input.to_string(),
        problem,
    };

    let mut cursor = Cursor::new(input);
    let Some(date) = parse_date(&mut cursor, raw_input)? else {
        if input.starts_with(|c: char| c.is_alphabetic()) {
            return Err(TargetTimeError::NotATimestamp {
                input: raw_input.to_string(),
            });
        }
        return Err(malformed("the date must be YYYY-MM-DD"));
    };

    if cursor.is_at_end() {
        return Err(malformed("the time of day is missing"));
    }
    if !cursor.eat_any(b"Tt ") {
        return Err(malformed(
            "the date must be followed by T or a space and the time",
        ));
    }

    let (time, fraction_text) = parse_time_of_day(&mut cursor, raw_input)?;
    let parts = LocalParts {
        date,
        time,
        text: format!(
            "{}T{}{fraction_text}",
            date.format("%Y-%m-%d"),
            time.format("%H:%M:%S")
        ),
    };

    let offset = parse_offset(&mut cursor, raw_input, &parts)?;
    let local = NaiveDateTime::new(parts.date, parts.time);
    let instant = offset
        .from_local_datetime(&local)
        .single()
        .ok_or_else(|| malformed("the time does not exist at that offset"))?;
    Ok(TargetTime(instant.with_timezone(&Utc)))
}

/// Parses `YYYY-MM-DD`. Returns `Ok(None)` when the input does not start with that shape.
fn parse_date(cursor: &mut Cursor<'_>, input: &str) -> Result<Option<NaiveDate>, TargetTimeError> {
    let Some(year) = cursor.digits(4) else {
        return Ok(None);
    };
    if !cursor.eat(b'-') {
        return Ok(None);
    }
    let Some(month) = cursor.digits(2) else {
        return Ok(None);
    };
    if !cursor.eat(b'-') {
        return Ok(None);
    }
    let Some(day) = cursor.digits(2) else {
        return Ok(None);
    };

    let invalid = |reason: String| TargetTimeError::InvalidDate {
        input: input.to_string(),
        reason,
    };
    if year == 0 {
        return Err(invalid(
            "year 0000 does not exist, the year before 0001 is 1 BC".to_string(),
        ));
    }
    if !(1..=12).contains(&month) {
        return Err(invalid(format!(
            "month {month:02} does not exist, months are 01 to 12"
        )));
    }
    let year = year as i32;
    match NaiveDate::from_ymd_opt(year, month, day) {
        Some(date) => Ok(Some(date)),
        None => {
            let month_name = NaiveDate::from_ymd_opt(year, month, 1)
                .map(|first| first.format("%B").to_string())
                .unwrap_or_default();
            Err(invalid(format!(
                "{year:04}-{month:02}-{day:02} does not exist, {month_name} {year} has {} days",
                days_in_month(year, month)
            )))
        }
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(next_year, next_month, 1)
        .and_then(|first| first.pred_opt())
        .map(|last| last.day())
        .unwrap_or(31)
}

/// Parses `HH:MM:SS[.f{1,6}]` and returns the time with the fraction text as typed.
fn parse_time_of_day(
    cursor: &mut Cursor<'_>,
    input: &str,
) -> Result<(NaiveTime, String), TargetTimeError> {
    let malformed = |problem| TargetTimeError::Malformed {
        input: input.to_string(),
        problem,
    };
    let invalid = |reason: String| TargetTimeError::InvalidTime {
        input: input.to_string(),
        reason,
    };

    let hour = cursor.digits(2);
    let minute = if hour.is_some() && cursor.eat(b':') {
        cursor.digits(2)
    } else {
        None
    };
    let second = if minute.is_some() && cursor.eat(b':') {
        cursor.digits(2)
    } else {
        None
    };
    let (Some(hour), Some(minute), Some(second)) = (hour, minute, second) else {
        return Err(malformed(
            "the time of day must be HH:MM:SS with two-digit fields",
        ));
    };

    if hour > 23 {
        return Err(invalid(format!(
            "hour {hour:02} does not exist, hours are 00 to 23"
        )));
    }
    if minute > 59 {
        return Err(invalid(format!(
            "minute {minute:02} does not exist, minutes are 00 to 59"
        )));
    }
    if second > 59 {
        return Err(invalid(format!(
            "second {second:02} is not accepted, seconds are 00 to 59"
        )));
    }

    let mut micros = 0;
    let mut fraction_text = String::new();
    if cursor.eat(b'.') {
        let digits = cursor.take_while(|byte| byte.is_ascii_digit());
        if digits.is_empty() {
            return Err(malformed("the decimal point must be followed by digits"));
        }
        if digits.len() > 6 {
            return Err(TargetTimeError::TooPrecise {
                input: input.to_string(),
                digits: digits.len(),
            });
        }
        let padded = format!("{digits:0<6}");
        micros = padded.parse::<u32>().expect("six ASCII digits fit in u32");
        fraction_text = format!(".{digits}");
    }

    let time = NaiveTime::from_hms_micro_opt(hour, minute, second, micros)
        .ok_or_else(|| invalid("the time does not exist".to_string()))?;
    Ok((time, fraction_text))
}

/// Parses what follows the time: `Z`, `±HH`, `±HH:MM`, optionally after one space.
fn parse_offset(
    cursor: &mut Cursor<'_>,
    input: &str,
    parts: &LocalParts,
) -> Result<FixedOffset, TargetTimeError> {
    let utc_suggestion = format!("{}Z", parts.text);
    if cursor.is_at_end() {
        return Err(TargetTimeError::MissingOffset {
            input: input.to_string(),
            suggestion: utc_suggestion,
        });
    }

    let rest = cursor.rest();
    let zone_text = rest.strip_prefix(' ').unwrap_or(rest);

    if zone_text.eq_ignore_ascii_case("z") {
        return Ok(FixedOffset::east_opt(0).expect("zero offset is valid"));
    }
    let starts_with_z = zone_text.starts_with(['Z', 'z']);
    let second_is_letter = zone_text
        .chars()
        .nth(1)
        .is_some_and(|c| c.is_ascii_alphabetic());
    if starts_with_z && !second_is_letter {
        return Err(TargetTimeError::Malformed {
            input: input.to_string(),
            problem: "unexpected text after the Z offset",
        });
    }

    if zone_text.starts_with(|c: char| c.is_ascii_alphabetic()) {
        let is_utc_name = ["UTC", "GMT", "UT", "ZULU", "ETC/UTC"]
            .iter()
            .any(|name| zone_text.eq_ignore_ascii_case(name));
        let suggestion = if is_utc_name {
            utc_suggestion
        } else {
            format!(
                "{}+HH:MM, where +HH:MM is the offset of {zone_text} on that date",
                parts.text
            )
        };
        return Err(TargetTimeError::ZoneName {
            input: input.to_string(),
            zone: zone_text.to_string(),
            suggestion,
        });
    }

    let invalid = || TargetTimeError::InvalidOffset {
        input: input.to_string(),
        offset: zone_text.to_string(),
    };
    let sign = match zone_text.as_bytes().first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => {
            return Err(TargetTimeError::Malformed {
                input: input.to_string(),
                problem: "the seconds must be followed by Z or a UTC offset such as +02:00",
            })
        }
    };

    let mut offset_cursor = Cursor::new(&zone_text[1..]);
    let hours = offset_cursor.digits(2).ok_or_else(invalid)?;
    let minutes = if offset_cursor.is_at_end() {
        0
    } else {
        if !offset_cursor.eat(b':') {
            return Err(invalid());
        }
        offset_cursor.digits(2).ok_or_else(invalid)?
    };
    if !offset_cursor.is_at_end() || hours > 23 || minutes > 59 {
        return Err(invalid());
    }

    let seconds = sign * (hours as i32 * 3600 + minutes as i32 * 60);
    FixedOffset::east_opt(seconds).ok_or_else(invalid)
}

/// Byte cursor over an ASCII-prefixed string.
struct Cursor<'a> {
    text: &'a str,
    position: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Cursor { text, position: 0 }
    }

    fn is_at_end(&self) -> bool {
        self.position >= self.text.len()
    }

    fn rest(&self) -> &'a str {
        &self.text[self.position..]
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.position).copied()
    }

    fn eat(&mut self, expected: u8) -> bool {
        self.eat_any(&[expected])
    }

    fn eat_any(&mut self, expected: &[u8]) -> bool {
        match self.peek() {
            Some(byte) if expected.contains(&byte) => {
                self.position += 1;
                true
            }
            _ => false,
        }
    }

    /// Consumes exactly `count` ASCII digits, unless a further digit follows them.
    fn digits(&mut self, count: usize) -> Option<u32> {
        let bytes = self.text.as_bytes();
        let end = self.position + count;
        let all_digits =
            bytes.len() >= end && bytes[self.position..end].iter().all(u8::is_ascii_digit);
        let followed_by_digit = bytes.get(end).is_some_and(u8::is_ascii_digit);
        if !all_digits || followed_by_digit {
            return None;
        }
        let value = self.text[self.position..end].parse().ok()?;
        self.position = end;
        Some(value)
    }

    fn take_while(&mut self, predicate: impl Fn(u8) -> bool) -> &'a str {
        let start = self.position;
        while self.peek().is_some_and(&predicate) {
            self.position += 1;
        }
        &self.text[start..self.position]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap()
    }

    #[test]
    fn parse_accepted_forms() {
        // (input, to_postgres, Display)
        let cases = [
            (
                "2026-05-28T12:00:00Z",
                "2026-05-28 12:00:00+00:00",
                "2026-05-28T12:00:00Z",
            ),
            (
                "2026-05-28T14:00:00+02:00",
                "2026-05-28 12:00:00+00:00",
                "2026-05-28T12:00:00Z",
            ),
            (
                "2026-05-28T12:00:00.123456Z",
                "2026-05-28 12:00:00.123456+00:00",
                "2026-05-28T12:00:00.123456Z",
            ),
            (
                "2026-05-28t12:00:00z",
                "2026-05-28 12:00:00+00:00",
                "2026-05-28T12:00:00Z",
            ),
            (
                "2026-05-28 14:00:00+02",
                "2026-05-28 12:00:00+00:00",
                "2026-05-28T12:00:00Z",
            ),
            (
                "2026-05-28 14:00:00.5+02:00",
                "2026-05-28 12:00:00.500000+00:00",
                "2026-05-28T12:00:00.500000Z",
            ),
            (
                "2026-05-28 14:00:00 +02:00",
                "2026-05-28 12:00:00+00:00",
                "2026-05-28T12:00:00Z",
            ),
            (
                "2026-05-28T14:00:00+02",
                "2026-05-28 12:00:00+00:00",
                "2026-05-28T12:00:00Z",
            ),
            (
                "2026-05-28T08:30:00-03:30",
                "2026-05-28 12:00:00+00:00",
                "2026-05-28T12:00:00Z",
            ),
            (
                "2026-05-28 12:00:00Z",
                "2026-05-28 12:00:00+00:00",
                "2026-05-28T12:00:00Z",
            ),
            (
                "2026-05-28T12:00:00-00:00",
                "2026-05-28 12:00:00+00:00",
                "2026-05-28T12:00:00Z",
            ),
            (
                "2026-05-28T01:00:00+02:00",
                "2026-05-27 23:00:00+00:00",
                "2026-05-27T23:00:00Z",
            ),
            (
                "2026-05-28T12:00:00.000001Z",
                "2026-05-28 12:00:00.000001+00:00",
                "2026-05-28T12:00:00.000001Z",
            ),
            (
                "2026-05-28T12:00:00.000000Z",
                "2026-05-28 12:00:00+00:00",
                "2026-05-28T12:00:00Z",
            ),
            (
                "  2026-05-28T12:00:00Z\n",
                "2026-05-28 12:00:00+00:00",
                "2026-05-28T12:00:00Z",
            ),
            (
                "2024-02-29T12:00:00Z",
                "2024-02-29 12:00:00+00:00",
                "2024-02-29T12:00:00Z",
            ),
        ];
        for (input, postgres, display) in cases {
            let target = TargetTime::parse(input, now())
                .unwrap_or_else(|error| panic!("{input:?} was rejected: {error}"));
            assert_eq!(target.to_postgres(), postgres, "to_postgres of {input:?}");
            assert_eq!(target.to_string(), display, "Display of {input:?}");
        }
    }

    #[test]
    fn parse_rejected_forms() {
        // (input, expected variant check, fragments the message must contain)
        type Check = fn(&TargetTimeError) -> bool;
        let cases: &[(&str, Check, &[&str])] = &[
            (
                "2026-05-28T12:00:00",
                |e| matches!(e, TargetTimeError::MissingOffset { .. }),
                &["no UTC offset", "2026-05-28T12:00:00Z"],
            ),
            (
                "2026-05-28 12:00:00.25",
                |e| matches!(e, TargetTimeError::MissingOffset { .. }),
                &["no UTC offset", "2026-05-28T12:00:00.25Z"],
            ),
            (
                "2026-05-28 14:00:00 EDT",
                |e| matches!(e, TargetTimeError::ZoneName { .. }),
                &[
                    "\"EDT\"",
                    "numeric UTC offsets",
                    "2026-05-28T14:00:00+HH:MM",
                ],
            ),
            (
                "2026-05-28 12:00:00 UTC",
                |e| matches!(e, TargetTimeError::ZoneName { .. }),
                &["\"UTC\"", "numeric UTC offsets", "2026-05-28T12:00:00Z"],
            ),
            (
                "2026-05-28T12:00:00CET",
                |e| matches!(e, TargetTimeError::ZoneName { .. }),
                &["\"CET\"", "numeric UTC offset"],
            ),
            (
                "2026-05-28 12:00:00 Europe/Paris",
                |e| matches!(e, TargetTimeError::ZoneName { .. }),
                &["\"Europe/Paris\"", "numeric UTC offset"],
            ),
            (
                "2026-02-30T12:00:00Z",
                |e| matches!(e, TargetTimeError::InvalidDate { .. }),
                &[
                    "invalid date",
                    "2026-02-30 does not exist",
                    "February 2026 has 28 days",
                ],
            ),
            (
                "2026-13-01T12:00:00Z",
                |e| matches!(e, TargetTimeError::InvalidDate { .. }),
                &["month 13 does not exist"],
            ),
            (
                "2026-04-31 12:00:00+02",
                |e| matches!(e, TargetTimeError::InvalidDate { .. }),
                &["April 2026 has 30 days"],
            ),
            (
                "2026-05-28T24:00:00Z",
                |e| matches!(e, TargetTimeError::InvalidTime { .. }),
                &["hour 24 does not exist"],
            ),
            (
                "2026-05-28T12:00:60Z",
                |e| matches!(e, TargetTimeError::InvalidTime { .. }),
                &["second 60"],
            ),
            (
                "now",
                |e| matches!(e, TargetTimeError::NotATimestamp { .. }),
                &["\"now\"", "now, latest or yesterday"],
            ),
            (
                "latest",
                |e| matches!(e, TargetTimeError::NotATimestamp { .. }),
                &["\"latest\""],
            ),
            (
                "yesterday",
                |e| matches!(e, TargetTimeError::NotATimestamp { .. }),
                &["\"yesterday\""],
            ),
            (
                "yesterday 12:00",
                |e| matches!(e, TargetTimeError::NotATimestamp { .. }),
                &["absolute time"],
            ),
            (
                "2026-05-28T12:00:00.1234567Z",
                |e| matches!(e, TargetTimeError::TooPrecise { digits: 7, .. }),
                &["7 fractional-second digits", "at most 6"],
            ),
            (
                "2026-05-28T12:00:00.123456789Z",
                |e| matches!(e, TargetTimeError::TooPrecise { digits: 9, .. }),
                &["9 fractional-second digits"],
            ),
            (
                "2026-06-01T00:00:00.000001Z",
                |e| matches!(e, TargetTimeError::InFuture { .. }),
                &[
                    "in the future",
                    "2026-06-01T00:00:00.000001Z",
                    "current time 2026-06-01T00:00:00Z",
                ],
            ),
            (
                "2026-06-01T01:00:00+00:30",
                |e| matches!(e, TargetTimeError::InFuture { .. }),
                &["is 2026-06-01T00:30:00Z, which is in the future"],
            ),
            ("", |e| matches!(e, TargetTimeError::Empty), &["empty"]),
            (
                "2026-05-28",
                |e| matches!(e, TargetTimeError::Malformed { .. }),
                &["time of day is missing", "2026-05-28T12:00:00Z"],
            ),
            (
                "2026-05-28T12:00Z",
                |e| matches!(e, TargetTimeError::Malformed { .. }),
                &["HH:MM:SS"],
            ),
            (
                "2026-5-28T12:00:00Z",
                |e| matches!(e, TargetTimeError::Malformed { .. }),
                &["YYYY-MM-DD"],
            ),
            (
                "28/05/2026 12:00:00",
                |e| matches!(e, TargetTimeError::Malformed { .. }),
                &["YYYY-MM-DD"],
            ),
            (
                "2026-05-28T12:00:00.Z",
                |e| matches!(e, TargetTimeError::Malformed { .. }),
                &["decimal point"],
            ),
            (
                "2026-05-28T12:00:00+0200",
                |e| matches!(e, TargetTimeError::InvalidOffset { .. }),
                &["\"+0200\"", "+HH:MM"],
            ),
            (
                "2026-05-28T12:00:00+24:00",
                |e| matches!(e, TargetTimeError::InvalidOffset { .. }),
                &["\"+24:00\""],
            ),
            (
                "2026-05-28T12:00:00Z junk",
                |e| matches!(e, TargetTimeError::Malformed { .. }),
                &["unexpected text after the Z offset"],
            ),
            (
                "2026-05-28T12:00:00€",
                |e| matches!(e, TargetTimeError::Malformed { .. }),
                &["followed by Z or a UTC offset"],
            ),
            (
                "2026-05-28T12:00:00Zé",
                |e| matches!(e, TargetTimeError::Malformed { .. }),
                &["unexpected text after the Z offset"],
            ),
            (
                "２０２６-05-28T12:00:00Z",
                |e| matches!(e, TargetTimeError::Malformed { .. }),
                &["YYYY-MM-DD"],
            ),
            (
                "2026-05-28T12:00:00#02:00",
                |e| matches!(e, TargetTimeError::Malformed { .. }),
                &["followed by Z or a UTC offset"],
            ),
        ];
        for (input, is_expected_variant, fragments) in cases {
            let error = match TargetTime::parse(input, now()) {
                Ok(target) => panic!("{input:?} was accepted as {target}"),
                Err(error) => error,
            };
            assert!(
                is_expected_variant(&error),
                "{input:?}: unexpected error {error:?}"
            );
            let message = error.to_string();
            if !input.is_empty() {
                assert!(
                    message.contains(&format!("{input:?}")),
                    "{message} quotes the input"
                );
            }
            for fragment in *fragments {
                assert!(
                    message.contains(fragment),
                    "{input:?}: {message} should contain {fragment:?}"
                );
            }
        }
    }

    #[test]
    fn parse_target_equal_to_now() {
        let target = TargetTime::parse("2026-06-01T00:00:00Z", now()).unwrap();
        assert_eq!(target.as_datetime(), now());
    }

    #[test]
    fn serde_round_trip() {
        let target = TargetTime::parse("2026-05-28T14:00:00.123456+02:00", now()).unwrap();
        let json = serde_json::to_string(&target).unwrap();
        assert_eq!(json, "\"2026-05-28T12:00:00.123456Z\"");
        let back: TargetTime = serde_json::from_str(&json).unwrap();
        assert_eq!(back, target);
        let rejected = serde_json::from_str::<TargetTime>("\"2026-05-28 12:00:00\"").unwrap_err();
        assert!(rejected.to_string().contains("no UTC offset"), "{rejected}");
    }
}
