//! Backup schedules: 5-field crontab expressions (vixie cron syntax) evaluated in an IANA time zone.
//!
//! A *slot* is a local date and wall-clock minute that the expression matches. A *fire time* is
//! the UTC instant at which a slot runs. Daylight-saving changes are resolved by these rules,
//! which `docs/schedules.md` explains for operators:
//!
//! - **Fixed-time expressions** (the hour field selects fewer than 24 hours, e.g. `30 2 * * *`,
//!   `0 */6 * * *` or `*/15 3 * * *`) fire once per slot. A slot whose local time falls into a
//!   spring-forward gap fires at the first instant after the gap. A slot whose local time occurs
//!   twice fires at the first occurrence only.
//! - **Hourly expressions** (the hour field selects all 24 hours, e.g. `0 * * * *` or
//!   `*/15 * * * *`) fire at every instant whose local wall-clock time matches. Minutes inside a
//!   gap do not exist and do not fire, and minutes of a repeated hour fire in both occurrences, so
//!   fire times stay evenly spaced in real time.
//!
//! Slots that resolve to the same instant fire once. These rules follow cronie (`src/cron.c`):
//! after a forward jump it runs the skipped fixed-time jobs once, and after a backward jump it
//! reruns only wildcard jobs. Cronie calls a job "wildcard" when its minute or hour field starts
//! with `*`. This module decides by whether all 24 hours match, so that an expression such as
//! `*/15 2 * * *` still fires on a spring-forward day instead of not at all.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Days, LocalResult, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Utc,
};
use chrono_tz::Tz;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Number of minutes per hour above which a fixed-time expression gets a
/// [`Warning::ManyFiresPerHour`]. Twelve is every 5 minutes, so `*/5 3 * * *` is quiet and
/// `*/4 3 * * *` warns.
pub const MAX_QUIET_MINUTES_PER_HOUR: u32 = 12;

/// Days searched before `next_after` and `slot_at_or_before` give up: 400 Gregorian years, one
/// full calendar cycle. Every expression that passes [`CronExpr::parse`] fires within that span.
const SEARCH_DAYS: u64 = 146_097;

/// Bits 0-23 set: the hour field matches every hour.
const ALL_HOURS: u64 = (1 << 24) - 1;

const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAY_OF_WEEK_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// The five fields of a crontab expression, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl Field {
    const ALL: [Field; 5] = [
        Field::Minute,
        Field::Hour,
        Field::DayOfMonth,
        Field::Month,
        Field::DayOfWeek,
    ];

    fn min(self) -> u32 {
        match self {
            Field::DayOfMonth | Field::Month => 1,
            Field::Minute | Field::Hour | Field::DayOfWeek => 0,
        }
    }

    /// Largest accepted number. Day-of-week accepts 7 as a second spelling of Sunday.
    fn max(self) -> u32 {
        match self {
            Field::Minute => 59,
            Field::Hour => 23,
            Field::DayOfMonth => 31,
            Field::Month => 12,
            Field::DayOfWeek => 7,
        }
    }

    /// Three-letter names and the number of the first name.
    fn names(self) -> Option<(&'static [&'static str], u32)> {
        match self {
            Field::Month => Some((&MONTH_NAMES, 1)),
            Field::DayOfWeek => Some((&DAY_OF_WEEK_NAMES, 0)),
            Field::Minute | Field::Hour | Field::DayOfMonth => None,
        }
    }

    /// Accepted values, as shown in error messages.
    pub fn allowed_values(self) -> &'static str {
        match self {
            Field::Minute => "0-59",
            Field::Hour => "0-23",
            Field::DayOfMonth => "1-31",
            Field::Month => "1-12 or jan-dec",
            Field::DayOfWeek => "0-7 or sun-sat, where 0 and 7 are both Sunday",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
        })
    }
}

/// Errors from parsing a schedule expression or a time zone name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("schedule expression is empty: expected 5 fields `minute hour day-of-month month day-of-week`, e.g. `0 3 * * *` for daily at 03:00")]
    Empty,

    #[error("{}", six_fields_message(.expr, .suggestion.as_deref()))]
    SixFields {
        expr: String,
        /// The expression without its first field, when that field is a seconds value of `0`
        /// and the remaining five fields parse.
        suggestion: Option<String>,
    },

    #[error("`{expr}` has {count} fields: expected 5 fields `minute hour day-of-month month day-of-week`, e.g. `0 3 * * *` for daily at 03:00")]
    FieldCount { expr: String, count: usize },

    #[error("`{expr}` is not a supported macro: use one of @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly, alone")]
    UnknownMacro { expr: String },

    #[error("invalid {field} field `{text}`: {value} is out of range; allowed: {}", .field.allowed_values())]
    OutOfRange {
        field: Field,
        text: String,
        value: String,
    },

    #[error("invalid {field} field `{text}`: `{value}` is not a valid value; allowed: {}", .field.allowed_values())]
    InvalidValue {
        field: Field,
        text: String,
        value: String,
    },

    #[error("invalid {field} field `{text}`: step `{step}` is out of range; allowed: 1-{}", .field.max())]
    InvalidStep {
        field: Field,
        text: String,
        step: String,
    },

    #[error("invalid {field} field `{text}`: range `{range}` starts after it ends; ranges do not wrap around, so list both parts instead, e.g. `22-23,0-2`")]
    ReversedRange {
        field: Field,
        text: String,
        range: String,
    },

    #[error("invalid {field} field `{text}`: `{element}` has a step but no range; write `*/step` or `start-end/step`, e.g. `{start}-{}/{step}`", .field.max())]
    StepWithoutRange {
        field: Field,
        text: String,
        element: String,
        start: String,
        step: String,
    },

    #[error("invalid {field} field `{text}`: empty list element; separate values with single commas, e.g. `1,15`")]
    EmptyElement { field: Field, text: String },

    #[error("`{expr}` never fires: no month selected by the month field `{month}` has a day selected by the day-of-month field `{day_of_month}`")]
    NeverFires {
        expr: String,
        day_of_month: String,
        month: String,
    },

    #[error("unknown time zone `{name}`: expected an IANA name such as `UTC`, `Europe/Berlin` or `America/New_York` (names are case-sensitive)")]
    UnknownTimeZone { name: String },
}

fn six_fields_message(expr: &str, suggestion: Option<&str>) -> String {
    let mut message = format!(
        "`{expr}` has 6 fields, but a schedule has 5: `minute hour day-of-month month day-of-week`. \
         CNPG's ScheduledBackup uses 6 fields with seconds first, so its `0 0 1 * * *` (daily at 01:00) \
         is `0 1 * * *` here."
    );
    match suggestion {
        Some(five_fields) => {
            message.push_str(&format!(
                " Without the seconds field, this expression is `{five_fields}`."
            ));
        }
        None => message.push_str(" Remove the seconds field: schedules here run at whole minutes."),
    }
    message
}

/// Advice about an expression that parses but probably does not do what its author meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// The hour field selects fewer than 24 hours, but the minute field matches more than
    /// [`MAX_QUIET_MINUTES_PER_HOUR`] minutes of each of those hours, as in `* */6 * * *`.
    ManyFiresPerHour {
        expr: String,
        minute_field: String,
        hour_field: String,
        minutes_per_hour: u32,
        hours_per_day: u32,
        /// The expression with the minute field replaced by its first matching minute.
        suggestion: String,
    },
    /// Day-of-month and day-of-week are both restricted, so a day that matches either one fires.
    DayOfMonthOrDayOfWeek {
        day_of_month: String,
        day_of_week: String,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::ManyFiresPerHour {
                expr,
                minute_field,
                hour_field,
                minutes_per_hour,
                hours_per_day,
                suggestion,
            } => {
                let fires_per_day = minutes_per_hour * hours_per_day;
                let hours = if *hours_per_day == 1 {
                    "the hour".to_string()
                } else {
                    format!("each of the {hours_per_day} hours")
                };
                write!(
                    f,
                    "`{expr}` fires {fires_per_day} times a day: the minute field `{minute_field}` \
                     matches {minutes_per_hour} minutes in {hours} selected by the hour field `{hour_field}`. \
                     To run once in each of those hours, write `{suggestion}`."
                )
            }
            Warning::DayOfMonthOrDayOfWeek {
                day_of_month,
                day_of_week,
            } => write!(
                f,
                "day-of-month `{day_of_month}` and day-of-week `{day_of_week}` are both restricted, \
                 so the schedule fires on every day that matches either field, not only on days \
                 that match both (vixie cron rule)"
            ),
        }
    }
}

/// A parsed 5-field crontab expression. It has no time zone: [`Schedule`] adds one.
///
/// Each field is a bit set: bit `n` is set when value `n` matches. Day-of-week stores Sunday as
/// bit 0 whether it was written as `0`, `7` or `sun`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronExpr {
    /// The expression as written, without leading and trailing whitespace.
    source: String,
    /// Field texts. A macro is stored as its 5-field expansion, e.g. `@daily` as `0 0 * * *`.
    field_texts: [String; 5],
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// The day-of-month field starts with `*`. With `dow_star` this selects the vixie day rule.
    dom_star: bool,
    /// The day-of-week field starts with `*`.
    dow_star: bool,
}

impl CronExpr {
    /// Parses a 5-field expression or a macro such as `@daily`.
    pub fn parse(text: &str) -> Result<CronExpr, ParseError> {
        let source = text.trim();
        if source.is_empty() {
            return Err(ParseError::Empty);
        }

        let field_texts = if source.starts_with('@') {
            expand_macro(source)?
        } else {
            split_fields(source)?
        };

        let mut bits = [0u64; 5];
        for (index, field) in Field::ALL.into_iter().enumerate() {
            bits[index] = parse_field(field, &field_texts[index])?;
        }
        let [minutes, hours, days_of_month, months, mut days_of_week] = bits;
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week & !(1 << 7)) | 1;
        }

        let expr = CronExpr {
            source: source.to_string(),
            dom_star: field_texts[2].starts_with('*'),
            dow_star: field_texts[4].starts_with('*'),
            field_texts,
            minutes,
            hours,
            days_of_month,
            months,
            days_of_week,
        };
        expr.check_can_fire()?;
        Ok(expr)
    }

    /// Returns the expression as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Returns the number of slots on a day that the expression matches: minutes matched per hour
    /// times hours matched. Daylight-saving changes can add or remove fire times on the day of
    /// the change.
    pub fn fires_per_matching_day(&self) -> u32 {
        self.minutes.count_ones() * self.hours.count_ones()
    }

    /// Returns advice about parts of the expression that are valid but often written by mistake.
    ///
    /// [`Warning::ManyFiresPerHour`] is returned when the hour field selects fewer than 24 hours
    /// and the minute field matches more than [`MAX_QUIET_MINUTES_PER_HOUR`] minutes of each of
    /// them, as in `* 3 * * *` (60 fire times from 03:00 to 03:59). A restricted hour field
    /// suggests "at these hours", and a dense minute field is then usually a `*` that should
    /// have been a single minute. With all 24 hours selected (`* * * * *`, `*/2 * * * *`) the
    /// density is plainly intended, so there is no warning.
    ///
    /// [`Warning::DayOfMonthOrDayOfWeek`] is returned when neither day field starts with `*`.
    pub fn warnings(&self) -> Vec<Warning> {
        let mut warnings = Vec::new();

        let minutes_per_hour = self.minutes.count_ones();
        if self.hours != ALL_HOURS && minutes_per_hour > MAX_QUIET_MINUTES_PER_HOUR {
            let first_minute = self.minutes.trailing_zeros();
            let suggestion = format!(
                "{first_minute} {} {} {} {}",
                self.field_texts[1], self.field_texts[2], self.field_texts[3], self.field_texts[4]
            );
            warnings.push(Warning::ManyFiresPerHour {
                expr: self.source.clone(),
                minute_field: self.field_texts[0].clone(),
                hour_field: self.field_texts[1].clone(),
                minutes_per_hour,
                hours_per_day: self.hours.count_ones(),
                suggestion,
            });
        }

        if !self.dom_star && !self.dow_star {
            warnings.push(Warning::DayOfMonthOrDayOfWeek {
                day_of_month: self.field_texts[2].clone(),
                day_of_week: self.field_texts[4].clone(),
            });
        }

        warnings
    }

    /// Returns whether the hour field selects all 24 hours, which makes daylight-saving changes
    /// follow the hourly rule in the module documentation.
    fn matches_every_hour(&self) -> bool {
        self.hours == ALL_HOURS
    }

    /// Returns whether `date` matches the month, day-of-month and day-of-week fields.
    ///
    /// Vixie cron rule: when either day field starts with `*`, a day must match both fields.
    /// When neither does, a day that matches either field fires.
    fn matches_date(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let day_of_month = self.days_of_month & (1 << date.day()) != 0;
        let day_of_week = self.days_of_week & (1 << date.weekday().num_days_from_sunday()) != 0;
        if self.dom_star || self.dow_star {
            day_of_month && day_of_week
        } else {
            day_of_month || day_of_week
        }
    }

    /// Rejects expressions whose day-of-month never occurs in a selected month, such as
    /// `0 0 30 2 *`.
    ///
    /// Only expressions under the "match both" day rule can fail this way. When some selected
    /// month has a selected day, every weekday falls on that date sooner or later (at most
    /// 40 years apart, for February 29th), so an expression that passes this check fires
    /// whatever its day-of-week field selects.
    fn check_can_fire(&self) -> Result<(), ParseError> {
        if !self.dom_star && !self.dow_star {
            return Ok(());
        }
        for month in 1..=12u32 {
            if self.months & (1 << month) == 0 {
                continue;
            }
            let days_in_month_mask = (1u64 << (max_days_in_month(month) + 1)) - 2;
            if self.days_of_month & days_in_month_mask != 0 {
                return Ok(());
            }
        }
        Err(ParseError::NeverFires {
            expr: self.source.clone(),
            day_of_month: self.field_texts[2].clone(),
            month: self.field_texts[3].clone(),
        })
    }

    /// Returns the first matching date in `from..=last`.
    fn next_matching_date(&self, from: NaiveDate, last: NaiveDate) -> Option<NaiveDate> {
        let mut date = from;
        while date <= last {
            if self.months & (1 << date.month()) == 0 {
                date = first_day_of_next_month(date)?;
                continue;
            }
            if self.matches_date(date) {
                return Some(date);
            }
            date = date.succ_opt()?;
        }
        None
    }

    /// Returns the last matching date in `first..=from`.
    fn previous_matching_date(&self, from: NaiveDate, first: NaiveDate) -> Option<NaiveDate> {
        let mut date = from;
        while date >= first {
            if self.months & (1 << date.month()) == 0 {
                date = NaiveDate::from_ymd_opt(date.year(), date.month(), 1)?.pred_opt()?;
                continue;
            }
            if self.matches_date(date) {
                return Some(date);
            }
            date = date.pred_opt()?;
        }
        None
    }
}

impl FromStr for CronExpr {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        CronExpr::parse(text)
    }
}

/// Writes the expression as written, so that parsing the output gives an equal `CronExpr`.
impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Serialize for CronExpr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for CronExpr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        CronExpr::parse(&text).map_err(de::Error::custom)
    }
}

/// Returns the 5-field expansion of a macro, following vixie cron.
fn expand_macro(source: &str) -> Result<[String; 5], ParseError> {
    let expansion = match source.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => {
            return Err(ParseError::UnknownMacro {
                expr: source.to_string(),
            })
        }
    };
    split_fields(expansion)
}

fn split_fields(source: &str) -> Result<[String; 5], ParseError> {
    let fields: Vec<&str> = source.split_ascii_whitespace().collect();
    match fields.len() {
        5 => Ok([
            fields[0].to_string(),
            fields[1].to_string(),
            fields[2].to_string(),
            fields[3].to_string(),
            fields[4].to_string(),
        ]),
        6 => {
            let remaining = fields[1..].join(" ");
            let suggestion =
                (fields[0] == "0" && CronExpr::parse(&remaining).is_ok()).then_some(remaining);
            Err(ParseError::SixFields {
                expr: source.to_string(),
                suggestion,
            })
        }
        count => Err(ParseError::FieldCount {
            expr: source.to_string(),
            count,
        }),
    }
}

/// Parses one field: a comma-separated list of `*`, `n`, `a-b`, `*/step` and `a-b/step`.
fn parse_field(field: Field, text: &str) -> Result<u64, ParseError> {
    let mut bits = 0u64;
    for element in text.split(',') {
        if element.is_empty() {
            return Err(ParseError::EmptyElement {
                field,
                text: text.to_string(),
            });
        }
        bits |= parse_element(field, text, element)?;
    }
    Ok(bits)
}

fn parse_element(field: Field, text: &str, element: &str) -> Result<u64, ParseError> {
    let (range, step) = match element.split_once('/') {
        Some((range, step)) => (range, Some(step)),
        None => (element, None),
    };

    let (start, end, is_range) = if range == "*" {
        (field.min(), field.max(), true)
    } else if let Some((start, end)) = range.split_once('-') {
        let start_value = parse_value(field, text, element, start)?;
        let end_value = parse_value(field, text, element, end)?;
        if start_value > end_value {
            return Err(ParseError::ReversedRange {
                field,
                text: text.to_string(),
                range: range.to_string(),
            });
        }
        (start_value, end_value, true)
    } else {
        let value = parse_value(field, text, element, range)?;
        (value, value, false)
    };

    let step = match step {
        None => 1,
        Some(step) if !is_range => {
            return Err(ParseError::StepWithoutRange {
                field,
                text: text.to_string(),
                element: element.to_string(),
                start: range.to_string(),
                step: step.to_string(),
            })
        }
        Some(step) => parse_step(field, text, step)?,
    };

    let mut bits = 0u64;
    let mut value = start;
    while value <= end {
        bits |= 1 << value;
        value += step;
    }
    Ok(bits)
}

/// Parses a number or, for month and day-of-week, a three-letter name (case-insensitive).
/// An empty value, as in `-5`, is reported as the whole list element.
fn parse_value(field: Field, text: &str, element: &str, value: &str) -> Result<u32, ParseError> {
    if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) {
        let out_of_range = || ParseError::OutOfRange {
            field,
            text: text.to_string(),
            value: value.to_string(),
        };
        let number: u32 = value.parse().map_err(|_| out_of_range())?;
        if number < field.min() || number > field.max() {
            return Err(out_of_range());
        }
        return Ok(number);
    }

    if let Some((names, first)) = field.names() {
        if let Some(index) = names
            .iter()
            .position(|name| name.eq_ignore_ascii_case(value))
        {
            return Ok(first + index as u32);
        }
    }
    let reported = if value.is_empty() { element } else { value };
    Err(ParseError::InvalidValue {
        field,
        text: text.to_string(),
        value: reported.to_string(),
    })
}

fn parse_step(field: Field, text: &str, step: &str) -> Result<u32, ParseError> {
    let invalid_step = || ParseError::InvalidStep {
        field,
        text: text.to_string(),
        step: step.to_string(),
    };
    if step.is_empty() || !step.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid_step());
    }
    match step.parse::<u32>() {
        Ok(value) if (1..=field.max()).contains(&value) => Ok(value),
        _ => Err(invalid_step()),
    }
}

/// Days in `month` of a leap year.
fn max_days_in_month(month: u32) -> u32 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn first_day_of_next_month(date: NaiveDate) -> Option<NaiveDate> {
    if date.month() == 12 {
        NaiveDate::from_ymd_opt(date.year().checked_add(1)?, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(date.year(), date.month() + 1, 1)
    }
}

/// Returns the values whose bits are set, in ascending order.
fn set_bits(bits: u64) -> impl Iterator<Item = u32> {
    (0..64u32).filter(move |value| bits & (1 << value) != 0)
}

/// Parses an IANA time zone name such as `Europe/Berlin` with chrono-tz's compiled-in database,
/// so results do not depend on the host's `/usr/share/zoneinfo`.
///
/// NOTE: chrono-tz 0.10.4 contains no transitions after 2099. From 2100 on, each zone keeps the
/// offset in force at the end of 2099, which is daylight-saving time in parts of the southern
/// hemisphere (Australia/Sydney stays at +11:00).
pub fn parse_time_zone(name: &str) -> Result<Tz, ParseError> {
    Tz::from_str(name).map_err(|_| ParseError::UnknownTimeZone {
        name: name.to_string(),
    })
}

/// A crontab expression evaluated in an IANA time zone.
///
/// Deserializes from a string, evaluated in UTC, or from a map `{"expr": "...", "tz": "..."}`
/// where `tz` defaults to `UTC`. Serializes as the map. [`fmt::Display`] writes the expression
/// as written, without the time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub expr: CronExpr,
    pub tz: Tz,
}

impl Schedule {
    pub fn new(expr: CronExpr, tz: Tz) -> Schedule {
        Schedule { expr, tz }
    }

    /// Parses an expression and an IANA time zone name, and returns the schedule with the
    /// warnings from [`CronExpr::warnings`].
    pub fn parse(expr: &str, tz: &str) -> Result<(Schedule, Vec<Warning>), ParseError> {
        let expr = CronExpr::parse(expr)?;
        let tz = parse_time_zone(tz)?;
        let warnings = expr.warnings();
        Ok((Schedule::new(expr, tz), warnings))
    }

    /// Returns the warnings from [`CronExpr::warnings`].
    pub fn warnings(&self) -> Vec<Warning> {
        self.expr.warnings()
    }

    /// Returns the first fire time strictly after `t`, or `None` if there is none within
    /// 400 years or before the end of chrono's date range.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.upcoming(t, 1).into_iter().next()
    }

    /// Returns the first `n` fire times strictly after `after`, in ascending order. Fewer are
    /// returned only when the 400-year search limit or chrono's date range ends first.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        if n == 0 {
            return Vec::new();
        }

        // Start one local date early: a slot on the previous date resolves to an instant after
        // `after` when a spring-forward gap crosses midnight.
        let Some(start) = self.local_date(after).pred_opt() else {
            return Vec::new();
        };
        let last = start
            .checked_add_days(Days::new(SEARCH_DAYS))
            .unwrap_or(NaiveDate::MAX);

        // The `n` earliest fire times found so far.
        let mut fires = BTreeSet::new();
        let mut filled_on: Option<NaiveDate> = None;
        let mut from = start;
        while let Some(date) = self.expr.next_matching_date(from, last) {
            // Fire times of a local date precede those of the date before only after a
            // transition that crosses midnight, so the date after the one that filled `n` is
            // the last one that can contribute.
            if let Some(filled) = filled_on {
                let past_next_date = date > filled.succ_opt().unwrap_or(NaiveDate::MAX);
                let starts_too_late = match (self.first_fire_bound(date), fires.last()) {
                    (Some(bound), Some(latest_kept)) => bound >= *latest_kept,
                    _ => false,
                };
                if past_next_date || starts_too_late {
                    break;
                }
            }

            let ends_too_early = self
                .last_fire_bound(date)
                .is_some_and(|bound| bound <= after);
            if !ends_too_early {
                fires.extend(
                    self.fire_times_on(date)
                        .into_iter()
                        .filter(|fire| *fire > after),
                );
                while fires.len() > n {
                    fires.pop_last();
                }
            }
            if filled_on.is_none() && fires.len() == n {
                filled_on = Some(date);
            }

            match date.succ_opt() {
                Some(next) => from = next,
                None => break,
            }
        }
        fires.into_iter().collect()
    }

    /// Returns the latest fire time at or before `t`, or `None` if there is none within
    /// 400 years or after the start of chrono's date range. A scheduler uses this to find the
    /// most recent slot it may have missed.
    pub fn slot_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Start one local date late: a slot on the next date resolves to an instant before `t`
        // when a fall-back transition crosses midnight.
        let start = self.local_date(t).succ_opt().unwrap_or(NaiveDate::MAX);
        let first = start
            .checked_sub_days(Days::new(SEARCH_DAYS))
            .unwrap_or(NaiveDate::MIN);

        let mut latest: Option<DateTime<Utc>> = None;
        let mut found_on: Option<NaiveDate> = None;
        let mut from = start;
        while let Some(date) = self.expr.previous_matching_date(from, first) {
            if let (Some(found), Some(latest_found)) = (found_on, latest) {
                let before_previous_date = date < found.pred_opt().unwrap_or(NaiveDate::MIN);
                let ends_too_early = self
                    .last_fire_bound(date)
                    .is_some_and(|bound| bound <= latest_found);
                if before_previous_date || ends_too_early {
                    break;
                }
            }

            let starts_too_late = self.first_fire_bound(date).is_some_and(|bound| bound > t);
            if !starts_too_late {
                let candidate = self
                    .fire_times_on(date)
                    .into_iter()
                    .filter(|fire| *fire <= t)
                    .max();
                if let Some(fire) = candidate {
                    latest = latest.max(Some(fire));
                    found_on.get_or_insert(date);
                }
            }

            match date.pred_opt() {
                Some(previous) => from = previous,
                None => break,
            }
        }
        latest
    }

    /// Returns an instant no later than any fire time of local date `date`: the first
    /// occurrence of the day's first slot, or the end of the gap that contains it.
    ///
    /// This costs one or two time zone look-ups instead of one per slot.
    ///
    /// NOTE: both bounds assume that the clock does not jump forward over a slot and back over
    /// it again on the same local date. A zone with such a date would need every slot checked.
    fn first_fire_bound(&self, date: NaiveDate) -> Option<DateTime<Utc>> {
        let first_hour = self.expr.hours.trailing_zeros();
        let first_minute = self.expr.minutes.trailing_zeros();
        let first_slot = date.and_hms_opt(first_hour, first_minute, 0)?;
        self.earliest_instant(first_slot)
            .or_else(|| self.end_of_gap(first_slot))
    }

    /// Returns an instant no earlier than any fire time of local date `date`: the last
    /// occurrence of the day's last slot, or the end of the gap that contains it.
    fn last_fire_bound(&self, date: NaiveDate) -> Option<DateTime<Utc>> {
        let last_hour = 63 - self.expr.hours.leading_zeros();
        let last_minute = 63 - self.expr.minutes.leading_zeros();
        let last_slot = date.and_hms_opt(last_hour, last_minute, 0)?;
        match self.tz.from_local_datetime(&last_slot) {
            LocalResult::Single(instant) => Some(instant.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, second) => Some(first.max(second).with_timezone(&Utc)),
            LocalResult::None => self.end_of_gap(last_slot),
        }
    }

    fn local_date(&self, t: DateTime<Utc>) -> NaiveDate {
        t.with_timezone(&self.tz).date_naive()
    }

    /// Returns the fire times of all slots on local date `date`, sorted and without duplicates,
    /// following the daylight-saving rules in the module documentation.
    fn fire_times_on(&self, date: NaiveDate) -> Vec<DateTime<Utc>> {
        let every_hour = self.expr.matches_every_hour();
        let mut fires = Vec::new();
        for hour in set_bits(self.expr.hours) {
            for minute in set_bits(self.expr.minutes) {
                let Some(local) = date.and_hms_opt(hour, minute, 0) else {
                    continue;
                };
                match self.tz.from_local_datetime(&local) {
                    LocalResult::Single(instant) => fires.push(instant.with_timezone(&Utc)),
                    LocalResult::Ambiguous(first, second) => {
                        let (earlier, later) = if first <= second {
                            (first, second)
                        } else {
                            (second, first)
                        };
                        fires.push(earlier.with_timezone(&Utc));
                        if every_hour {
                            fires.push(later.with_timezone(&Utc));
                        }
                    }
                    LocalResult::None => {
                        if !every_hour {
                            fires.extend(self.end_of_gap(local));
                        }
                    }
                }
            }
        }
        fires.sort_unstable();
        fires.dedup();
        fires
    }

    /// Returns the first instant after the daylight-saving gap that contains the nonexistent
    /// local time `local`, which is the instant of the transition.
    fn end_of_gap(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        // The widest gaps in the tz database are whole skipped days (Pacific/Apia on 2011-12-30),
        // so 48 hours of minutes is a safe bound.
        let mut minute = local;
        let mut first_existing = None;
        for _ in 0..48 * 60 {
            minute = minute.checked_add_signed(TimeDelta::minutes(1))?;
            if let Some(instant) = self.earliest_instant(minute) {
                first_existing = Some((minute, instant));
                break;
            }
        }
        let (minute, instant) = first_existing?;

        // Transitions from local mean time, before about 1900, can fall on a second inside the
        // minute, so the gap can end up to 59 seconds before `minute`.
        for seconds_before in (1..60).rev() {
            let candidate = minute - TimeDelta::seconds(seconds_before);
            if let Some(earlier) = self.earliest_instant(candidate) {
                return Some(earlier);
            }
        }
        Some(instant)
    }

    fn earliest_instant(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        self.tz
            .from_local_datetime(&local)
            .earliest()
            .map(|instant| instant.with_timezone(&Utc))
    }
}

/// Writes the expression as written, without the time zone.
impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.expr, f)
    }
}

impl Serialize for Schedule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut state = serializer.serialize_struct("Schedule", 2)?;
        state.serialize_field("expr", &self.expr)?;
        state.serialize_field("tz", self.tz.name())?;
        state.end()
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScheduleVisitor)
    }
}

struct ScheduleVisitor;

impl<'de> Visitor<'de> for ScheduleVisitor {
    type Value = Schedule;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .write_str("a crontab expression string, or a map with `expr` and an optional `tz`")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Schedule, E> {
        let expr = CronExpr::parse(text).map_err(E::custom)?;
        Ok(Schedule::new(expr, Tz::UTC))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Schedule, A::Error> {
        let mut expr: Option<CronExpr> = None;
        let mut tz: Option<Tz> = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "expr" => {
                    if expr.is_some() {
                        return Err(de::Error::duplicate_field("expr"));
                    }
                    expr = Some(map.next_value()?);
                }
                "tz" => {
                    if tz.is_some() {
                        return Err(de::Error::duplicate_field("tz"));
                    }
                    let name: String = map.next_value()?;
                    tz = Some(parse_time_zone(&name).map_err(de::Error::custom)?);
                }
                other => return Err(de::Error::unknown_field(other, &["expr", "tz"])),
            }
        }
        let expr = expr.ok_or_else(|| de::Error::missing_field("expr"))?;
        Ok(Schedule::new(expr, tz.unwrap_or(Tz::UTC)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveTime, Timelike};

    fn utc(year: i32, month: u32, day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(year, month, day, hour, minute, 0)
            .unwrap()
    }

    fn schedule(expr: &str, tz: &str) -> Schedule {
        Schedule::parse(expr, tz).unwrap().0
    }

    fn parse_error(expr: &str) -> ParseError {
        CronExpr::parse(expr).unwrap_err()
    }

    // Parsing and matching, evaluated in UTC.

    #[test]
    fn weekly_monday_after_sunday() {
        let now = utc(2026, 2, 1, 12, 0);
        assert_eq!(now.weekday(), chrono::Weekday::Sun);
        let fires = schedule("0 3 * * 1", "UTC").upcoming(now, 3);
        assert_eq!(
            fires,
            vec![
                utc(2026, 2, 2, 3, 0),
                utc(2026, 2, 9, 3, 0),
                utc(2026, 2, 16, 3, 0)
            ]
        );
    }

    #[test]
    fn sunday_is_zero_and_seven() {
        let now = utc(2026, 2, 1, 12, 0);
        let expected = vec![
            utc(2026, 2, 8, 3, 0),
            utc(2026, 2, 15, 3, 0),
            utc(2026, 2, 22, 3, 0),
        ];
        for expr in ["0 3 * * 0", "0 3 * * 7", "0 3 * * sun", "0 3 * * 0,7"] {
            assert_eq!(schedule(expr, "UTC").upcoming(now, 3), expected, "{expr}");
        }
    }

    #[test]
    fn daily_fires_once_a_day() {
        let fires = schedule("0 1 * * *", "UTC").upcoming(utc(2024, 3, 15, 10, 30), 3);
        assert_eq!(
            fires,
            vec![
                utc(2024, 3, 16, 1, 0),
                utc(2024, 3, 17, 1, 0),
                utc(2024, 3, 18, 1, 0)
            ]
        );
    }

    #[test]
    fn both_day_fields_restricted_match_either() {
        // April 2026: Fridays are the 3rd, 10th, 17th and 24th, and the 13th is a Monday.
        let fires = schedule("0 0 13 * 5", "UTC").upcoming(utc(2026, 3, 31, 0, 0), 10);
        let expected = [
            (4, 3),
            (4, 10),
            (4, 13),
            (4, 17),
            (4, 24),
            (5, 1),
            (5, 8),
            (5, 13),
            (5, 15),
            (5, 22),
        ]
        .map(|(month, day)| utc(2026, month, day, 0, 0));
        assert_eq!(fires, expected);
    }

    #[test]
    fn star_day_field_requires_both() {
        // `*/13` starts with `*`, so a day must be the 1st, 14th or 27th and a Friday.
        let fires = schedule("0 0 */13 * 5", "UTC").upcoming(utc(2026, 1, 1, 0, 0), 4);
        assert_eq!(
            fires,
            vec![
                utc(2026, 2, 27, 0, 0),
                utc(2026, 3, 27, 0, 0),
                utc(2026, 5, 1, 0, 0),
                utc(2026, 8, 14, 0, 0)
            ]
        );
    }

    #[test]
    fn single_day_field_restricted() {
        let monthly = schedule("0 0 13 * *", "UTC").upcoming(utc(2026, 3, 31, 0, 0), 2);
        assert_eq!(
            monthly,
            vec![utc(2026, 4, 13, 0, 0), utc(2026, 5, 13, 0, 0)]
        );

        let fridays = schedule("0 0 * * 5", "UTC").upcoming(utc(2026, 3, 31, 0, 0), 2);
        assert_eq!(fridays, vec![utc(2026, 4, 3, 0, 0), utc(2026, 4, 10, 0, 0)]);
    }

    #[test]
    fn macros_match_their_expansion() {
        let cases = [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
            ("@DAILY", "0 0 * * *"),
        ];
        let now = utc(2026, 2, 1, 12, 0);
        for (macro_text, expansion) in cases {
            let from_macro = schedule(macro_text, "UTC").upcoming(now, 5);
            let from_fields = schedule(expansion, "UTC").upcoming(now, 5);
            assert_eq!(from_macro, from_fields, "{macro_text}");
            assert_eq!(from_macro.len(), 5, "{macro_text}");
        }
    }

    #[test]
    fn macros_fire_at_expected_times() {
        let now = utc(2026, 2, 1, 12, 0);
        let next = |expr: &str| schedule(expr, "UTC").next_after(now).unwrap();
        assert_eq!(next("@hourly"), utc(2026, 2, 1, 13, 0));
        assert_eq!(next("@daily"), utc(2026, 2, 2, 0, 0));
        assert_eq!(next("@weekly"), utc(2026, 2, 8, 0, 0));
        assert_eq!(next("@monthly"), utc(2026, 3, 1, 0, 0));
        assert_eq!(next("@yearly"), utc(2027, 1, 1, 0, 0));
    }

    #[test]
    fn names_are_case_insensitive() {
        let now = utc(2026, 2, 1, 12, 0);
        let by_number = schedule("0 9 * 1,7 1-5", "UTC").upcoming(now, 30);
        for expr in ["0 9 * jan,jul mon-fri", "0 9 * JAN,Jul Mon-FRI"] {
            assert_eq!(schedule(expr, "UTC").upcoming(now, 30), by_number, "{expr}");
        }
        assert_eq!(by_number[0], utc(2026, 7, 1, 9, 0));
    }

    #[test]
    fn steps_and_ranges_select_values() {
        let day_start = utc(2026, 2, 1, 0, 0) - TimeDelta::seconds(1);
        let hours_of = |expr: &str| -> Vec<u32> {
            schedule(expr, "UTC")
                .upcoming(day_start, 24)
                .iter()
                .filter(|t| t.day() == 1)
                .map(|t| t.hour())
                .collect()
        };
        let minutes_of = |expr: &str| -> Vec<u32> {
            schedule(expr, "UTC")
                .upcoming(day_start, 60)
                .iter()
                .filter(|t| t.hour() == 0)
                .map(|t| t.minute())
                .collect()
        };

        assert_eq!(hours_of("0 */6 * * *"), vec![0, 6, 12, 18]);
        assert_eq!(hours_of("0 9-17 * * *"), (9..=17).collect::<Vec<_>>());
        assert_eq!(hours_of("0 8-18/4,23 * * *"), vec![8, 12, 16, 23]);
        assert_eq!(minutes_of("1-10/2 * * * *"), vec![1, 3, 5, 7, 9]);
        assert_eq!(minutes_of("*/15 * * * *"), vec![0, 15, 30, 45]);
        assert_eq!(minutes_of("5,10-12 * * * *"), vec![5, 10, 11, 12]);
    }

    #[test]
    fn step_on_months_and_weekdays() {
        let quarterly = schedule("0 0 1 */3 *", "UTC").upcoming(utc(2026, 1, 15, 0, 0), 3);
        assert_eq!(
            quarterly,
            vec![
                utc(2026, 4, 1, 0, 0),
                utc(2026, 7, 1, 0, 0),
                utc(2026, 10, 1, 0, 0)
            ]
        );

        // `*/2` on day-of-week is 0,2,4,6: Sunday, Tuesday, Thursday, Saturday.
        let weekdays: Vec<u32> = schedule("0 0 * * */2", "UTC")
            .upcoming(utc(2026, 2, 1, 12, 0), 4)
            .iter()
            .map(|t| t.weekday().num_days_from_sunday())
            .collect();
        assert_eq!(weekdays, vec![2, 4, 6, 0]);
    }

    #[test]
    fn whitespace_around_fields_is_ignored() {
        let expr = CronExpr::parse("  0   3 *\t* 1 ").unwrap();
        assert_eq!(expr.as_str(), "0   3 *\t* 1");
        let fires = Schedule::new(expr, Tz::UTC).upcoming(utc(2026, 2, 1, 12, 0), 1);
        assert_eq!(fires, vec![utc(2026, 2, 2, 3, 0)]);
    }

    // Errors.

    #[test]
    fn six_fields_explains_cnpg_form() {
        let error = parse_error("0 0 1 * * *");
        assert_eq!(
            error,
            ParseError::SixFields {
                expr: "0 0 1 * * *".to_string(),
                suggestion: Some("0 1 * * *".to_string()),
            }
        );
        let message = error.to_string();
        assert!(message.contains("has 6 fields"), "{message}");
        assert!(
            message.contains("minute hour day-of-month month day-of-week"),
            "{message}"
        );
        assert!(
            message.contains("CNPG's ScheduledBackup uses 6 fields with seconds first"),
            "{message}"
        );
        assert!(message.contains("daily at 01:00"), "{message}");
        assert!(
            message.contains("this expression is `0 1 * * *`"),
            "{message}"
        );
    }

    #[test]
    fn six_fields_with_nonzero_seconds() {
        let error = parse_error("30 0 1 * * *");
        assert_eq!(
            error,
            ParseError::SixFields {
                expr: "30 0 1 * * *".to_string(),
                suggestion: None,
            }
        );
        assert!(
            error.to_string().contains("Remove the seconds field"),
            "{error}"
        );
    }

    #[test]
    fn wrong_field_counts() {
        for (expr, count) in [("0 3 * *", 4), ("0 0 3 * * * 2026", 7), ("*", 1)] {
            let error = parse_error(expr);
            assert_eq!(
                error,
                ParseError::FieldCount {
                    expr: expr.to_string(),
                    count
                },
                "{expr}"
            );
            assert!(error.to_string().contains("expected 5 fields"), "{error}");
        }
        assert_eq!(parse_error("   "), ParseError::Empty);
    }

    #[test]
    fn out_of_range_values() {
        let cases = [
            ("60 * * * *", Field::Minute, "60", "0-59"),
            ("0 24 * * *", Field::Hour, "24", "0-23"),
            ("0 0 0 * *", Field::DayOfMonth, "0", "1-31"),
            ("0 0 32 * *", Field::DayOfMonth, "32", "1-31"),
            ("0 0 * 0 *", Field::Month, "0", "1-12 or jan-dec"),
            ("0 0 * 13 *", Field::Month, "13", "1-12 or jan-dec"),
            ("0 0 * * 8", Field::DayOfWeek, "8", "0-7 or sun-sat"),
            ("0 0-24 * * *", Field::Hour, "24", "0-23"),
            ("99999999999 * * * *", Field::Minute, "99999999999", "0-59"),
        ];
        for (expr, field, value, allowed) in cases {
            let error = parse_error(expr);
            let ParseError::OutOfRange {
                field: error_field,
                value: error_value,
                ..
            } = &error
            else {
                panic!("{expr}: expected OutOfRange, got {error:?}");
            };
            assert_eq!(*error_field, field, "{expr}");
            assert_eq!(error_value, value, "{expr}");
            let message = error.to_string();
            assert!(
                message.contains(&format!("invalid {field} field")),
                "{message}"
            );
            assert!(
                message.contains(&format!("{value} is out of range")),
                "{message}"
            );
            assert!(message.contains(allowed), "{message}");
        }
    }

    #[test]
    fn invalid_values_and_names() {
        let cases = [
            ("mon * * * *", Field::Minute, "mon"),
            ("0 0 * * fry", Field::DayOfWeek, "fry"),
            ("0 0 * * monday", Field::DayOfWeek, "monday"),
            ("0 0 * janu *", Field::Month, "janu"),
            ("0 0 * * -1", Field::DayOfWeek, "-1"),
            ("0 0 * * 1-", Field::DayOfWeek, "1-"),
            ("0 0 1,2-x * *", Field::DayOfMonth, "x"),
            ("0 0 ? * *", Field::DayOfMonth, "?"),
            ("0 0 L * *", Field::DayOfMonth, "L"),
        ];
        for (expr, field, value) in cases {
            let error = parse_error(expr);
            let ParseError::InvalidValue {
                field: error_field,
                value: error_value,
                ..
            } = &error
            else {
                panic!("{expr}: expected InvalidValue, got {error:?}");
            };
            assert_eq!(*error_field, field, "{expr}");
            assert_eq!(error_value, value, "{expr}");
            assert!(
                error.to_string().contains(field.allowed_values()),
                "{error}"
            );
        }
    }

    #[test]
    fn invalid_steps() {
        for (expr, field, step) in [
            ("*/0 * * * *", Field::Minute, "0"),
            ("*/60 * * * *", Field::Minute, "60"),
            ("0 */24 * * *", Field::Hour, "24"),
            ("*/x * * * *", Field::Minute, "x"),
            ("*/ * * * *", Field::Minute, ""),
            ("*/2/3 * * * *", Field::Minute, "2/3"),
        ] {
            let error = parse_error(expr);
            let ParseError::InvalidStep {
                field: error_field,
                step: error_step,
                ..
            } = &error
            else {
                panic!("{expr}: expected InvalidStep, got {error:?}");
            };
            assert_eq!(*error_field, field, "{expr}");
            assert_eq!(error_step, step, "{expr}");
            assert!(
                error
                    .to_string()
                    .contains(&format!("allowed: 1-{}", field.max())),
                "{error}"
            );
        }
    }

    #[test]
    fn malformed_lists_and_ranges() {
        let reversed = parse_error("0 22-2 * * *");
        assert!(
            matches!(
                reversed,
                ParseError::ReversedRange {
                    field: Field::Hour,
                    ..
                }
            ),
            "{reversed:?}"
        );
        assert!(reversed.to_string().contains("`22-23,0-2`"), "{reversed}");

        let step_without_range = parse_error("5/15 * * * *");
        assert!(
            matches!(
                step_without_range,
                ParseError::StepWithoutRange {
                    field: Field::Minute,
                    ..
                }
            ),
            "{step_without_range:?}"
        );
        assert!(
            step_without_range.to_string().contains("`5-59/15`"),
            "{step_without_range}"
        );

        for expr in ["1,,2 * * * *", "1, * * * *", ",1 * * * *"] {
            let error = parse_error(expr);
            assert!(
                matches!(
                    error,
                    ParseError::EmptyElement {
                        field: Field::Minute,
                        ..
                    }
                ),
                "{expr}: {error:?}"
            );
        }
    }

    #[test]
    fn unsupported_macros() {
        for expr in ["@reboot", "@every 1h", "@daily 0", "@"] {
            let error = parse_error(expr);
            assert_eq!(
                error,
                ParseError::UnknownMacro {
                    expr: expr.to_string()
                },
                "{expr}"
            );
            assert!(error.to_string().contains("@daily"), "{error}");
        }
    }

    #[test]
    fn expressions_that_never_fire() {
        for expr in ["0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 31 feb */2"] {
            let error = parse_error(expr);
            assert!(
                matches!(error, ParseError::NeverFires { .. }),
                "{expr}: {error:?}"
            );
        }
        // A day-of-week restriction makes the day rule "either", so these fire on Mondays.
        assert!(CronExpr::parse("0 0 30 2 1").is_ok());
        // February 29th exists in leap years.
        assert!(CronExpr::parse("0 0 29 2 *").is_ok());
    }

    #[test]
    fn unknown_time_zone() {
        for name in ["Europe/Berln", "europe/berlin", "CEST", ""] {
            let error = Schedule::parse("0 3 * * *", name).unwrap_err();
            assert_eq!(
                error,
                ParseError::UnknownTimeZone {
                    name: name.to_string()
                },
                "{name}"
            );
            assert!(error.to_string().contains("Europe/Berlin"), "{error}");
        }
    }

    // Warnings.

    #[test]
    fn warning_for_every_minute_of_some_hours() {
        let (_, warnings) = Schedule::parse("* */6 * * *", "UTC").unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(
            warnings[0].to_string(),
            "`* */6 * * *` fires 240 times a day: the minute field `*` matches 60 minutes in each of \
             the 4 hours selected by the hour field `*/6`. To run once in each of those hours, \
             write `0 */6 * * *`."
        );
    }

    #[test]
    fn warning_for_single_hour() {
        let warnings = CronExpr::parse("*/2 3 * * 1-5").unwrap().warnings();
        assert_eq!(
            warnings,
            vec![Warning::ManyFiresPerHour {
                expr: "*/2 3 * * 1-5".to_string(),
                minute_field: "*/2".to_string(),
                hour_field: "3".to_string(),
                minutes_per_hour: 30,
                hours_per_day: 1,
                suggestion: "0 3 * * 1-5".to_string(),
            }]
        );
        let message = warnings[0].to_string();
        assert!(message.contains("fires 30 times a day"), "{message}");
        assert!(
            message.contains("in the hour selected by the hour field `3`"),
            "{message}"
        );
    }

    #[test]
    fn warning_suggests_first_matching_minute() {
        let warnings = CronExpr::parse("5-59 9-17 * * *").unwrap().warnings();
        let [Warning::ManyFiresPerHour {
            suggestion,
            minutes_per_hour,
            hours_per_day,
            ..
        }] = warnings.as_slice()
        else {
            panic!("expected one ManyFiresPerHour warning, got {warnings:?}");
        };
        assert_eq!(suggestion, "5 9-17 * * *");
        assert_eq!(*minutes_per_hour, 55);
        assert_eq!(*hours_per_day, 9);
    }

    #[test]
    fn warning_threshold_is_twelve_minutes_per_hour() {
        let quiet = [
            "0 */6 * * *",
            "*/5 3 * * *",
            "0,15,30,45 2 * * *",
            "* * * * *",
            "*/2 * * * *",
            "@hourly",
        ];
        for expr in quiet {
            assert_eq!(CronExpr::parse(expr).unwrap().warnings(), vec![], "{expr}");
        }
        let noisy = ["*/4 3 * * *", "* 3 * * *", "0-12 3 * * *", "* 0-22 * * *"];
        for expr in noisy {
            let warnings = CronExpr::parse(expr).unwrap().warnings();
            assert!(
                matches!(warnings.as_slice(), [Warning::ManyFiresPerHour { .. }]),
                "{expr}: {warnings:?}"
            );
        }
    }

    #[test]
    fn warning_for_either_day_rule() {
        let warnings = CronExpr::parse("0 0 13 * 5").unwrap().warnings();
        assert_eq!(
            warnings,
            vec![Warning::DayOfMonthOrDayOfWeek {
                day_of_month: "13".to_string(),
                day_of_week: "5".to_string(),
            }]
        );
        assert!(
            warnings[0].to_string().contains("matches either field"),
            "{}",
            warnings[0]
        );

        for expr in [
            "0 0 */13 * 5",
            "0 0 13 * *",
            "0 0 * * 5",
            "@weekly",
            "@monthly",
        ] {
            assert_eq!(CronExpr::parse(expr).unwrap().warnings(), vec![], "{expr}");
        }
    }

    #[test]
    fn fires_per_matching_day_counts_slots() {
        let cases = [
            ("* */6 * * *", 240),
            ("0 3 * * *", 1),
            ("*/15 * * * *", 96),
            ("@hourly", 24),
            ("1-10/2 9-17 * * *", 45),
        ];
        for (expr, expected) in cases {
            assert_eq!(
                CronExpr::parse(expr).unwrap().fires_per_matching_day(),
                expected,
                "{expr}"
            );
        }
    }

    // Daylight-saving changes. Europe/Berlin switches at 01:00Z: 2026-03-29 02:00 CET becomes
    // 03:00 CEST, and 2026-10-25 03:00 CEST becomes 02:00 CET. America/New_York switches on
    // 2026-03-08 (02:00 EST becomes 03:00 EDT, 07:00Z) and 2026-11-01 (02:00 EDT becomes
    // 01:00 EST, 06:00Z).

    #[test]
    fn berlin_spring_forward_daily() {
        let fires = schedule("30 2 * * *", "Europe/Berlin").upcoming(utc(2026, 3, 27, 12, 0), 3);
        assert_eq!(
            fires,
            vec![
                utc(2026, 3, 28, 1, 30), // 02:30 CET
                utc(2026, 3, 29, 1, 0),  // 02:30 does not exist: 03:00 CEST
                utc(2026, 3, 30, 0, 30), // 02:30 CEST
            ]
        );
    }

    #[test]
    fn berlin_fall_back_daily() {
        let fires = schedule("30 2 * * *", "Europe/Berlin").upcoming(utc(2026, 10, 23, 12, 0), 3);
        assert_eq!(
            fires,
            vec![
                utc(2026, 10, 24, 0, 30), // 02:30 CEST
                utc(2026, 10, 25, 0, 30), // first 02:30 (CEST), not again at 01:30Z
                utc(2026, 10, 26, 1, 30), // 02:30 CET
            ]
        );
    }

    #[test]
    fn new_york_spring_forward_daily() {
        let fires = schedule("30 2 * * *", "America/New_York").upcoming(utc(2026, 3, 6, 12, 0), 3);
        assert_eq!(
            fires,
            vec![
                utc(2026, 3, 7, 7, 30), // 02:30 EST
                utc(2026, 3, 8, 7, 0),  // 02:30 does not exist: 03:00 EDT
                utc(2026, 3, 9, 6, 30), // 02:30 EDT
            ]
        );
    }

    #[test]
    fn new_york_fall_back_daily() {
        let fires =
            schedule("30 1 * * *", "America/New_York").upcoming(utc(2026, 10, 30, 12, 0), 3);
        assert_eq!(
            fires,
            vec![
                utc(2026, 10, 31, 5, 30), // 01:30 EDT
                utc(2026, 11, 1, 5, 30),  // first 01:30 (EDT), not again at 06:30Z
                utc(2026, 11, 2, 6, 30),  // 01:30 EST
            ]
        );
    }

    #[test]
    fn berlin_hourly_across_both_switches() {
        let hourly = schedule("0 * * * *", "Europe/Berlin");
        assert_eq!(
            hourly.upcoming(utc(2026, 3, 28, 23, 30), 3),
            vec![
                utc(2026, 3, 29, 0, 0),
                utc(2026, 3, 29, 1, 0),
                utc(2026, 3, 29, 2, 0)
            ],
            "01:00 CET, 03:00 CEST, 04:00 CEST"
        );
        assert_eq!(
            hourly.upcoming(utc(2026, 10, 24, 22, 30), 4),
            vec![
                utc(2026, 10, 24, 23, 0),
                utc(2026, 10, 25, 0, 0),
                utc(2026, 10, 25, 1, 0),
                utc(2026, 10, 25, 2, 0)
            ],
            "01:00 CEST, 02:00 CEST, 02:00 CET, 03:00 CET"
        );
    }

    #[test]
    fn new_york_hourly_across_both_switches() {
        let hourly = schedule("0 * * * *", "America/New_York");
        assert_eq!(
            hourly.upcoming(utc(2026, 3, 8, 5, 30), 3),
            vec![
                utc(2026, 3, 8, 6, 0),
                utc(2026, 3, 8, 7, 0),
                utc(2026, 3, 8, 8, 0)
            ],
            "01:00 EST, 03:00 EDT, 04:00 EDT"
        );
        assert_eq!(
            hourly.upcoming(utc(2026, 11, 1, 4, 30), 3),
            vec![
                utc(2026, 11, 1, 5, 0),
                utc(2026, 11, 1, 6, 0),
                utc(2026, 11, 1, 7, 0)
            ],
            "01:00 EDT, 01:00 EST, 02:00 EST"
        );
    }

    #[test]
    fn hourly_expressions_stay_evenly_spaced() {
        for tz in ["Europe/Berlin", "America/New_York"] {
            for (expr, spacing_minutes) in
                [("*/15 * * * *", 15), ("30 * * * *", 60), ("0 * * * *", 60)]
            {
                let year_start = utc(2026, 1, 1, 0, 0) - TimeDelta::seconds(1);
                let count = 365 * 24 * 60 / spacing_minutes;
                let fires = schedule(expr, tz).upcoming(year_start, count as usize);
                assert_eq!(fires.len(), count as usize, "{tz} {expr}");
                for pair in fires.windows(2) {
                    assert_eq!(
                        pair[1] - pair[0],
                        TimeDelta::minutes(spacing_minutes),
                        "{tz} {expr} at {}",
                        pair[0]
                    );
                }
            }
        }
    }

    #[test]
    fn fixed_hour_inside_gap_fires_once() {
        let fires = schedule("*/15 2 * * *", "Europe/Berlin").upcoming(utc(2026, 3, 28, 12, 0), 5);
        assert_eq!(
            fires,
            vec![
                utc(2026, 3, 29, 1, 0), // 02:00-02:45 do not exist: one fire at 03:00 CEST
                utc(2026, 3, 30, 0, 0),
                utc(2026, 3, 30, 0, 15),
                utc(2026, 3, 30, 0, 30),
                utc(2026, 3, 30, 0, 45),
            ]
        );
    }

    #[test]
    fn fixed_hour_repeated_fires_first_occurrence() {
        let fires =
            schedule("*/15 1 * * *", "America/New_York").upcoming(utc(2026, 11, 1, 0, 0), 5);
        assert_eq!(
            fires,
            vec![
                utc(2026, 11, 1, 5, 0), // 01:00-01:45 EDT only
                utc(2026, 11, 1, 5, 15),
                utc(2026, 11, 1, 5, 30),
                utc(2026, 11, 1, 5, 45),
                utc(2026, 11, 2, 6, 0), // 01:00 EST the next day
            ]
        );
    }

    #[test]
    fn every_second_hour_in_berlin_switches() {
        let every_two_hours = schedule("0 */2 * * *", "Europe/Berlin");
        assert_eq!(
            every_two_hours.upcoming(utc(2026, 3, 28, 22, 30), 3),
            vec![
                utc(2026, 3, 28, 23, 0),
                utc(2026, 3, 29, 1, 0),
                utc(2026, 3, 29, 2, 0)
            ],
            "00:00 CET, 02:00 moved to 03:00 CEST, 04:00 CEST"
        );
        assert_eq!(
            every_two_hours.upcoming(utc(2026, 10, 24, 21, 30), 3),
            vec![
                utc(2026, 10, 24, 22, 0),
                utc(2026, 10, 25, 0, 0),
                utc(2026, 10, 25, 3, 0)
            ],
            "00:00 CEST, 02:00 CEST once, 04:00 CET"
        );
    }

    /// A daily expression, the local time of its slot, and the one date of 2026 whose slot falls
    /// into a spring-forward gap, with the local time that slot fires at instead.
    struct DailyCase {
        tz: &'static str,
        expr: &'static str,
        slot: (u32, u32),
        /// (month, day, hour, minute)
        gap_day: Option<(u32, u32, u32, u32)>,
    }

    const DAILY_CASES: [DailyCase; 7] = [
        DailyCase {
            tz: "Europe/Berlin",
            expr: "30 2 * * *",
            slot: (2, 30),
            gap_day: Some((3, 29, 3, 0)),
        },
        DailyCase {
            tz: "Europe/Berlin",
            expr: "0 2 * * *",
            slot: (2, 0),
            gap_day: Some((3, 29, 3, 0)),
        },
        DailyCase {
            tz: "Europe/Berlin",
            expr: "30 1 * * *",
            slot: (1, 30),
            gap_day: None,
        },
        DailyCase {
            tz: "America/New_York",
            expr: "30 2 * * *",
            slot: (2, 30),
            gap_day: Some((3, 8, 3, 0)),
        },
        DailyCase {
            tz: "America/New_York",
            expr: "30 1 * * *",
            slot: (1, 30),
            gap_day: None,
        },
        DailyCase {
            tz: "America/Santiago",
            expr: "0 0 * * *",
            slot: (0, 0),
            gap_day: Some((9, 6, 1, 0)),
        },
        DailyCase {
            tz: "America/Santiago",
            expr: "30 23 * * *",
            slot: (23, 30),
            gap_day: None,
        },
    ];

    #[test]
    fn daily_fires_once_every_day_of_year() {
        for DailyCase {
            tz,
            expr,
            slot,
            gap_day,
        } in DAILY_CASES
        {
            let schedule = schedule(expr, tz);
            let fires: Vec<DateTime<Tz>> = schedule
                .upcoming(utc(2025, 12, 30, 0, 0), 400)
                .into_iter()
                .map(|fire| fire.with_timezone(&schedule.tz))
                .filter(|fire| fire.year() == 2026)
                .collect();
            assert_eq!(fires.len(), 365, "{tz} {expr}");

            let mut expected_date = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
            for fire in &fires {
                assert_eq!(fire.date_naive(), expected_date, "{tz} {expr}");
                let (hour, minute) = match gap_day {
                    Some((month, day, hour, minute))
                        if (expected_date.month(), expected_date.day()) == (month, day) =>
                    {
                        (hour, minute)
                    }
                    _ => slot,
                };
                let expected_time = NaiveTime::from_hms_opt(hour, minute, 0).unwrap();
                assert_eq!(fire.time(), expected_time, "{tz} {expr} on {expected_date}");
                expected_date = expected_date.succ_opt().unwrap();
            }
        }
    }

    #[test]
    fn midnight_gap_in_santiago() {
        // Chile moves from 00:00 -04 to 01:00 -03 on 2026-09-06, so midnight does not exist.
        let fires = schedule("0 0 * * *", "America/Santiago").upcoming(utc(2026, 9, 5, 12, 0), 2);
        assert_eq!(fires, vec![utc(2026, 9, 6, 4, 0), utc(2026, 9, 7, 3, 0)]);
    }

    #[test]
    fn skipped_day_in_apia() {
        // Samoa skipped 2011-12-30: 23:59:59 on the 29th (-10:00) was followed by 00:00 on the
        // 31st (+14:00), at 10:00Z. The slot of the 30th fires at that instant.
        let fires = schedule("0 3 * * *", "Pacific/Apia").upcoming(utc(2011, 12, 29, 0, 0), 3);
        assert_eq!(
            fires,
            vec![
                utc(2011, 12, 29, 13, 0),
                utc(2011, 12, 30, 10, 0),
                utc(2011, 12, 30, 13, 0)
            ]
        );
    }

    #[test]
    fn gap_ending_inside_a_minute() {
        // Liberia moved from -00:44:30 to GMT at 00:00 local on 1972-01-07, so local times
        // 00:00:00-00:44:29 did not exist that day.
        let fires = schedule("30 0 * * *", "Africa/Monrovia").upcoming(utc(1972, 1, 6, 12, 0), 2);
        assert_eq!(
            fires,
            vec![
                utc(1972, 1, 7, 0, 44) + TimeDelta::seconds(30),
                utc(1972, 1, 8, 0, 30)
            ]
        );
    }

    #[test]
    fn dst_rules_continue_through_2099() {
        let fires = schedule("30 2 * * *", "Europe/Berlin").upcoming(utc(2099, 3, 28, 12, 0), 2);
        assert_eq!(fires, vec![utc(2099, 3, 29, 1, 0), utc(2099, 3, 30, 0, 30)]);
    }

    // next_after, upcoming and slot_at_or_before.

    #[test]
    fn next_after_is_strictly_after() {
        let daily = schedule("0 3 * * *", "UTC");
        assert_eq!(
            daily.next_after(utc(2026, 2, 1, 3, 0)),
            Some(utc(2026, 2, 2, 3, 0))
        );
        assert_eq!(
            daily.next_after(utc(2026, 2, 1, 3, 0) - TimeDelta::nanoseconds(1)),
            Some(utc(2026, 2, 1, 3, 0))
        );
        assert!(daily.upcoming(utc(2026, 2, 1, 3, 0), 0).is_empty());
    }

    #[test]
    fn slot_at_or_before_every_minute() {
        let every_minute = schedule("*/1 * * * *", "UTC");
        let t = utc(2026, 2, 1, 10, 21) + TimeDelta::seconds(30);
        assert_eq!(
            every_minute.slot_at_or_before(t),
            Some(utc(2026, 2, 1, 10, 21))
        );
        assert_eq!(
            every_minute.slot_at_or_before(utc(2026, 2, 1, 10, 21)),
            Some(utc(2026, 2, 1, 10, 21))
        );
    }

    #[test]
    fn slot_at_or_before_daily() {
        let daily = schedule("0 2 * * *", "UTC");
        assert_eq!(
            daily.slot_at_or_before(utc(2026, 1, 4, 5, 0)),
            Some(utc(2026, 1, 4, 2, 0))
        );
        assert_eq!(
            daily.slot_at_or_before(utc(2026, 1, 4, 1, 59)),
            Some(utc(2026, 1, 3, 2, 0))
        );
        assert_eq!(
            daily.slot_at_or_before(utc(2026, 1, 4, 2, 0)),
            Some(utc(2026, 1, 4, 2, 0))
        );
    }

    #[test]
    fn slot_at_or_before_across_switches() {
        let daily = schedule("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            daily.slot_at_or_before(utc(2026, 3, 29, 1, 30)),
            Some(utc(2026, 3, 29, 1, 0))
        );
        assert_eq!(
            daily.slot_at_or_before(utc(2026, 3, 29, 0, 59)),
            Some(utc(2026, 3, 28, 1, 30))
        );
        assert_eq!(
            daily.slot_at_or_before(utc(2026, 10, 25, 1, 45)),
            Some(utc(2026, 10, 25, 0, 30))
        );

        let hourly = schedule("30 * * * *", "Europe/Berlin");
        assert_eq!(
            hourly.slot_at_or_before(utc(2026, 10, 25, 1, 45)),
            Some(utc(2026, 10, 25, 1, 30))
        );
        assert_eq!(
            hourly.slot_at_or_before(utc(2026, 3, 29, 1, 15)),
            Some(utc(2026, 3, 29, 0, 30))
        );
    }

    #[test]
    fn slot_at_or_before_agrees_with_next_after() {
        let cases = [
            ("30 2 * * *", "Europe/Berlin"),
            ("*/15 2 * * *", "Europe/Berlin"),
            ("0 * * * *", "Europe/Berlin"),
            ("*/20 1 * * *", "America/New_York"),
            ("0 0 * * *", "America/Santiago"),
        ];
        let windows = [
            utc(2026, 3, 6, 0, 0),
            utc(2026, 3, 27, 0, 0),
            utc(2026, 9, 4, 0, 0),
            utc(2026, 10, 23, 0, 0),
        ];
        for (expr, tz) in cases {
            let schedule = schedule(expr, tz);
            for window_start in windows {
                let mut t = window_start;
                while t < window_start + TimeDelta::days(4) {
                    let slot = schedule.slot_at_or_before(t).unwrap();
                    assert!(slot <= t, "{expr} {tz} at {t}");
                    assert_eq!(
                        schedule.next_after(slot - TimeDelta::seconds(1)),
                        Some(slot),
                        "{expr} {tz} at {t}"
                    );
                    assert!(schedule.next_after(slot).unwrap() > t, "{expr} {tz} at {t}");
                    t += TimeDelta::minutes(7);
                }
            }
        }
    }

    #[test]
    fn every_minute_over_several_days() {
        let every_minute = schedule("*/1 * * * *", "Europe/Berlin");
        let start = utc(2026, 10, 23, 0, 0);
        let count = 5 * 24 * 60;
        let fires = every_minute.upcoming(start, count);
        assert_eq!(fires.len(), count);
        assert_eq!(fires[0], start + TimeDelta::minutes(1));
        for pair in fires.windows(2) {
            assert_eq!(pair[1] - pair[0], TimeDelta::minutes(1), "at {}", pair[0]);
        }
        assert_eq!(
            every_minute.next_after(fires[count - 1]),
            Some(fires[count - 1] + TimeDelta::minutes(1))
        );
    }

    #[test]
    fn leap_day_across_non_leap_century() {
        let leap_day = schedule("0 0 29 2 *", "UTC");
        assert_eq!(
            leap_day.next_after(utc(2096, 3, 1, 0, 0)),
            Some(utc(2104, 2, 29, 0, 0))
        );
        assert_eq!(
            leap_day.slot_at_or_before(utc(2104, 2, 28, 0, 0)),
            Some(utc(2096, 2, 29, 0, 0))
        );
    }

    #[test]
    fn leap_day_on_a_sunday() {
        // `*/7` selects 0 and 7, both Sunday, and starts with `*`, so the date must be
        // February 29th and a Sunday.
        let rare = schedule("0 0 29 2 */7", "UTC");
        assert_eq!(
            rare.next_after(utc(2088, 3, 1, 0, 0)),
            Some(utc(2128, 2, 29, 0, 0))
        );
        assert_eq!(
            rare.slot_at_or_before(utc(2128, 2, 28, 0, 0)),
            Some(utc(2088, 2, 29, 0, 0))
        );
    }

    #[test]
    fn rare_weekday_and_date_combination() {
        // `*/30` selects the 1st and 31st and starts with `*`, so the date must be February 1st
        // (February has no 31st) and a Monday.
        let rare = schedule("0 0 */30 2 mon", "UTC");
        let fires = rare.upcoming(utc(2026, 1, 1, 0, 0), 2);
        for fire in &fires {
            assert_eq!(
                (fire.month(), fire.day(), fire.weekday()),
                (2, 1, chrono::Weekday::Mon),
                "{fire}"
            );
        }
        assert_eq!(fires, vec![utc(2027, 2, 1, 0, 0), utc(2038, 2, 1, 0, 0)]);
    }

    // Display and serde.

    #[test]
    fn display_round_trips() {
        for text in [
            "0 3 * * 1",
            "@daily",
            "*/15 9-17 * JAN-jun MON-FRI",
            "0 0 13 * 5",
            "0   3 * * *",
        ] {
            let expr = CronExpr::parse(text).unwrap();
            assert_eq!(expr.to_string(), text);
            assert_eq!(CronExpr::parse(&expr.to_string()).unwrap(), expr);

            let schedule = Schedule::new(expr, chrono_tz::Europe::Berlin);
            assert_eq!(schedule.to_string(), text);
        }
    }

    #[test]
    fn deserialize_string_uses_utc() {
        let schedule: Schedule = serde_json::from_str(r#""0 3 * * 1""#).unwrap();
        assert_eq!(schedule.tz, Tz::UTC);
        assert_eq!(schedule.to_string(), "0 3 * * 1");
        assert_eq!(
            schedule.next_after(utc(2026, 2, 1, 12, 0)),
            Some(utc(2026, 2, 2, 3, 0))
        );
    }

    #[test]
    fn deserialize_map_with_time_zone() {
        let schedule: Schedule =
            serde_json::from_str(r#"{"expr": "30 2 * * *", "tz": "Europe/Berlin"}"#).unwrap();
        assert_eq!(schedule.tz, chrono_tz::Europe::Berlin);
        assert_eq!(
            schedule.next_after(utc(2026, 3, 28, 12, 0)),
            Some(utc(2026, 3, 29, 1, 0))
        );

        let without_tz: Schedule = serde_json::from_str(r#"{"expr": "@daily"}"#).unwrap();
        assert_eq!(without_tz.tz, Tz::UTC);
    }

    #[test]
    fn deserialize_reports_parse_errors() {
        let six_fields = serde_json::from_str::<Schedule>(r#""0 0 1 * * *""#)
            .unwrap_err()
            .to_string();
        assert!(
            six_fields.contains("CNPG's ScheduledBackup"),
            "{six_fields}"
        );

        let bad_tz =
            serde_json::from_str::<Schedule>(r#"{"expr": "@daily", "tz": "Mars/Olympus"}"#)
                .unwrap_err()
                .to_string();
        assert!(
            bad_tz.contains("unknown time zone `Mars/Olympus`"),
            "{bad_tz}"
        );

        let unknown_key = serde_json::from_str::<Schedule>(r#"{"expr": "@daily", "zone": "UTC"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            unknown_key.contains("unknown field `zone`"),
            "{unknown_key}"
        );

        let missing_expr = serde_json::from_str::<Schedule>(r#"{"tz": "UTC"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            missing_expr.contains("missing field `expr`"),
            "{missing_expr}"
        );

        let bad_expr = serde_json::from_str::<CronExpr>(r#""0 25 * * *""#)
            .unwrap_err()
            .to_string();
        assert!(bad_expr.contains("invalid hour field `25`"), "{bad_expr}");
    }

    #[test]
    fn serialize_round_trips() {
        let (schedule, _) = Schedule::parse("0 3 * * MON", "America/New_York").unwrap();
        let json = serde_json::to_string(&schedule).unwrap();
        assert_eq!(json, r#"{"expr":"0 3 * * MON","tz":"America/New_York"}"#);
        let back: Schedule = serde_json::from_str(&json).unwrap();
        assert_eq!(back, schedule);

        let expr_json = serde_json::to_string(&schedule.expr).unwrap();
        assert_eq!(expr_json, r#""0 3 * * MON""#);
    }
}
