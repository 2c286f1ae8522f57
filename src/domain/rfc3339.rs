//! Timestamps as RFC 3339 in UTC with a `Z`, exactly as chrono's `to_rfc3339_opts(format, true)`
//! writes them, but into a stack buffer: every heartbeat's answer carries one (the seed's form,
//! [`SecondsFormat::AutoSi`]: fractional seconds only when there are any), and every flushed
//! presence row three (SQLite's stored form, [`SecondsFormat::Micros`]). chrono's formatter
//! allocates a `String` and goes through `fmt` machinery for each.

use chrono::{DateTime, SecondsFormat, Utc};

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`: the longest form written here.
const MAX_LEN: usize = 30;

/// Calls `f` with `at` written out in `format` (see the module docs).
pub fn with_rfc3339<R>(at: &DateTime<Utc>, format: SecondsFormat, f: impl FnOnce(&str) -> R) -> R {
    let mut buf = [0u8; MAX_LEN];
    match write(at, format, &mut buf) {
        Some(len) => f(std::str::from_utf8(&buf[..len])
            .expect("BUG: only ASCII digits and punctuation are written")),
        // Years outside 0000-9999, leap seconds, other formats: rare enough for chrono.
        None => f(&at.to_rfc3339_opts(format, true)),
    }
}

/// Writes `at` into `buf`; its length, or `None` for what only chrono writes.
fn write(at: &DateTime<Utc>, format: SecondsFormat, buf: &mut [u8; MAX_LEN]) -> Option<usize> {
    let nanos = at.timestamp_subsec_nanos();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let secs = at.timestamp();
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    if !(0..=9999).contains(&year) {
        return None;
    }
    let of_day = secs.rem_euclid(86_400);
    let year = u32::try_from(year).ok()?;
    digits(&mut buf[0..4], year);
    buf[4] = b'-';
    digits(&mut buf[5..7], month);
    buf[7] = b'-';
    digits(&mut buf[8..10], day);
    buf[10] = b'T';
    let of_day = u32::try_from(of_day).ok()?;
    digits(&mut buf[11..13], of_day / 3600);
    buf[13] = b':';
    digits(&mut buf[14..16], of_day / 60 % 60);
    buf[16] = b':';
    digits(&mut buf[17..19], of_day % 60);
    let mut len = 19;
    let (fraction, places) = match (format, nanos) {
        (SecondsFormat::Micros, n) => (n / 1_000, 6),
        (SecondsFormat::AutoSi, 0) => (0, 0),
        (SecondsFormat::AutoSi, n) if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        (SecondsFormat::AutoSi, n) if n % 1_000 == 0 => (n / 1_000, 6),
        (SecondsFormat::AutoSi, n) => (n, 9),
        _ => return None,
    };
    if places > 0 {
        buf[len] = b'.';
        digits(&mut buf[len + 1..len + 1 + places], fraction);
        len += 1 + places;
    }
    buf[len] = b'Z';
    Some(len + 1)
}

/// Writes the low `out.len()` decimal digits of `value`, zero-padded.
fn digits(out: &mut [u8], mut value: u32) {
    for place in out.iter_mut().rev() {
        // A digit: `value % 10` is below 10.
        *place = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The proleptic Gregorian (year, month, day) of a day counted from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    // Both are small and positive by construction (1..=31 and 1..=12).
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Timelike};
    use proptest::prelude::*;

    use super::*;

    const FORMATS: [SecondsFormat; 3] = [
        SecondsFormat::AutoSi,
        SecondsFormat::Micros,
        SecondsFormat::Millis,
    ];

    fn ours(at: &DateTime<Utc>, format: SecondsFormat) -> String {
        with_rfc3339(at, format, str::to_owned)
    }

    fn chrono_s(at: &DateTime<Utc>, format: SecondsFormat) -> String {
        at.to_rfc3339_opts(format, true)
    }

    #[test]
    fn the_seeds_examples_and_the_edges_read_as_chrono_writes_them() {
        let cases = [
            Utc.with_ymd_and_hms(2024, 1, 15, 10, 30, 0).unwrap(),
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2000, 2, 29, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(10000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-1, 12, 31, 0, 0, 0).unwrap(),
        ];
        assert_eq!(
            ours(&cases[0], SecondsFormat::AutoSi),
            "2024-01-15T10:30:00Z"
        );
        assert_eq!(
            ours(&cases[0], SecondsFormat::Micros),
            "2024-01-15T10:30:00.000000Z"
        );
        for at in cases {
            for nanos in [0, 250_000_000, 123_456_000, 1, 999_999_999, 1_500_000_000] {
                let Some(at) = at.with_nanosecond(nanos) else {
                    continue;
                };
                for format in FORMATS {
                    assert_eq!(ours(&at, format), chrono_s(&at, format), "{at:?}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_instant_reads_as_chrono_writes_it(
            secs in -62_167_219_200i64..=253_402_300_799,
            nanos in prop_oneof![
                Just(0u32),
                (0u32..1000).prop_map(|ms| ms * 1_000_000),
                (0u32..1_000_000).prop_map(|us| us * 1_000),
                0u32..1_000_000_000,
            ],
            format in proptest::sample::select(FORMATS.to_vec()),
        ) {
            let at = DateTime::from_timestamp(secs, nanos).unwrap();
            prop_assert_eq!(ours(&at, format), chrono_s(&at, format));
        }
    }
}
