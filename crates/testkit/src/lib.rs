//! The one test kit of Linen's tests. It depends on nothing of ours, so every crate — the
//! bottom ones included — may use it (as a dev-dependency, or behind a `testing` feature).
//!
//! - [`require`]: a missing prerequisite (root, a program, a file) fails the test with a
//!   message naming it. Nothing is skipped silently: a skipped test would count as a pass.
//! - [`eventually`] / [`try_eventually`]: poll a condition until a deadline, naming what was
//!   awaited when it does not come; [`Poll`] is the same policy for async callers.
//! - [`process`]: children that die with the test process, even when it is killed.
//! - [`binary`]: the binaries under test are this build's, not installed or stale ones.
//! - [`cgroup`]: control groups a container runtime creates for a test, removed by a guard.

pub mod binary;
pub mod cgroup;
pub mod process;
pub mod props;
pub mod require;
mod wait;

pub use wait::{Poll, Timeout, eventually, try_eventually};

/// The prefix of every name (temp directory, namespace, lab) that a test creates on the
/// host: `lnt<pid>-...`, `<pid>` the test process's. `scripts/sweep-test-leftovers.sh` (run by
/// `scripts/test.sh` before and after the tests) removes such names whose process is gone —
/// what a killed run left — and nothing else: not a live run's, not a lab a user started.
pub const PREFIX: &str = "lnt";

/// `lnt<pid>-<rest>`: a host-wide name owned by this test process (see [`PREFIX`]).
pub fn name(rest: &str) -> String {
    format!("{PREFIX}{}-{rest}", std::process::id())
}

/// `lnt<pid>-<6 random [a-z0-9]>`: a unique name (a lab's, say) owned by this test process.
pub fn unique_name() -> String {
    name(&random_suffix(6))
}

/// `n` random characters of `[a-z0-9]`.
pub fn random_suffix(n: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; n];
    // SAFETY: getrandom writes at most `n` bytes into a buffer of `n`.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), n, 0) };
    assert_eq!(got, n as isize, "getrandom");
    bytes
        .iter()
        .map(|b| CHARS[usize::from(*b) % CHARS.len()] as char)
        .collect()
}

/// A temporary directory `$TMPDIR/lnt<pid>-XXXXXX` (see [`PREFIX`]), removed on drop.
pub fn tempdir() -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix(&name("")).tempdir()
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_carry_the_prefix_and_the_owner() {
        let owner = format!("lnt{}-", std::process::id());
        let n = super::unique_name();
        assert!(n.starts_with(&owner) && n.len() == owner.len() + 6, "{n}");
        assert_ne!(n, super::unique_name());
        let d = super::tempdir().unwrap();
        let base = d.path().file_name().unwrap().to_string_lossy().into_owned();
        assert!(base.starts_with(&owner), "{base}");
    }
}
