//! Wall-clock time as the queue, delivery and telemetry record it: Unix milliseconds; and
//! durations as every message prints them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch (0 on a clock set before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A duration as every log line and message prints it: humantime's words, to the
/// millisecond (`2s 996ms`, `805ms`, `5m`), never `Debug`'s `2.995881024s`.
pub fn human(d: Duration) -> humantime::FormattedDuration {
    let ms = d.as_millis().min(u128::from(u64::MAX)) as u64;
    let rounded = Duration::from_millis(ms + u64::from(d.subsec_nanos() % 1_000_000 >= 500_000));
    humantime::format_duration(rounded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_to_the_millisecond() {
        assert_eq!(
            human(Duration::from_nanos(2_995_881_024)).to_string(),
            "2s 996ms"
        );
        assert_eq!(human(Duration::from_millis(805)).to_string(), "805ms");
        assert_eq!(human(Duration::from_secs(300)).to_string(), "5m");
        assert_eq!(human(Duration::ZERO).to_string(), "0s");
    }
}
