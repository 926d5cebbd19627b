//! Retry timing: `Retry-After` parsing (delta-seconds or an HTTP date) and exponential backoff
//! with jitter, both bounded.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest `Retry-After` taken from an upstream (a day); anything longer is clamped.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(86_400);

/// `Retry-After: 120` or `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT`, as a wait from `now`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(RETRY_AFTER_MAX));
    }
    if let Ok(secs) = value.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(
                secs.min(RETRY_AFTER_MAX.as_secs_f64()),
            ));
        }
    }
    let at = parse_http_date(value)?;
    let now_s = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now_s)).min(RETRY_AFTER_MAX))
}

/// Azure OpenAI's response header giving the wait in milliseconds, more precise than its
/// `Retry-After` (whole seconds).
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// `retry-after-ms: 1500` (a non-negative number of milliseconds, fractions allowed), clamped to
/// [`RETRY_AFTER_MAX`].
pub fn parse_retry_after_ms(value: &str) -> Option<Duration> {
    let ms: f64 = value.trim().parse().ok()?;
    if !ms.is_finite() || ms < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(
        (ms / 1000.0).min(RETRY_AFTER_MAX.as_secs_f64()),
    ))
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) as seconds since the Unix epoch.
fn parse_http_date(s: &str) -> Option<u64> {
    let rest = s.split_once(", ")?.1;
    let mut parts = rest.split(' ');
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let (h, m, sec): (u64, u64, u64) = (
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
    );
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day as i64);
    u64::try_from(days)
        .ok()
        .map(|d| d * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Backoff before retry number `attempt` (0-based): `initial * 2^attempt` capped at `max`, of which
/// a random half is waited ("equal jitter"), so retries of many requests spread out.
pub fn backoff(attempt: u32, initial: Duration, max: Duration, random: u64) -> Duration {
    let full = initial
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .min(max);
    let half = full / 2;
    let jitter_ns = if half.is_zero() {
        0
    } else {
        random % (half.as_nanos() as u64).max(1)
    };
    half + Duration::from_nanos(jitter_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_770); // Sun, 06 Nov 1994 08:49:30 GMT
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(" 0.5 ", now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("99999999999", now), Some(RETRY_AFTER_MAX));
    }

    #[test]
    fn retry_after_ms_forms() {
        assert_eq!(
            parse_retry_after_ms("1500"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after_ms(" 2.5 "),
            Some(Duration::from_micros(2500))
        );
        assert_eq!(parse_retry_after_ms("-1"), None);
        assert_eq!(parse_retry_after_ms("soon"), None);
        assert_eq!(parse_retry_after_ms("1e30"), Some(RETRY_AFTER_MAX));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let (i, m) = (Duration::from_millis(100), Duration::from_millis(1000));
        for r in [0u64, 7, u64::MAX] {
            let b0 = backoff(0, i, m, r);
            assert!(
                b0 >= Duration::from_millis(50) && b0 < Duration::from_millis(100),
                "{b0:?}"
            );
            let b5 = backoff(5, i, m, r);
            assert!(b5 >= Duration::from_millis(500) && b5 < m, "{b5:?}");
            assert!(backoff(40, i, m, r) < m);
        }
    }
}
