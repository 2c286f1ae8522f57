//! A rate limit as settings spell it: `N/DURATION`, e.g. `10/15m` (ten per fifteen minutes).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// At most `limit` events per fixed `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Events allowed per window (at least 1).
    pub limit: u32,
    /// Length of a window (at least 1 s).
    pub window: Duration,
}

impl Rate {
    /// Parses `N/DURATION` (`10/15m`, `60/1h`, `120/1m`); the duration is humantime.
    ///
    /// # Errors
    /// A message saying what is wrong, for the settings error.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (limit, window) = raw
            .split_once('/')
            .ok_or_else(|| format!("{raw:?} is not N/DURATION"))?;
        let limit: u32 = limit
            .trim()
            .parse()
            .map_err(|_| format!("{limit:?} is not a whole number"))?;
        let window = humantime::parse_duration(window.trim())
            .map_err(|e| format!("{window:?} is not a duration: {e}"))?;
        if limit == 0 || window < Duration::from_secs(1) {
            return Err(format!("{raw:?} must allow at least 1 per at least 1s"));
        }
        Ok(Self { limit, window })
    }

    /// The same window with `factor` times the limit.
    pub fn times(self, factor: u32) -> Self {
        Self {
            limit: self.limit.saturating_mul(factor),
            window: self.window,
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.limit,
            humantime::format_duration(self.window)
        )
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print_back() {
        let rate = Rate::parse("10/15m").unwrap();
        assert_eq!((rate.limit, rate.window), (10, Duration::from_secs(900)));
        assert_eq!(rate.to_string(), "10/15m");
        assert_eq!(Rate::parse(" 60 / 1h ").unwrap().times(10).limit, 600);
        for bad in ["", "10", "x/1m", "10/soon", "0/1m", "5/10ms", "-1/1m"] {
            assert!(Rate::parse(bad).is_err(), "{bad:?}");
        }
    }
}
