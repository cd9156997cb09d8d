//! Bounded waiting for a condition: the lab never sleeps a fixed time, it polls
//! a probe with a short, growing interval until it answers or a deadline passes.

use std::time::{Duration, Instant};

use thiserror::Error;

#[derive(Debug, Error)]
#[error("timed out after {waited:?} waiting for {what}")]
pub struct Timeout {
    pub what: String,
    pub waited: Duration,
}

/// Polls `probe` until it returns `Some`, for at most `limit`. The probe is
/// always tried at least once, and once more at the deadline.
pub fn until<T>(
    what: impl Into<String>,
    limit: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, Timeout> {
    let start = Instant::now();
    let mut interval = Duration::from_millis(5);
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        let waited = start.elapsed();
        if waited >= limit {
            return Err(Timeout {
                what: what.into(),
                waited,
            });
        }
        std::thread::sleep(interval.min(limit - waited));
        interval = (interval * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_answer() {
        let mut n = 0;
        let got = until("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(got.unwrap(), 3);
    }

    #[test]
    fn times_out_with_what_it_waited_for() {
        let err = until("never", Duration::from_millis(30), || None::<()>).unwrap_err();
        assert_eq!(err.what, "never");
        assert!(err.waited >= Duration::from_millis(30));
        assert!(err.to_string().contains("never"));
    }
}
