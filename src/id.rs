//! Typed identifiers: content ids (SHA-256) and time-ordered run ids.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// An id string that is not of the expected form.
#[derive(Debug, thiserror::Error)]
#[error("invalid {kind} id {value:?}: {reason}")]
pub struct ParseIdError {
    kind: &'static str,
    value: String,
    reason: &'static str,
}

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Hashes `data` with SHA-256.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn parse_hex(kind: &'static str, s: &str) -> Result<Self, ParseIdError> {
        let err = |reason| ParseIdError { kind, value: s.to_owned(), reason };
        if s.len() != 64 {
            return Err(err("expected 64 hexadecimal digits"));
        }
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(err("expected lowercase hexadecimal digits"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| err("expected hexadecimal digits"))?;
        Ok(Self(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..12])
    }
}

/// Incremental SHA-256 hashing that yields a [`Digest`].
#[derive(Clone, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    pub fn new() -> Self {
        Self(Sha256::new())
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

macro_rules! digest_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Digest);

        impl $name {
            /// Computes the id of `data`: its SHA-256.
            pub fn of(data: &[u8]) -> Self {
                Self(Digest::of(data))
            }

            pub fn to_hex(&self) -> String {
                self.0.to_hex()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($kind, ":{:?}"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, ParseIdError> {
                Digest::parse_hex($kind, s).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

digest_id!(
    /// A blob's id: the SHA-256 of its uncompressed content.
    BlobId,
    "blob"
);
digest_id!(
    /// A pack's id: the SHA-256 of the pack's bytes as stored.
    PackId,
    "pack"
);
digest_id!(
    /// An index file's id: the SHA-256 of its uncompressed JSON.
    IndexId,
    "index"
);

macro_rules! time_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Creates a new id for a run that starts at `at`.
            pub fn new(at: DateTime<Utc>) -> Self {
                let suffix: u32 = rand::thread_rng().gen();
                Self(format!("{}-{:08x}", at.format("%Y%m%dT%H%M%S%.3fZ"), suffix))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($kind, ":{}"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, ParseIdError> {
                parse_time_id($kind, s).map(|()| Self(s.to_owned()))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Checks the `YYYYMMDDTHHMMSS.mmmZ-xxxxxxxx` form shared by snapshot and
/// lock ids.
fn parse_time_id(kind: &'static str, s: &str) -> Result<(), ParseIdError> {
    let err = |reason| ParseIdError { kind, value: s.to_owned(), reason };
    let (time, suffix) = s
        .split_once('-')
        .ok_or_else(|| err("expected YYYYMMDDTHHMMSS.mmmZ-xxxxxxxx"))?;
    if time.len() != 20 {
        return Err(err("expected a UTC time YYYYMMDDTHHMMSS.mmmZ before the dash"));
    }
    chrono::NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%S%.3fZ")
        .map_err(|_| err("expected a UTC time YYYYMMDDTHHMMSS.mmmZ before the dash"))?;
    if suffix.len() != 8 || !suffix.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(err("expected 8 lowercase hexadecimal digits after the dash"));
    }
    Ok(())
}

time_id!(
    /// A snapshot's id: its UTC start time to the millisecond and a random
    /// suffix, so ids sort by start time.
    SnapshotId,
    "snapshot"
);
time_id!(
    /// A lock's id, of the same form as a snapshot id.
    LockId,
    "lock"
);
time_id!(
    /// A verification report's id, of the same form as a snapshot id: the
    /// run's start time, so reports sort by when they ran.
    ReportId,
    "report"
);

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn blob_id_round_trips_hex() {
        let id = BlobId::of(b"hello");
        let parsed: BlobId = id.to_hex().parse().unwrap();
        assert_eq!(parsed, id);
        assert_eq!(
            id.to_hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }

    #[test]
    fn blob_id_rejects_bad_hex() {
        assert!("abc".parse::<BlobId>().is_err());
        assert!("2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824"
            .parse::<BlobId>()
            .is_err());
        assert!("zz".repeat(32).parse::<BlobId>().is_err());
    }

    #[test]
    fn snapshot_ids_sort_by_time() {
        let a = SnapshotId::new(Utc.with_ymd_and_hms(2026, 1, 15, 6, 0, 4).unwrap());
        let b = SnapshotId::new(Utc.with_ymd_and_hms(2026, 1, 15, 6, 0, 4).unwrap() + chrono::Duration::milliseconds(1));
        assert!(a < b);
        assert!(a.as_str().starts_with("20260115T060004.000Z-"), "{a}");
        assert_eq!(a.as_str().parse::<SnapshotId>().unwrap(), a);
    }

    #[test]
    fn snapshot_id_rejects_other_forms() {
        for bad in ["latest", "20260115T060004.000Z", "20260115T060004.000Z-XYZ", "2026-01-15-abcdef01", "20260115T060004Z-abcdef01"] {
            assert!(bad.parse::<SnapshotId>().is_err(), "{bad} was accepted");
        }
    }
}
