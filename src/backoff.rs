//! The one retry policy: every loop that tries again after a failure (the engine connection,
//! the event stream's reconnect, an inspection, the listing of running containers, delivery)
//! waits as this says, each with its own parameters.

use std::time::Duration;

/// Exponential backoff. After `n` failures in a row the cap is `initial × 2ⁿ`, at most `max`;
/// with jitter the delay is drawn at random between a tenth of the cap and the cap (so that
/// many agents behind one endpoint do not retry in step), without it the delay is the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub jitter: bool,
}

impl Backoff {
    /// Jittered: for a server that many clients share (the endpoint).
    pub const fn jittered(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            jitter: true,
        }
    }

    /// Steady: for the local engine, which has this agent as one client of a few, and where a
    /// regular rhythm reads better in the log.
    pub const fn steady(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            jitter: false,
        }
    }

    /// The longest wait after `failures` failures in a row.
    pub fn cap(&self, failures: u32) -> Duration {
        self.initial
            .saturating_mul(2u32.saturating_pow(failures.min(30)))
            .min(self.max)
    }

    /// The wait after `failures` failures in a row (0: before the first retry).
    pub fn delay(&self, failures: u32) -> Duration {
        let cap = self.cap(failures);
        if !self.jitter {
            return cap;
        }
        let millis = cap.as_millis().max(1) as u64;
        Duration::from_millis(fastrand::u64(millis / 10..=millis))
    }

    /// The same, but never shorter than `floor`: what the server asked for (`Retry-After`).
    pub fn delay_at_least(&self, failures: u32, floor: Option<Duration>) -> Duration {
        self.delay(failures).max(floor.unwrap_or_default())
    }

    /// A count of failures in a row under this policy, for a loop to carry.
    pub fn retries(self) -> Retries {
        Retries {
            policy: self,
            failures: 0,
        }
    }
}

/// A loop's failures in a row.
#[derive(Debug, Clone)]
pub struct Retries {
    policy: Backoff,
    failures: u32,
}

impl Retries {
    /// The wait before the next try; counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.policy.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// How many tries failed in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// It worked (or long enough ago): start from `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_cap_doubles_up_to_the_max() {
        let b = Backoff::steady(S, 10 * S);
        let caps: Vec<_> = (0..6).map(|n| b.cap(n).as_secs()).collect();
        assert_eq!(caps, [1, 2, 4, 8, 10, 10]);
        assert_eq!(b.cap(u32::MAX), 10 * S);
        let huge = Backoff::steady(Duration::from_secs(3600), Duration::MAX);
        assert_eq!(huge.cap(200), Duration::from_secs(3600) * (1 << 30));
    }

    #[test]
    fn steady_waits_the_cap() {
        let b = Backoff::steady(Duration::from_millis(250), Duration::from_secs(30));
        let delays: Vec<_> = (0..9).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(
            delays,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]
        );
    }

    #[test]
    fn jitter_stays_between_a_tenth_of_the_cap_and_the_cap() {
        let b = Backoff::jittered(S, 300 * S);
        for n in 0..40 {
            let cap = b.cap(n);
            for _ in 0..50 {
                let d = b.delay(n);
                assert!(d <= cap && d >= cap / 10, "{d:?} for cap {cap:?}");
            }
        }
        // Jitter spreads: 200 draws of a 1 s cap are not all one value.
        let mut seen: Vec<_> = (0..200).map(|_| b.delay(0)).collect();
        seen.dedup();
        assert!(seen.len() > 1);
    }

    #[test]
    fn retry_after_is_a_floor() {
        let b = Backoff::steady(S, 10 * S);
        assert_eq!(b.delay_at_least(0, Some(5 * S)), 5 * S);
        assert_eq!(b.delay_at_least(3, Some(5 * S)), 8 * S);
        assert_eq!(b.delay_at_least(0, None), S);
        // Past the max too: the server knows when it will be back.
        assert_eq!(b.delay_at_least(9, Some(60 * S)), 60 * S);
    }

    #[test]
    fn delivery_backoff_is_capped() {
        let p = Backoff::jittered(Duration::from_secs(1), Duration::from_secs(300));
        for n in 0..40 {
            let d = p.delay(n);
            assert!(d <= Duration::from_secs(300), "{n}: {d:?}");
        }
        assert!(p.delay(0) <= Duration::from_secs(1));
    }

    #[test]
    fn retries_count_and_reset() {
        let mut r = Backoff::steady(S, 4 * S).retries();
        let delays: Vec<_> = (0..4).map(|_| r.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 4]);
        assert_eq!(r.failures(), 4);
        r.reset();
        assert_eq!(r.next_delay(), S);
    }
}
