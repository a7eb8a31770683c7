//! PostgreSQL WAL segment names, LSNs and the object keys that barman-cloud archives WAL under.
//!
//! A WAL segment file name is 24 upper-case hexadecimal digits: timeline (8), log id (8) and
//! segment within the log id (8). A log id covers 4 GiB of WAL, so it contains
//! `0x1_0000_0000 / segment size` segments: 256 for the default 16 MiB segments.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Errors from parsing WAL segment names, LSNs, segment sizes and WAL object keys.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WalError {
    #[error(
        "invalid WAL segment name {name:?}: expected 24 upper-case hexadecimal digits \
         (timeline, log id, segment), such as 000000010000000000000003"
    )]
    InvalidSegmentName { name: String },

    #[error("invalid WAL segment name {name:?}: timeline 0 does not exist, timelines start at 1")]
    TimelineZero { name: String },

    #[error(
        "invalid WAL segment size {bytes} bytes: PostgreSQL requires a power of two \
         from 1 MiB (1048576) to 1 GiB (1073741824)"
    )]
    InvalidSegmentSize { bytes: u64 },

    #[error(
        "invalid LSN {input:?}: expected two hexadecimal numbers of 1 to 8 digits \
         separated by '/', such as 0/3000028"
    )]
    InvalidLsn { input: String },

    #[error("object key {key:?} is not a barman-cloud WAL archive key: {reason}")]
    InvalidObjectKey { key: String, reason: String },
}

/// Size of one WAL segment file in bytes, fixed for a cluster by `initdb --wal-segsize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct SegmentSize(u64);

impl SegmentSize {
    /// The PostgreSQL default of 16 MiB, which barman also assumes when `xlog_segment_size`
    /// is absent from backup.info.
    pub const DEFAULT: SegmentSize = SegmentSize(16 * 1024 * 1024);

    const MIN_BYTES: u64 = 1024 * 1024;
    const MAX_BYTES: u64 = 1024 * 1024 * 1024;

    /// Validates a segment size: PostgreSQL 11 and later accept a power of two from 1 MiB to
    /// 1 GiB.
    pub fn new(bytes: u64) -> Result<SegmentSize, WalError> {
        let in_range = (Self::MIN_BYTES..=Self::MAX_BYTES).contains(&bytes);
        if !in_range || !bytes.is_power_of_two() {
            return Err(WalError::InvalidSegmentSize { bytes });
        }
        Ok(SegmentSize(bytes))
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Number of segments in one log id: 256 for 16 MiB segments.
    pub fn segments_per_log_id(self) -> u64 {
        0x1_0000_0000 / self.0
    }
}

impl Default for SegmentSize {
    fn default() -> Self {
        SegmentSize::DEFAULT
    }
}

impl fmt::Display for SegmentSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

/// A WAL location (log sequence number): a byte position in the WAL stream.
///
/// The text form is PostgreSQL's `%X/%X`: the upper and lower 32 bits in hexadecimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses `0/3000028` or `A/3C000028`. Both halves take 1 to 8 hexadecimal digits in
    /// either case, as PostgreSQL's `pg_lsn` input does.
    pub fn parse(input: &str) -> Result<Lsn, WalError> {
        let invalid = || WalError::InvalidLsn {
            input: input.to_string(),
        };
        let (high, low) = input.split_once('/').ok_or_else(invalid)?;
        let high = parse_hex_u32(high, 1..=8).ok_or_else(invalid)?;
        let low = parse_hex_u32(low, 1..=8).ok_or_else(invalid)?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }

    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Number of the segment containing this LSN, counted from the start of the WAL stream
    /// (PostgreSQL's `XLByteToSeg`).
    pub fn segment_number(self, segment_size: SegmentSize) -> u64 {
        self.0 / segment_size.bytes()
    }

    /// Segment on `timeline` that contains the byte at this LSN (PostgreSQL's `XLByteToSeg`).
    ///
    /// PostgreSQL names a backup's stop segment with `XLByteToPrevSeg` instead, which returns
    /// the previous segment when the stop LSN falls exactly on a segment boundary.
    pub fn segment(self, timeline: u32, segment_size: SegmentSize) -> WalSegment {
        let number = self.segment_number(segment_size);
        // The LSN is below 2^64, so the log id (number / segments per log id) fits in 32 bits.
        WalSegment::from_segment_number(timeline, number, segment_size)
            .expect("a u64 LSN always maps to a log id below 2^32")
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = WalError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Lsn::parse(input)
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Lsn::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A WAL segment: timeline, log id and segment within the log id.
///
/// Ordering compares timeline first, then log id and segment, which is the order of the file
/// names. Segments on different timelines therefore do not sort by WAL position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalSegment {
    pub timeline: u32,
    pub log: u32,
    pub seg: u32,
}

impl WalSegment {
    pub fn new(timeline: u32, log: u32, seg: u32) -> WalSegment {
        WalSegment { timeline, log, seg }
    }

    /// Parses a 24-digit segment file name such as `000000010000000000000003`.
    ///
    /// Lower-case digits are rejected because PostgreSQL only writes and requests upper-case
    /// names, so an object with a lower-case name is never restored.
    pub fn parse(name: &str) -> Result<WalSegment, WalError> {
        let invalid = || WalError::InvalidSegmentName {
            name: name.to_string(),
        };
        if name.len() != 24 || !name.bytes().all(is_upper_hex_digit) {
            return Err(invalid());
        }
        let timeline = parse_hex_u32(&name[0..8], 8..=8).ok_or_else(invalid)?;
        let log = parse_hex_u32(&name[8..16], 8..=8).ok_or_else(invalid)?;
        let seg = parse_hex_u32(&name[16..24], 8..=8).ok_or_else(invalid)?;
        if timeline == 0 {
            return Err(WalError::TimelineZero {
                name: name.to_string(),
            });
        }
        Ok(WalSegment { timeline, log, seg })
    }

    /// Position of this segment in the WAL stream, counted in segments from LSN 0.
    ///
    /// Returns `None` when `seg` is not below the number of segments per log id, because no
    /// such file exists with this segment size.
    pub fn segment_number(&self, segment_size: SegmentSize) -> Option<u64> {
        let per_log_id = segment_size.segments_per_log_id();
        let seg = u64::from(self.seg);
        if seg >= per_log_id {
            return None;
        }
        Some(u64::from(self.log) * per_log_id + seg)
    }

    /// Builds the segment at position `number` (see [`WalSegment::segment_number`]).
    ///
    /// Returns `None` when the position lies beyond the 64-bit WAL address space.
    pub fn from_segment_number(
        timeline: u32,
        number: u64,
        segment_size: SegmentSize,
    ) -> Option<WalSegment> {
        let per_log_id = segment_size.segments_per_log_id();
        let log = u32::try_from(number / per_log_id).ok()?;
        let seg = u32::try_from(number % per_log_id).ok()?;
        Some(WalSegment { timeline, log, seg })
    }

    /// Returns the segment after this one on the same timeline, moving to the next log id
    /// after its last segment.
    ///
    /// Returns `None` when `seg` is out of range for `segment_size` or this is the last segment
    /// of the WAL address space.
    pub fn next(&self, segment_size: SegmentSize) -> Option<WalSegment> {
        let number = self.segment_number(segment_size)?;
        WalSegment::from_segment_number(self.timeline, number.checked_add(1)?, segment_size)
    }

    /// LSN of the first byte of this segment, or `None` when `seg` is out of range for
    /// `segment_size`.
    pub fn start_lsn(&self, segment_size: SegmentSize) -> Option<Lsn> {
        let number = self.segment_number(segment_size)?;
        Some(Lsn(number * segment_size.bytes()))
    }

    /// Name of the barman-cloud folder that contains this segment: timeline and log id.
    pub fn archive_folder(&self) -> String {
        format!("{:08X}{:08X}", self.timeline, self.log)
    }
}

impl fmt::Display for WalSegment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}{:08X}{:08X}", self.timeline, self.log, self.seg)
    }
}

impl FromStr for WalSegment {
    type Err = WalError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        WalSegment::parse(name)
    }
}

impl Serialize for WalSegment {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WalSegment {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        WalSegment::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Compression that barman-cloud-wal-archive applied to an archived file, given by the
/// extension it appended to the file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Bzip2,
    Xz,
    Snappy,
    Zstd,
    Lz4,
}

impl Compression {
    pub const ALL: [Compression; 6] = [
        Compression::Gzip,
        Compression::Bzip2,
        Compression::Xz,
        Compression::Snappy,
        Compression::Zstd,
        Compression::Lz4,
    ];

    /// File name extension without the dot, such as `gz`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Gzip => "gz",
            Compression::Bzip2 => "bz2",
            Compression::Xz => "xz",
            Compression::Snappy => "snappy",
            Compression::Zstd => "zst",
            Compression::Lz4 => "lz4",
        }
    }

    pub fn from_extension(extension: &str) -> Option<Compression> {
        Compression::ALL
            .into_iter()
            .find(|compression| compression.extension() == extension)
    }
}

/// A file that PostgreSQL hands to `archive_command`, identified by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WalFile {
    /// A complete WAL segment, `<24 hex>`.
    Segment { segment: WalSegment },
    /// A segment that was cut short, `<24 hex>.partial`. A promoted standby archives the last
    /// segment of the old timeline this way. Recovery never requests `.partial` files.
    Partial { segment: WalSegment },
    /// A backup history file, `<24 hex>.<8 hex>.backup`, written when a base backup ends.
    /// `offset` is the backup's start position within `segment`.
    BackupHistory { segment: WalSegment, offset: u32 },
    /// A timeline history file, `<8 hex>.history`, written when `timeline` was created.
    TimelineHistory { timeline: u32 },
}

impl WalFile {
    /// Parses a file name without a compression extension.
    pub fn parse(name: &str) -> Result<WalFile, WalError> {
        let invalid = |reason: &str| WalError::InvalidObjectKey {
            key: name.to_string(),
            reason: reason.to_string(),
        };

        if let Some(timeline) = name.strip_suffix(".history") {
            if timeline.len() != 8 || !timeline.bytes().all(is_upper_hex_digit) {
                return Err(invalid(
                    "a timeline history file name is 8 upper-case hexadecimal digits and .history",
                ));
            }
            let timeline = parse_hex_u32(timeline, 8..=8).unwrap_or_default();
            if timeline == 0 {
                return Err(invalid("timeline 0 does not exist, timelines start at 1"));
            }
            return Ok(WalFile::TimelineHistory { timeline });
        }

        if let Some(segment) = name.strip_suffix(".partial") {
            let segment = WalSegment::parse(segment)?;
            return Ok(WalFile::Partial { segment });
        }

        if let Some(rest) = name.strip_suffix(".backup") {
            let Some((segment, offset)) = rest.split_once('.') else {
                return Err(invalid(
                    "a backup history file name is <24 hex digits>.<8 hex digits>.backup",
                ));
            };
            let segment = WalSegment::parse(segment)?;
            let offset = if offset.len() == 8 && offset.bytes().all(is_upper_hex_digit) {
                parse_hex_u32(offset, 8..=8)
            } else {
                None
            };
            let Some(offset) = offset else {
                return Err(invalid(
                    "the offset in a backup history file name is 8 upper-case hexadecimal digits",
                ));
            };
            return Ok(WalFile::BackupHistory { segment, offset });
        }

        let segment = WalSegment::parse(name)?;
        Ok(WalFile::Segment { segment })
    }

    /// Timeline of the file.
    pub fn timeline(&self) -> u32 {
        match self {
            WalFile::Segment { segment }
            | WalFile::Partial { segment }
            | WalFile::BackupHistory { segment, .. } => segment.timeline,
            WalFile::TimelineHistory { timeline } => *timeline,
        }
    }
}

impl fmt::Display for WalFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFile::Segment { segment } => write!(f, "{segment}"),
            WalFile::Partial { segment } => write!(f, "{segment}.partial"),
            WalFile::BackupHistory { segment, offset } => {
                write!(f, "{segment}.{offset:08X}.backup")
            }
            WalFile::TimelineHistory { timeline } => write!(f, "{timeline:08X}.history"),
        }
    }
}

/// An archived WAL file as named by its barman-cloud object key.
///
/// barman-cloud-wal-archive stores WAL under `<destinationPath>/<serverName>/wals/`: segments,
/// `.partial` and `.backup` files in a folder named after their timeline and log id, and
/// timeline history files directly in `wals/`. A compression extension follows the file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct WalObjectName {
    pub file: WalFile,
    pub compression: Option<Compression>,
}

impl WalObjectName {
    /// Parses an object key that ends in `wals/<folder>/<file>` or `wals/<timeline>.history`.
    ///
    /// Anything before `wals/` (destination path prefix and server name) is ignored. A segment
    /// in a folder that does not match its timeline and log id is rejected, because
    /// barman-cloud-wal-restore would never look for it there.
    pub fn parse_key(key: &str) -> Result<WalObjectName, WalError> {
        let invalid = |reason: String| WalError::InvalidObjectKey {
            key: key.to_string(),
            reason,
        };

        let mut components = key.rsplit('/');
        let file_name = components.next().unwrap_or_default();
        let name = WalObjectName::parse_file_name(file_name).map_err(|error| match error {
            WalError::InvalidObjectKey { reason, .. } => invalid(reason),
            other => invalid(other.to_string()),
        })?;

        let folder = components.next();
        match name.file {
            WalFile::TimelineHistory { .. } => {
                if folder != Some("wals") {
                    return Err(invalid(
                        "a timeline history file must be directly under wals/".to_string(),
                    ));
                }
            }
            WalFile::Segment { segment }
            | WalFile::Partial { segment }
            | WalFile::BackupHistory { segment, .. } => {
                let expected = segment.archive_folder();
                if folder != Some(expected.as_str()) {
                    return Err(invalid(format!(
                        "{} must be in the folder wals/{expected}/",
                        name.file
                    )));
                }
                if components.next() != Some("wals") {
                    return Err(invalid(format!(
                        "the folder {expected} must be under wals/"
                    )));
                }
            }
        }
        Ok(name)
    }

    /// Parses a file name with an optional compression extension, such as
    /// `000000010000000000000003.gz`.
    pub fn parse_file_name(file_name: &str) -> Result<WalObjectName, WalError> {
        let (base, compression) = match file_name.rsplit_once('.') {
            Some((base, extension)) => match Compression::from_extension(extension) {
                Some(compression) => (base, Some(compression)),
                None => (file_name, None),
            },
            None => (file_name, None),
        };
        let file = WalFile::parse(base).map_err(|error| WalError::InvalidObjectKey {
            key: file_name.to_string(),
            reason: match error {
                WalError::InvalidObjectKey { reason, .. } => reason,
                other => other.to_string(),
            },
        })?;
        Ok(WalObjectName { file, compression })
    }

    /// Key of the object relative to `<destinationPath>/<serverName>/`.
    pub fn relative_key(&self) -> String {
        let folder = match self.file {
            WalFile::TimelineHistory { .. } => String::new(),
            WalFile::Segment { segment }
            | WalFile::Partial { segment }
            | WalFile::BackupHistory { segment, .. } => format!("{}/", segment.archive_folder()),
        };
        match self.compression {
            Some(compression) => format!("wals/{folder}{}.{}", self.file, compression.extension()),
            None => format!("wals/{folder}{}", self.file),
        }
    }
}

fn is_upper_hex_digit(byte: u8) -> bool {
    byte.is_ascii_digit() || (b'A'..=b'F').contains(&byte)
}

/// Parses hexadecimal digits of either case whose count lies in `digits`.
fn parse_hex_u32(text: &str, digits: std::ops::RangeInclusive<usize>) -> Option<u32> {
    if !digits.contains(&text.len()) || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn size(bytes: u64) -> SegmentSize {
        SegmentSize::new(bytes).unwrap()
    }

    #[test]
    fn segment_name_parse_valid() {
        let cases = [
            ("000000010000000000000003", WalSegment::new(1, 0, 3)),
            ("00000002000000000000000A", WalSegment::new(2, 0, 0x0A)),
            ("000000010000000A0000003C", WalSegment::new(1, 0x0A, 0x3C)),
            (
                "FFFFFFFFFFFFFFFFFFFFFFFF",
                WalSegment::new(u32::MAX, u32::MAX, u32::MAX),
            ),
        ];
        for (name, expected) in cases {
            let parsed = WalSegment::parse(name).unwrap();
            assert_eq!(parsed, expected, "{name}");
            assert_eq!(parsed.to_string(), name, "round trip of {name}");
        }
    }

    #[test]
    fn segment_name_parse_invalid() {
        let cases = [
            ("00000001000000000000003", "invalid WAL segment name"),
            ("0000000100000000000000033", "invalid WAL segment name"),
            ("00000001000000000000000a", "upper-case"),
            ("0000000100000000000000G3", "invalid WAL segment name"),
            ("+00000010000000000000003", "invalid WAL segment name"),
            ("000000000000000000000003", "timeline 0 does not exist"),
            ("", "invalid WAL segment name"),
        ];
        for (name, message) in cases {
            let error = WalSegment::parse(name).unwrap_err();
            assert!(
                error.to_string().contains(message),
                "{name}: {error} should contain {message:?}"
            );
            assert!(
                error.to_string().contains(&format!("{name:?}")),
                "{error} names input"
            );
        }
    }

    #[test]
    fn segment_size_validation() {
        assert_eq!(SegmentSize::DEFAULT.segments_per_log_id(), 256);
        assert_eq!(size(MIB).segments_per_log_id(), 4096);
        assert_eq!(size(64 * MIB).segments_per_log_id(), 64);
        assert_eq!(size(1024 * MIB).segments_per_log_id(), 4);
        for bytes in [0, 512 * 1024, 3 * MIB, 2048 * MIB] {
            assert_eq!(
                SegmentSize::new(bytes),
                Err(WalError::InvalidSegmentSize { bytes }),
                "{bytes}"
            );
        }
    }

    #[test]
    fn segment_next_rolls_over_log_id() {
        let default = SegmentSize::DEFAULT;
        let cases = [
            (
                WalSegment::new(1, 0, 3),
                default,
                Some(WalSegment::new(1, 0, 4)),
            ),
            (
                WalSegment::new(1, 0, 0xFF),
                default,
                Some(WalSegment::new(1, 1, 0)),
            ),
            (
                WalSegment::new(2, 7, 0x3F),
                size(64 * MIB),
                Some(WalSegment::new(2, 8, 0)),
            ),
            (
                WalSegment::new(1, 0, 0x3F),
                default,
                Some(WalSegment::new(1, 0, 0x40)),
            ),
            // 0x100 does not exist with 16 MiB segments.
            (WalSegment::new(1, 0, 0x100), default, None),
            (WalSegment::new(1, u32::MAX, 0xFF), default, None),
        ];
        for (segment, segment_size, expected) in cases {
            assert_eq!(
                segment.next(segment_size),
                expected,
                "{segment} with {segment_size}"
            );
        }
    }

    #[test]
    fn segment_number_round_trip() {
        let default = SegmentSize::DEFAULT;
        let segment = WalSegment::new(1, 0x0A, 0x3C);
        let number = segment.segment_number(default).unwrap();
        assert_eq!(number, 0x0A * 256 + 0x3C);
        assert_eq!(
            WalSegment::from_segment_number(1, number, default),
            Some(segment)
        );
        assert_eq!(segment.start_lsn(default), Some(Lsn(0x0A_3C00_0000)));
    }

    #[test]
    fn segment_order_is_file_name_order() {
        let mut segments = [
            WalSegment::new(2, 0, 1),
            WalSegment::new(1, 1, 0),
            WalSegment::new(1, 0, 0xFF),
            WalSegment::new(1, 0, 3),
        ];
        segments.sort();
        let names: Vec<String> = segments.iter().map(ToString::to_string).collect();
        let mut sorted_names = names.clone();
        sorted_names.sort();
        assert_eq!(names, sorted_names);
        assert_eq!(segments[0], WalSegment::new(1, 0, 3));
        assert_eq!(segments[3], WalSegment::new(2, 0, 1));
    }

    #[test]
    fn lsn_parse_and_segment() {
        let default = SegmentSize::DEFAULT;
        let cases = [
            ("0/3000028", 0x300_0028_u64, "000000010000000000000003"),
            ("0/3000138", 0x300_0138, "000000010000000000000003"),
            ("A/3C000028", 0xA_3C00_0028, "000000010000000A0000003C"),
            ("a/3c000028", 0xA_3C00_0028, "000000010000000A0000003C"),
            ("0/50000B0", 0x500_00B0, "000000010000000000000005"),
            ("0/6000000", 0x600_0000, "000000010000000000000006"),
            ("FFFFFFFF/FFFFFFFF", u64::MAX, "00000001FFFFFFFF000000FF"),
        ];
        for (text, value, segment) in cases {
            let lsn = Lsn::parse(text).unwrap();
            assert_eq!(lsn.as_u64(), value, "{text}");
            assert_eq!(lsn.to_string(), text.to_uppercase(), "display of {text}");
            assert_eq!(
                lsn.segment(1, default).to_string(),
                segment,
                "segment of {text}"
            );
        }
        let lsn = Lsn::parse("A/3C000028").unwrap();
        assert_eq!(
            lsn.segment(1, size(64 * MIB)).to_string(),
            "000000010000000A0000000F"
        );
    }

    #[test]
    fn lsn_parse_invalid() {
        for text in [
            "",
            "0",
            "0/",
            "/3000028",
            "0/3000028/1",
            "0/123456789",
            "G/1",
            " 0/1",
            "0x0/1",
        ] {
            let error = Lsn::parse(text).unwrap_err();
            assert_eq!(
                error,
                WalError::InvalidLsn {
                    input: text.to_string()
                },
                "{text}"
            );
        }
    }

    #[test]
    fn object_key_parse_valid() {
        let segment = WalSegment::new(1, 0, 3);
        let cases = [
            (
                "wals/0000000100000000/000000010000000000000003",
                WalFile::Segment { segment },
                None,
            ),
            (
                "bucket-prefix/cloud/wals/0000000100000000/000000010000000000000003.gz",
                WalFile::Segment { segment },
                Some(Compression::Gzip),
            ),
            (
                "p/s/wals/0000000100000000/000000010000000000000003.bz2",
                WalFile::Segment { segment },
                Some(Compression::Bzip2),
            ),
            (
                "p/s/wals/0000000100000000/000000010000000000000003.xz",
                WalFile::Segment { segment },
                Some(Compression::Xz),
            ),
            (
                "p/s/wals/0000000100000000/000000010000000000000003.snappy",
                WalFile::Segment { segment },
                Some(Compression::Snappy),
            ),
            (
                "p/s/wals/0000000100000000/000000010000000000000003.zst",
                WalFile::Segment { segment },
                Some(Compression::Zstd),
            ),
            (
                "p/s/wals/0000000100000000/000000010000000000000003.lz4",
                WalFile::Segment { segment },
                Some(Compression::Lz4),
            ),
            (
                "p/s/wals/0000000100000000/000000010000000000000003.00000028.backup",
                WalFile::BackupHistory {
                    segment,
                    offset: 0x28,
                },
                None,
            ),
            (
                "p/s/wals/0000000100000000/000000010000000000000003.00000028.backup.gz",
                WalFile::BackupHistory {
                    segment,
                    offset: 0x28,
                },
                Some(Compression::Gzip),
            ),
            (
                "p/s/wals/0000000100000000/000000010000000000000003.partial",
                WalFile::Partial { segment },
                None,
            ),
            (
                "p/s/wals/00000002.history",
                WalFile::TimelineHistory { timeline: 2 },
                None,
            ),
            (
                "p/s/wals/0000000A.history.zst",
                WalFile::TimelineHistory { timeline: 10 },
                Some(Compression::Zstd),
            ),
        ];
        for (key, file, compression) in cases {
            let name = WalObjectName::parse_key(key).unwrap();
            assert_eq!(name.file, file, "{key}");
            assert_eq!(name.compression, compression, "{key}");
            assert!(
                key.ends_with(&name.relative_key()),
                "{key} ends with {}",
                name.relative_key()
            );
        }
    }

    #[test]
    fn object_key_parse_invalid() {
        let cases = [
            (
                "p/s/wals/0000000100000000/000000010000000000000003.rar",
                "invalid WAL segment name",
            ),
            (
                "p/s/wals/0000000100000001/000000010000000000000003",
                "wals/0000000100000000/",
            ),
            (
                "p/s/wals/000000010000000000000003",
                "wals/0000000100000000/",
            ),
            (
                "p/s/other/0000000100000000/000000010000000000000003",
                "under wals/",
            ),
            (
                "p/s/wals/0000000100000000/00000002.history",
                "directly under wals/",
            ),
            ("p/s/wals/2.history", "8 upper-case hexadecimal digits"),
            ("p/s/wals/00000000.history", "timeline 0 does not exist"),
            (
                "p/s/wals/0000000100000000/000000010000000000000003.28.backup",
                "offset",
            ),
            ("p/s/wals/0000000100000000/", "invalid WAL segment name"),
            (
                "p/s/wals/0000000100000000/readme.txt",
                "invalid WAL segment name",
            ),
        ];
        for (key, reason) in cases {
            let error = WalObjectName::parse_key(key).unwrap_err();
            let message = error.to_string();
            assert!(
                message.contains(&format!("{key:?}")),
                "{message} names the key"
            );
            assert!(
                message.contains(reason),
                "{key}: {message} should contain {reason:?}"
            );
        }
    }

    #[test]
    fn serde_uses_text_forms() {
        let segment = WalSegment::new(1, 0, 3);
        assert_eq!(
            serde_json::to_string(&segment).unwrap(),
            "\"000000010000000000000003\""
        );
        assert_eq!(
            serde_json::to_string(&Lsn(0x300_0028)).unwrap(),
            "\"0/3000028\""
        );
        let parsed: WalSegment = serde_json::from_str("\"000000020000000000000005\"").unwrap();
        assert_eq!(parsed, WalSegment::new(2, 0, 5));
    }
}
