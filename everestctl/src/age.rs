//! Ages as people write and read them: `90s`, `30m`, `1h`, `2d`, or several at once (`1h30m`).

use std::fmt;
use std::str::FromStr;

/// A span of whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Age(u64);

impl Age {
    /// `seconds` seconds.
    pub const fn from_secs(seconds: u64) -> Self {
        Self(seconds)
    }

    /// The span in seconds.
    pub const fn as_secs(self) -> u64 {
        self.0
    }
}

impl FromStr for Age {
    type Err = String;

    /// `0`, or numbers each followed by `s`, `m`, `h` or `d`.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not an age: write e.g. 90s, 30m, 1h, 2d or 1h30m");
        if text == "0" {
            return Ok(Self(0));
        }
        let mut total: u64 = 0;
        let mut digits = String::new();
        for c in text.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => return Err(bad()),
            };
            let n: u64 = digits.parse().map_err(|_| bad())?;
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(bad)?;
            digits.clear();
        }
        if !digits.is_empty() || text.is_empty() {
            return Err(bad());
        }
        Ok(Self(total))
    }
}

/// At most the two largest units, enough to judge an age at a glance: `3d4h`, `2h5m`, `5m10s`,
/// `42s`; a zero second unit is left out (`1h`, `2d`).
impl fmt::Display for Age {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
        let (first, second) = if d > 0 {
            ((d, 'd'), (h, 'h'))
        } else if h > 0 {
            ((h, 'h'), (m, 'm'))
        } else if m > 0 {
            ((m, 'm'), (sec, 's'))
        } else {
            return write!(f, "{sec}s");
        };
        write!(f, "{}{}", first.0, first.1)?;
        if second.0 > 0 {
            write!(f, "{}{}", second.0, second.1)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_people_write() {
        for (text, secs) in [
            ("0", 0),
            ("0s", 0),
            ("90s", 90),
            ("30m", 1800),
            ("1h", 3600),
            ("2d", 172_800),
            ("1h30m", 5400),
        ] {
            assert_eq!(text.parse::<Age>(), Ok(Age::from_secs(secs)), "{text}");
        }
        for bad in ["", "1", "h", "1x", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(bad.parse::<Age>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shows_the_two_largest_units() {
        for (secs, text) in [
            (42, "42s"),
            (310, "5m10s"),
            (7500, "2h5m"),
            (273_600, "3d4h"),
            (0, "0s"),
            (3600, "1h"),
            (172_800, "2d"),
            (120, "2m"),
        ] {
            assert_eq!(Age::from_secs(secs).to_string(), text);
        }
    }
}
