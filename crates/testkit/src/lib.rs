//! The one test kit of Linen's tests. It depends on nothing of ours, so every crate — the
//! bottom ones included — may use it (as a dev-dependency, or behind a `testing` feature).
//!
//! - [`require`]: a missing prerequisite (root, a program, a file) fails the test with a
//!   message naming it. Nothing is skipped silently: a skipped test would count as a pass.
//! - [`eventually`] / [`try_eventually`]: poll a condition until a deadline, naming what was
//!   awaited when it does not come; [`Poll`] is the same policy for async callers.
//! - [`process`]: children that die with the test process, even when it is killed.

pub mod process;
pub mod require;
mod wait;

pub use wait::{Poll, Timeout, eventually, try_eventually};

/// The prefix of every name (temp directory, namespace, lab) that a test creates on the
/// host, so `scripts/test.sh` can sweep what a killed run left and nothing else.
pub const PREFIX: &str = "lnt";
