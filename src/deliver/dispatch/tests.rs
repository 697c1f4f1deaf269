//! The dispatcher's rules, in-process.

use super::*;

#[test]
fn backoff_escalates_once_per_failed_probe() {
    let mut hold = Hold::default();
    // Four requests in flight when the endpoint goes down: one step, not four.
    hold.count_failure(false);
    hold.until = Some(Instant::now());
    for _ in 0..3 {
        hold.count_failure(false);
    }
    assert_eq!(hold.failures, 1);
    // Then each failed probe is one more step.
    hold.count_failure(true);
    hold.count_failure(true);
    assert_eq!(hold.failures, 3);
}

/// When each reminder of a hold falls, from its start, over `over`.
fn reminder_times(first: Duration, over: Duration) -> Vec<Duration> {
    let (mut at, mut every, mut times) = (first, first, Vec::new());
    while at <= over {
        times.push(at);
        every = next_reminder_interval(every);
        at += every;
    }
    times
}

#[test]
fn a_day_long_outage_writes_a_few_dozen_reminders() {
    let day = reminder_times(REMINDER_FIRST, Duration::from_secs(24 * 3600));
    assert!((20..=40).contains(&day.len()), "{} reminders", day.len());
    let secs: Vec<u64> = day.iter().take(4).map(Duration::as_secs).collect();
    assert_eq!(secs, [60, 180, 420, 900]);
    let gaps: Vec<Duration> = day.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g <= REMINDER_MAX));
    assert_eq!(gaps.last(), Some(&REMINDER_MAX));
}
