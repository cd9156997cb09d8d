//! Property tests that keep running: a strategy for arbitrary JSON (what a plugin's stdin,
//! an etcd value or an OVSDB reply can hold) and a runner that executes a fixed number of
//! cases, fails with the shrunk input, and prints how many ran and how long they took.
//!
//! Why proptest and not cargo-fuzz: it runs on the stable toolchain inside `cargo nextest`
//! (no nightly, no separate CI step), shrinks a failure to a small input, and a fixed case
//! count keeps CI's time bounded. A failure found here is turned into a named test case
//! next to the property (the input is printed shrunk).

use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;

/// Any JSON value: nulls, booleans, integers (the whole i64 and u64 range), finite floats,
/// strings with any Unicode (control characters and NUL included), nested arrays and
/// objects up to 4 levels.
pub fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object whose keys are drawn from `keys` (the fields a parser knows, so values
/// reach its validation) and whose values are [`json`] or, half the time, a string from
/// `strings` (values close to valid ones).
pub fn object_with(
    keys: &'static [&'static str],
    strings: &'static [&'static str],
) -> impl Strategy<Value = Value> {
    let value = prop_oneof![
        json(),
        prop::sample::select(strings).prop_map(Value::from),
        prop::collection::vec(prop::sample::select(strings).prop_map(Value::from), 0..6)
            .prop_map(Value::Array),
    ];
    prop::collection::btree_map(prop::sample::select(keys), value, 0..keys.len())
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

/// Runs `property` on `cases` inputs from `strategy`; panics with the shrunk failing input,
/// else prints `name: N cases in T s`.
pub fn check<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let started = Instant::now();
    if let Err(e) = runner.run(&strategy, property) {
        panic!("{name}: {e}");
    }
    eprintln!(
        "{name}: {cases} cases in {:.2} s",
        started.elapsed().as_secs_f64()
    );
}
