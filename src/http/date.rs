//! The `Date` header (RFC 9110 §6.6.1): an origin server with a clock sends one on every
//! response, in the IMF-fixdate form `Sun, 06 Nov 1994 08:49:37 GMT`. Formatted once per second
//! by [`HttpDate::update`], copied into each response; no clock is read here.
//!
//! Owns: formatting. May not touch: the clock (the loop gives the seconds).

/// The length of an IMF-fixdate.
pub const DATE_LEN: usize = 29;

/// The current date, formatted, and the second it was formatted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpDate {
    secs: u64,
    text: [u8; DATE_LEN],
}

impl Default for HttpDate {
    fn default() -> HttpDate {
        HttpDate::new(0)
    }
}

impl HttpDate {
    /// The date for `unix_secs` seconds since 1970-01-01T00:00:00Z.
    pub fn new(unix_secs: u64) -> HttpDate {
        HttpDate { secs: unix_secs, text: format(unix_secs) }
    }

    /// Moves to `unix_secs`; formats only when the second changed. Returns whether it did.
    pub fn update(&mut self, unix_secs: u64) -> bool {
        if unix_secs == self.secs {
            return false;
        }
        *self = HttpDate::new(unix_secs);
        true
    }

    /// The formatted date.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits, letters, spaces, commas and colons are ever written.
        std::str::from_utf8(&self.text).unwrap_or("Thu, 01 Jan 1970 00:00:00 GMT")
    }
}

/// Formats `unix_secs` as an IMF-fixdate (proleptic Gregorian calendar, UTC).
fn format(unix_secs: u64) -> [u8; DATE_LEN] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    // Years past 9999 do not fit the format; clamp (a clock that far off is broken anyway).
    let secs = unix_secs.min(253_402_300_799);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    two(&mut out[5..7], day);
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    two(&mut out[12..14], year / 100);
    two(&mut out[14..16], year % 100);
    two(&mut out[17..19], rem / 3600);
    two(&mut out[20..22], rem / 60 % 60);
    two(&mut out[23..25], rem % 60);
    out
}

fn two(out: &mut [u8], n: u64) {
    out[0] = b'0' + (n / 10 % 10) as u8;
    out[1] = b'0' + (n % 10) as u8;
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), after Howard Hinnant's
/// `civil_from_days`, for days >= 0.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_9110_example_and_known_dates() {
        assert_eq!(HttpDate::new(784_111_777).as_str(), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(HttpDate::new(0).as_str(), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(HttpDate::new(951_782_400).as_str(), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(HttpDate::new(1_798_761_599).as_str(), "Thu, 31 Dec 2026 23:59:59 GMT");
        assert_eq!(HttpDate::new(4_107_542_400).as_str(), "Mon, 01 Mar 2100 00:00:00 GMT");
        assert_eq!(HttpDate::new(u64::MAX).as_str(), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn every_day_of_four_centuries_round_trips_its_calendar() {
        // Walk day by day from 1970 and check the calendar advances one day at a time.
        let (mut y, mut m, mut d) = (1970, 1, 1);
        for days in 0..146_097 + 365 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
            d += 1;
            if d > len[(m - 1) as usize] {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn update_formats_only_on_a_new_second() {
        let mut date = HttpDate::new(10);
        assert!(!date.update(10));
        assert!(date.update(11));
        assert_eq!(date.as_str(), "Thu, 01 Jan 1970 00:00:11 GMT");
    }
}
