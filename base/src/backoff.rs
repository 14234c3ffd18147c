//! The pause before a failed thing is tried again.

use std::time::Duration;

/// Doubling pauses between tries: `first` after the first failure in a row, twice that
/// after the second, and so on up to `max`; a success starts over. Optionally each pause
/// is shortened by up to a fraction drawn from a seeded generator, so that many peers
/// that failed together do not all come back at the same moment.
///
/// Pure: it reads no clock and no entropy. The caller sleeps the pause (an adapter) or
/// adds it to the `now` it was given (the core), and a seed makes the jitter reproducible
/// in tests.
///
/// Small (20 bytes), since a loop keeps one across its awaits: the holder's wait for an
/// upstream lives in each held connection's future, 10,000 of them at once. Pauses are
/// kept in whole microseconds, up to 71 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first_us: u32,
    max_us: u32,
    failures: u32,
    /// Pauses are shortened by up to this many thousandths (0: no jitter).
    jitter_permille: u16,
    seed: u32,
}

/// `d` in whole microseconds, at most `u32::MAX` (71 minutes).
const fn micros(d: Duration) -> u32 {
    let us = d.as_micros();
    if us > u32::MAX as u128 {
        u32::MAX
    } else {
        us as u32
    }
}

impl Backoff {
    /// `first` after one failure, doubled per further failure, never above `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first_us: micros(first),
            max_us: micros(max),
            failures: 0,
            jitter_permille: 0,
            seed: 0,
        }
    }

    /// Each pause is shortened by a fraction in `[0, percent %)`, drawn from `seed` and
    /// the failure count (the same seed gives the same pauses). `percent` above 100 is
    /// taken as 100.
    pub const fn with_jitter(mut self, percent: u8, seed: u64) -> Self {
        let p = if percent > 100 { 100 } else { percent };
        self.jitter_permille = p as u16 * 10;
        self.seed = (seed ^ (seed >> 32)) as u32;
        self
    }

    /// A failure: the pause to take before the next try (the one after it is longer).
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.current()
    }

    /// A success: the next failure pauses `first` again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Failures in a row since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The pause after the failures so far: zero before any, else what the last
    /// [`Backoff::failed`] returned.
    pub fn current(&self) -> Duration {
        self.after(self.failures)
    }

    /// The pause the next failure will give, without counting one: for a loop that
    /// must know it before it decides to fail (a deadline that the pause would pass).
    pub fn next(&self) -> Duration {
        self.after(self.failures.saturating_add(1))
    }

    /// The pause after `failures` failures in a row (zero for none).
    pub fn after(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        // 2^31 of any pause is past every cap; min() keeps the shift in range.
        let doubled = u64::from(self.first_us)
            .saturating_mul(1u64 << (failures - 1).min(31))
            .min(u64::from(self.max_us));
        if self.jitter_permille == 0 {
            return Duration::from_micros(doubled);
        }
        let draw = splitmix64(u64::from(self.seed) ^ u64::from(failures)) % 1000;
        let cut = u64::from(self.jitter_permille) * draw / 1000;
        Duration::from_micros(doubled - doubled * cut / 1000)
    }
}

/// A well-mixed 64-bit value from `x` (SplitMix64's output function): enough to spread
/// jitter, not meant for anything secret.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_first_up_to_the_cap() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        assert_eq!(b.current(), Duration::ZERO);
        let pauses: Vec<_> = (0..6).map(|_| b.failed()).collect();
        assert_eq!(
            pauses,
            [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
        assert_eq!(b.failures(), 6);
    }

    #[test]
    fn next_tells_the_coming_pause_without_counting_a_failure() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        assert_eq!(b.next(), 100 * MS);
        assert_eq!(b.next(), 100 * MS, "asking counts nothing");
        assert_eq!(b.failed(), 100 * MS);
        assert_eq!(b.next(), 200 * MS);
        assert_eq!(b.failed(), 200 * MS);
    }

    #[test]
    fn a_success_starts_over() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        b.failed();
        b.failed();
        b.succeeded();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.failed(), 100 * MS);
    }

    #[test]
    fn endless_failures_stay_at_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..100 {
            b.failed();
        }
        assert_eq!(b.current(), Duration::from_secs(30));
        assert_eq!(b.after(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction_and_is_reproducible() {
        let plain = Backoff::new(100 * MS, 10_000 * MS);
        let jittered = plain.with_jitter(20, 7);
        let mut differ = 0;
        for n in 1..=20 {
            let (p, j) = (plain.after(n), jittered.after(n));
            assert!(j <= p, "failure {n}: {j:?} above {p:?}");
            assert!(j >= p * 4 / 5, "failure {n}: {j:?} below 80 % of {p:?}");
            assert_eq!(
                j,
                plain.with_jitter(20, 7).after(n),
                "same seed, same pause"
            );
            differ += usize::from(j != p);
        }
        assert!(differ > 10, "jitter moved only {differ} of 20 pauses");
        let other = plain.with_jitter(20, 8);
        assert!((1..=20).any(|n| other.after(n) != jittered.after(n)));
    }

    #[test]
    fn it_is_small_and_keeps_pauses_to_the_microsecond() {
        assert!(std::mem::size_of::<Backoff>() <= 20);
        let mut b = Backoff::new(Duration::from_micros(100), Duration::from_millis(10));
        assert_eq!(b.failed(), Duration::from_micros(100));
        assert_eq!(b.failed(), Duration::from_micros(200));
        let long = Backoff::new(Duration::from_secs(30), Duration::from_secs(3 * 3600));
        assert_eq!(long.after(1), Duration::from_secs(30));
        assert_eq!(long.after(40), Duration::from_micros(u64::from(u32::MAX)));
    }

    #[test]
    fn jitter_above_a_hundred_percent_is_a_hundred() {
        let b = Backoff::new(100 * MS, 100 * MS).with_jitter(250, 1);
        for n in 1..50 {
            assert!(b.after(n) <= 100 * MS);
        }
    }
}
