//! Value types with their own text forms: [`ByteSize`] (`"64KiB"`) and durations (`"8h"`, see
//! [`duration_serde`]).

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// A number of bytes, written in configuration as `"64KiB"`, `"100MiB"`, `"10KB"`, `"512"` or a
/// plain integer, and printed in the largest unit that divides it exactly, so it round-trips.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(u64);

impl ByteSize {
    pub const fn new(bytes: u64) -> Self {
        Self(bytes)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Saturates on 32-bit targets, where such a size could not be buffered anyway.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    /// Units are case-insensitive: `B`, `KB`/`MB`/`GB`/`TB` (powers of 1000) and
    /// `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024); no unit means bytes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|size| Self(size.as_u64()))
            .map_err(|_| format!("invalid size {s:?}; write e.g. \"64KiB\", \"100MiB\" or \"512\""))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 8] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
            (1_000_000_000_000, "TB"),
            (1_000_000_000, "GB"),
            (1_000_000, "MB"),
            (1_000, "KB"),
        ];
        let bytes = self.0;
        match UNITS
            .iter()
            .find(|(factor, _)| bytes != 0 && bytes.is_multiple_of(*factor))
        {
            Some((factor, unit)) => write!(f, "{}{unit}", bytes / factor),
            None => write!(f, "{bytes}B"),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Durations as configuration text: `"500ms"`, `"30s"`, `"10m"`, `"8h"`, `"30d"`.
/// Use as `#[serde(with = "duration_serde")]` on a `Duration` field (serialize only).
pub mod duration_serde {
    use std::time::Duration;

    use serde::Serializer;

    /// For `Option<Duration>` fields: `None` is left out of the printed config.
    pub mod option {
        use std::time::Duration;

        use serde::Serializer;

        pub fn serialize<S: Serializer>(
            duration: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match duration {
                Some(d) => serializer.collect_str(&super::format(*d)),
                None => serializer.serialize_none(),
            }
        }
    }

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format(*duration))
    }

    /// Compact form, largest units first: `"8h"`, `"1h30m"`, `"30d"`, `"1s500ms"`, `"0s"`.
    /// Always accepted back by [`parse`].
    pub fn format(duration: Duration) -> String {
        const UNITS: [(u128, &str); 7] = [
            (86_400_000_000_000, "d"),
            (3_600_000_000_000, "h"),
            (60_000_000_000, "m"),
            (1_000_000_000, "s"),
            (1_000_000, "ms"),
            (1_000, "us"),
            (1, "ns"),
        ];
        let mut rest = duration.as_nanos();
        if rest == 0 {
            return "0s".to_owned();
        }
        let mut out = String::new();
        for (factor, unit) in UNITS {
            if rest >= factor {
                out.push_str(&format!("{}{unit}", rest / factor));
                rest %= factor;
            }
        }
        out
    }

    /// Parses humantime syntax (`"30s"`, `"10m"`, `"8h"`, `"30d"`, `"1h 30m"`). A bare number is
    /// refused: `30` could mean seconds or milliseconds, and guessing wrong fails silently.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        if text.parse::<f64>().is_ok() {
            return Err(format!("{text:?} has no unit; write a unit, e.g. \"30s\""));
        }
        humantime::parse_duration(text).map_err(|e| {
            format!("invalid duration {text:?} ({e}); write e.g. \"30s\", \"10m\", \"8h\"")
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn byte_size_parses_units_and_round_trips() {
        let cases = [
            ("64KiB", 64 << 10),
            ("100MiB", 100 << 20),
            ("1GiB", 1 << 30),
            ("512", 512),
            ("10KB", 10_000),
            ("2 mib", 2 << 20),
        ];
        for (text, bytes) in cases {
            let size: ByteSize = text.parse().unwrap();
            assert_eq!(size.as_u64(), bytes, "{text}");
        }
        for bytes in [
            0,
            1,
            512,
            1000,
            1024,
            1536,
            65_536,
            10_000,
            1 << 30,
            123_456_789,
        ] {
            let size = ByteSize::new(bytes);
            let back: ByteSize = size.to_string().parse().unwrap();
            assert_eq!(back, size, "{size}");
        }
        assert_eq!(ByteSize::new(64 << 10).to_string(), "64KiB");
        assert_eq!(ByteSize::new(10_000).to_string(), "10KB");
        assert_eq!(ByteSize::new(1536).to_string(), "1536B");
        assert_eq!(
            serde_json::to_string(&ByteSize::new(100 << 20)).unwrap(),
            r#""100MiB""#
        );
        assert!("lots".parse::<ByteSize>().is_err());
        assert!("10 parsecs".parse::<ByteSize>().is_err());
    }

    #[test]
    fn durations_print_compactly_and_parse_back() {
        let cases = [
            (Duration::from_secs(8 * 3600), "8h"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(30 * 86_400), "30d"),
            (Duration::from_secs(90 * 60), "1h30m"),
            (Duration::from_millis(1500), "1s500ms"),
            (Duration::ZERO, "0s"),
        ];
        for (duration, text) in cases {
            assert_eq!(duration_serde::format(duration), text);
            assert_eq!(duration_serde::parse(text), Ok(duration), "{text}");
        }
        assert_eq!(duration_serde::parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(
            duration_serde::parse("500ms"),
            Ok(Duration::from_millis(500))
        );
    }

    #[test]
    fn duration_without_unit_is_refused() {
        let err = duration_serde::parse("30").unwrap_err();
        assert!(err.contains("write a unit, e.g. \"30s\""), "{err}");
        assert!(duration_serde::parse("soon").is_err());
    }
}
