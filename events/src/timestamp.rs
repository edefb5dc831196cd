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
        if let Some(t) = Self::parse_canonical(s) {
            return Ok(t);
        }
        OffsetDateTime::parse(s, &Rfc3339).map(Self::from_datetime)
    }

    /// The form this type renders (`2026-11-27T17:24:34.123456Z`), read digit by
    /// digit: what the log and the read models hold, read a million times in a
    /// replay. `None` for anything else (the general parser then decides).
    fn parse_canonical(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 27
            || b[4] != b'-'
            || b[7] != b'-'
            || b[10] != b'T'
            || b[13] != b':'
            || b[16] != b':'
            || b[19] != b'.'
            || b[26] != b'Z'
        {
            return None;
        }
        let num = |from: usize, to: usize| -> Option<u32> {
            b[from..to].iter().try_fold(0u32, |n, &c| {
                c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
            })
        };
        let month = time::Month::try_from(u8::try_from(num(5, 7)?).ok()?).ok()?;
        let date =
            time::Date::from_calendar_date(num(0, 4)? as i32, month, num(8, 10)? as u8).ok()?;
        let at = time::Time::from_hms_micro(
            num(11, 13)? as u8,
            num(14, 16)? as u8,
            num(17, 19)? as u8,
            num(20, 26)?,
        )
        .ok()?;
        Some(Self(time::PrimitiveDateTime::new(date, at).assume_utc()))
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
        let year = self.0.year();
        if !(0..=9999).contains(&year) {
            return f.write_str(&self.0.format(FORMAT).map_err(|_| fmt::Error)?);
        }
        // Digit by digit into a buffer: the general formatter allocates and reads
        // its format description for every timestamp a read model writes.
        let mut out = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |at: usize, width: usize, mut n: u32| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(0, 4, year as u32);
        put(5, 2, u32::from(u8::from(self.0.month())));
        put(8, 2, u32::from(self.0.day()));
        put(11, 2, u32::from(self.0.hour()));
        put(14, 2, u32::from(self.0.minute()));
        put(17, 2, u32::from(self.0.second()));
        put(20, 6, self.0.microsecond());
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
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
        /// Reads the text in place when the input lends it (no copy of it first).
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Timestamp, E> {
                Timestamp::parse(s).map_err(E::custom)
            }
        }
        d.deserialize_str(Text)
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
    fn the_canonical_form_reads_and_renders_as_the_general_parser_and_formatter_do() {
        let general = |s: &str| OffsetDateTime::parse(s, &Rfc3339).map(Timestamp::from_datetime);
        let general_render = |t: &Timestamp| t.0.format(FORMAT).unwrap();
        // Times across the range, every month's end, leap days, the day's edges.
        let mut micros = -62_167_219_200_000_000i64; // 0000-01-01
        let step = 7_919_777_123_457i64; // about 92 days, odd micros
        while micros < 253_402_300_799_999_999 {
            let t = Timestamp::from_unix_micros(micros).unwrap();
            let text = t.to_string();
            assert_eq!(text, general_render(&t));
            assert_eq!(Timestamp::parse_canonical(&text), Some(t), "{text}");
            micros += step;
        }
        for text in [
            "2024-02-29T23:59:59.999999Z",
            "2000-02-29T00:00:00.000000Z",
            "0000-01-01T00:00:00.000000Z",
            "9999-12-31T23:59:59.999999Z",
            "2026-12-31T12:00:00.000001Z",
        ] {
            let t = Timestamp::parse_canonical(text).unwrap();
            assert_eq!(t, general(text).unwrap());
            assert_eq!(t.to_string(), text);
        }
        // Not canonical, or not a time: left to the general parser.
        for text in [
            "2023-02-29T00:00:00.000000Z",
            "2026-13-01T00:00:00.000000Z",
            "2026-00-01T00:00:00.000000Z",
            "2026-04-31T00:00:00.000000Z",
            "2026-01-01T24:00:00.000000Z",
            "2026-01-01T23:60:00.000000Z",
            "2026-01-01T23:59:60.000000Z",
            "2026-01-01T00:00:00.000000+",
            "2026-01-01T00:00:00.00000aZ",
            "2026-01-01 00:00:00.000000Z",
            "+026-01-01T00:00:00.000000Z",
            "2026-01-01T00:00:00.0000000Z",
            "2026-01-01T00:00:00Z",
            "２０２6-01-01T00:00:00.00000Z",
        ] {
            assert_eq!(Timestamp::parse_canonical(text), None, "{text}");
        }
        assert!(Timestamp::parse("2023-02-29T00:00:00.000000Z").is_err());
        assert_eq!(
            Timestamp::parse("2026-01-01T00:00:00Z")
                .unwrap()
                .to_string(),
            "2026-01-01T00:00:00.000000Z"
        );
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
