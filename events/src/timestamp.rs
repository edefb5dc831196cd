//! RFC 3339 UTC timestamps with exactly six fractional digits, the one time format
//! used in events, read models and API answers (it sorts as text).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::{format_description::well_known::Rfc3339, OffsetDateTime, UtcOffset};

/// A point in time, always UTC, rendered as `2026-11-27T17:24:34.123456Z`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
);

impl Timestamp {
    /// The current time, truncated to microseconds.
    pub fn now() -> Self {
        Self::from_datetime(OffsetDateTime::now_utc())
    }

    /// Wraps a date-time, converting it to UTC and truncating it to microseconds.
    pub fn from_datetime(dt: OffsetDateTime) -> Self {
        let dt = dt.to_offset(UtcOffset::UTC);
        let micros = dt.microsecond();
        Self(
            dt.replace_nanosecond(micros * 1000)
                .expect("valid nanosecond"),
        )
    }

    /// From Unix seconds (Meta's webhook timestamps).
    pub fn from_unix_seconds(secs: i64) -> Option<Self> {
        OffsetDateTime::from_unix_timestamp(secs).ok().map(Self)
    }

    /// From microseconds since the Unix epoch.
    pub fn from_unix_micros(micros: i64) -> Option<Self> {
        OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000)
            .ok()
            .map(Self)
    }

    /// Microseconds since the Unix epoch.
    pub fn unix_micros(&self) -> i64 {
        (self.0.unix_timestamp_nanos() / 1000) as i64
    }

    /// Parses any RFC 3339 time (any offset, any precision) into a UTC timestamp.
    pub fn parse(s: &str) -> Result<Self, time::error::Parse> {
        OffsetDateTime::parse(s, &Rfc3339).map(Self::from_datetime)
    }

    /// The wrapped date-time.
    pub fn as_datetime(&self) -> OffsetDateTime {
        self.0
    }

    /// The latest time that renders in RFC 3339 (9999-12-31T23:59:59.999999Z).
    pub fn max() -> Self {
        Self(time::macros::datetime!(9999-12-31 23:59:59.999999 UTC))
    }

    /// The earliest time that renders in RFC 3339 (0000-01-01T00:00:00Z).
    pub fn min() -> Self {
        Self(time::macros::datetime!(0000-01-01 0:00 UTC))
    }

    /// This time plus a duration, or `None` past [`Timestamp::max`].
    pub fn checked_plus(&self, d: std::time::Duration) -> Option<Self> {
        let d = time::Duration::try_from(d).ok()?;
        let t = self.0.checked_add(d)?;
        (t <= Self::max().0).then(|| Self::from_datetime(t))
    }

    /// This time plus a duration, saturating at [`Timestamp::max`] (never panics).
    pub fn plus(&self, d: std::time::Duration) -> Self {
        self.checked_plus(d).unwrap_or_else(Self::max)
    }

    /// This time minus a duration, saturating at [`Timestamp::min`] (never panics).
    pub fn minus(&self, d: std::time::Duration) -> Self {
        time::Duration::try_from(d)
            .ok()
            .and_then(|d| self.0.checked_sub(d))
            .filter(|t| *t >= Self::min().0)
            .map_or_else(Self::min, Self::from_datetime)
    }

    /// How long after `earlier` this time is (zero when it is not after it).
    pub fn since(&self, earlier: Timestamp) -> std::time::Duration {
        std::time::Duration::try_from(self.0 - earlier.0).unwrap_or_default()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.format(FORMAT).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339 UTC with microseconds, e.g. 2026-11-27T17:24:34.123456Z"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_utc_with_six_digits() {
        let t = Timestamp::parse("2026-01-02T03:04:05.1+02:00").unwrap();
        assert_eq!(t.to_string(), "2026-01-02T01:04:05.100000Z");
        assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
        let m = Timestamp::from_unix_micros(t.unix_micros()).unwrap();
        assert_eq!(m, t);
    }

    #[test]
    fn arithmetic_saturates_instead_of_panicking() {
        let huge = std::time::Duration::from_secs(999_999_999 * 86_400);
        let now = Timestamp::now();
        assert_eq!(now.plus(huge), Timestamp::max());
        assert_eq!(now.checked_plus(huge), None);
        assert_eq!(now.minus(huge), Timestamp::min());
        assert_eq!(Timestamp::max().to_string(), "9999-12-31T23:59:59.999999Z");
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(now.plus(day).minus(day), now);
    }
}
