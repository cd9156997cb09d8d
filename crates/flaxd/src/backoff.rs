//! The retry policy, in one place: exponential backoff with a cap and jitter. Every loop in
//! flaxd that retries (reconcile, OVSDB reconnect, etcd re-list/re-watch, lease renewal, the
//! Kubernetes watcher) waits with a [`Backoff`].

use std::time::Duration;

use rand::Rng;

/// Exponential backoff: `initial`, doubling up to `max`, each delay jittered down by up to
/// `jitter` (a fraction) so that many nodes retrying after one outage spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            jitter: 0.25,
            next: initial,
        }
    }

    /// flaxd's default: 100 ms doubling up to 10 s.
    pub fn standard() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// Sets the jitter fraction (0 = none, 1 = anywhere between 0 and the full delay).
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 1.0);
        self
    }

    /// The delay before the next attempt; doubles the one after it, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        if self.jitter == 0.0 {
            return base;
        }
        let cut = rand::rng().random_range(0.0..=self.jitter);
        base.mul_f64(1.0 - cut)
    }

    /// Sleeps for [`Backoff::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000)).with_jitter(0.0);
        let got: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert_eq!(
            got,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(1000), ms(1000)).with_jitter(0.5);
        for _ in 0..1000 {
            let d = b.next_delay();
            assert!(d >= ms(500) && d <= ms(1000), "{d:?}");
        }
    }

    #[test]
    fn cap_below_initial_is_the_initial() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(300), ms(10)).with_jitter(0.0);
        assert_eq!((b.next_delay(), b.next_delay()), (ms(300), ms(300)));
    }
}
