//! The CI hook: `linen-bench --quick` runs end to end on a lab of its own (unique name,
//! temporary directories) and writes a JSON report in which every section has positive
//! medians, churn has no failure and no leak. Speed is never asserted: these machines are
//! shared and noisy.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

fn positive(v: &Value, what: &str) {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x > 0.0 && x.is_finite(), "{what} = {x}, want > 0");
}

fn done<'a>(report: &'a Value, section: &str) -> &'a Value {
    let s = &report[section];
    assert!(
        s.get("done").is_some(),
        "section {section} did not complete: {s}"
    );
    &s["done"]
}

/// `LINEN_BIN_DIR` (set by scripts/test.sh after building the binaries), else the
/// directory of this package's binary, where cargo also puts `linen`.
fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LINEN_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_linen-bench"));
    exe.parent().expect("binary directory").to_path_buf()
}

#[test]
fn quick_suite_reports_every_section() {
    let bins = bin_dir();
    assert!(
        bins.join("linen").is_file(),
        "no linen binary in {}: run `cargo build --release --bins` (same profile) or set LINEN_BIN_DIR",
        bins.display()
    );
    // This build's binaries only: not installed ones, not ones older than their sources.
    testkit::binary::require_fresh_build(&bins.join("linen"), testkit::binary::LINEN_CRATES);
    let flaxd = bins.join("flaxd");
    assert!(
        flaxd.is_file(),
        "missing prerequisite: no flaxd in {}",
        bins.display()
    );
    testkit::binary::require_fresh_build(&flaxd, testkit::binary::FLAXD_CRATES);
    let out = testkit::tempdir().expect("temp dir");
    // The bench's own temporary directories (its lab's among them) go inside one of ours,
    // so a killed run's are found and swept by their `lnt<pid>-` name.
    let tmp = testkit::tempdir().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_linen-bench"));
    cmd.args(["--quick", "--out"])
        .arg(out.path())
        .env("LINEN_BIN_DIR", &bins)
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Killed with this test (nextest's timeout, Ctrl-C); scripts/test.sh sweeps its lab.
    let run = testkit::process::spawn(cmd)
        .and_then(|c| c.wait_with_output())
        .expect("run linen-bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "linen-bench --quick failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        run.status
    );

    let json = std::fs::read_to_string(out.path().join("bench/results.json")).expect("results");
    let r: Value = serde_json::from_str(&json).expect("results are JSON");
    assert_eq!(r["quick"], true);
    assert!(r["machine"]["nproc"].as_u64().unwrap_or(0) > 0);

    let cni = done(&r, "cni");
    let series = cni["series"].as_array().expect("series");
    for state in ["warm", "cold"] {
        for (variant, verbs) in [
            ("linen", &["ADD", "DEL"][..]),
            ("chain", &["ADD", "DEL"]),
            ("bridge", &["ADD", "DEL"]),
            ("ovs-vsctl", &["ADD"]),
        ] {
            for verb in verbs {
                let s = series
                    .iter()
                    .find(|s| s["state"] == state && s["variant"] == variant && s["verb"] == *verb)
                    .unwrap_or_else(|| panic!("no {state} {variant} {verb} series"));
                positive(
                    &s["summary"]["median"],
                    &format!("{state} {variant} {verb} median"),
                );
            }
        }
    }
    for name in [
        "warm ADD linen/bridge",
        "warm ADD linen/ovs-vsctl",
        "cold ADD linen/bridge",
    ] {
        let x = cni["ratios"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == name))
            .unwrap_or_else(|| panic!("no ratio {name}"));
        positive(&x["value"], name);
    }

    let points = done(&r, "cold_vteps")["points"].as_array().expect("points");
    let counts: Vec<u64> = points.iter().filter_map(|p| p["vteps"].as_u64()).collect();
    assert_eq!(counts, [1, 10, 100]);
    for p in points {
        positive(&p["linen_ms"]["median"], "cold ADD median");
        positive(&p["ovs_vsctl_ms"]["median"], "baseline median");
    }

    let levels = done(&r, "churn")["levels"].as_array().expect("levels");
    let conc: Vec<u64> = levels
        .iter()
        .filter_map(|l| l["concurrency"].as_u64())
        .collect();
    assert_eq!(conc, [1, 4, 16]);
    for l in levels {
        assert_eq!(l["failures"], 0, "churn failures: {l}");
        assert_eq!(l["leak_total"], 0, "churn leaks: {l}");
        positive(&l["churn_pods_per_s"], "pods/s");
        positive(&l["add_ms"]["median"], "churn ADD median");
    }

    let dp = done(&r, "dataplane");
    for path in ["overlay", "underlay"] {
        positive(&dp[path]["throughput"]["median"], &format!("{path} Mbit/s"));
        positive(&dp[path]["rtt"]["avg_ms"], &format!("{path} RTT"));
    }
    positive(&dp["tcp_ratio"], "overlay/underlay TCP");

    let conv = done(&r, "convergence");
    match conv["status"].as_str() {
        Some("measured") => {
            positive(&conv["initial_ms"], "initial convergence");
            positive(&conv["node_join_ms"]["median"], "join median");
            positive(&conv["node_leave_ms"]["median"], "leave median");
            for p in conv["scale"].as_array().expect("scale") {
                positive(&p["bulk_join_ms"], "bulk join");
                positive(&p["join_one_ms"]["median"], "one join");
            }
        }
        // A machine set up by install-deps.sh has etcd and a flaxd beside linen: a section
        // that was not measured is a missing prerequisite, not a pass.
        Some("not_measured") => panic!(
            "missing prerequisite: convergence was not measured: {}",
            conv["reason"]
        ),
        other => panic!("convergence status {other:?}: {conv}"),
    }

    let fp = done(&r, "footprint");
    positive(&fp["linen_add_warm_rss_kib"]["median"], "linen ADD RSS");
    positive(&fp["linen_binary_bytes"], "linen binary size");
    assert_eq!(r["targets"].as_array().map(Vec::len), Some(4));

    let md = std::fs::read_to_string(out.path().join("BENCHMARKS.md")).expect("report");
    assert!(md.contains("## 1. CNI ADD and DEL latency"));
    for svg in ["add_warm.svg", "add_cold.svg", "cold_vteps.svg"] {
        let text = std::fs::read_to_string(out.path().join("bench").join(svg)).expect(svg);
        assert!(text.starts_with("<svg"), "{svg}");
    }
}
