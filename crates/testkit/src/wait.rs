//! Bounded waiting: poll a condition with a short, growing interval until it holds or a
//! deadline passes. The condition is always tried once more at the deadline.

use std::fmt;
use std::time::{Duration, Instant};

/// What was awaited and for how long, when it did not come.
#[derive(Debug, Clone)]
pub struct Timeout {
    pub what: String,
    pub waited: Duration,
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}",
            self.waited, self.what
        )
    }
}

impl std::error::Error for Timeout {}

impl From<Timeout> for std::io::Error {
    fn from(t: Timeout) -> Self {
        std::io::Error::new(std::io::ErrorKind::TimedOut, t)
    }
}

const FIRST: Duration = Duration::from_millis(5);
const MAX_INTERVAL: Duration = Duration::from_millis(200);

/// The polling policy, shared by the sync [`eventually`] and async callers: after each
/// failed probe ask [`Poll::next_sleep`] how long to sleep; `Err` means the deadline has passed.
#[derive(Debug)]
pub struct Poll {
    what: String,
    start: Instant,
    limit: Duration,
    interval: Duration,
}

impl Poll {
    pub fn new(what: impl Into<String>, limit: Duration) -> Self {
        Poll {
            what: what.into(),
            start: Instant::now(),
            limit,
            interval: FIRST,
        }
    }

    /// How long to sleep before the next probe, or the timeout once a probe made at (or
    /// after) the deadline has failed. Sleeps are clamped to the deadline, so the last probe
    /// runs at it.
    pub fn next_sleep(&mut self) -> Result<Duration, Timeout> {
        let waited = self.start.elapsed();
        if waited >= self.limit {
            return Err(Timeout {
                what: std::mem::take(&mut self.what),
                waited,
            });
        }
        let sleep = self.interval.min(self.limit - waited);
        self.interval = (self.interval * 2).min(MAX_INTERVAL);
        Ok(sleep)
    }
}

/// Polls `check` until it returns `Some`, for at most `limit`.
pub fn try_eventually<T>(
    what: impl Into<String>,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, Timeout> {
    let mut poll = Poll::new(what, limit);
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        std::thread::sleep(poll.next_sleep()?);
    }
}

/// Polls `check` until it returns `Some`, for at most `limit`; panics naming `what` after
/// that.
#[track_caller]
pub fn eventually<T>(
    what: impl Into<String>,
    limit: Duration,
    check: impl FnMut() -> Option<T>,
) -> T {
    try_eventually(what, limit, check).unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_answer() {
        let mut n = 0;
        let got = eventually("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(got, 3);
    }

    #[test]
    fn probes_once_more_at_the_deadline() {
        let start = Instant::now();
        let got = try_eventually("the deadline", Duration::from_millis(50), || {
            (start.elapsed() >= Duration::from_millis(50)).then_some(())
        });
        assert!(got.is_ok(), "{got:?}");
    }

    #[test]
    fn times_out_naming_what_it_waited_for() {
        let err = try_eventually("never", Duration::from_millis(30), || None::<()>).unwrap_err();
        assert_eq!(err.what, "never");
        assert!(err.waited >= Duration::from_millis(30));
        assert!(err.to_string().contains("never"));
    }

    #[test]
    #[should_panic(expected = "waiting for the impossible")]
    fn eventually_panics_naming_it() {
        eventually("the impossible", Duration::from_millis(10), || None::<()>);
    }
}
