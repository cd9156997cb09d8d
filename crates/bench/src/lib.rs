//! `linen-bench`: benchmarks of Linen on lab nodes (real OVS per node, netdev datapath).
//! Every figure is printed next to a peer measured in the same run, as min / median / p99
//! over repeated runs and as ratios; never as a single absolute time. See
//! docs/BENCHMARKS.md for the latest report.
//!
//! Sections: [`cni_lat`] (ADD/DEL latency, warm and cold, four variants), [`vteps`] (cold
//! ADD vs VTEP count), [`churn`] (pods/s and leaks), [`converge`] (flaxd + etcd, when
//! flaxd is built), [`dataplane`] (iperf3 and ping, overlay vs underlay), the footprint,
//! and [`disrupt`] (packets lost while a node's flaxd or ovs-vswitchd restarts). [`run`] drives them on one [`bed::Bed`]; [`write`] produces
//! `results.json`, `BENCHMARKS.md` and the SVGs.

pub mod baseline;
pub mod bed;
pub mod churn;
pub mod cni_lat;
pub mod converge;
pub mod dataplane;
pub mod disrupt;
pub mod machine;
pub mod markdown;
pub mod plan;
pub mod plot;
pub mod proc;
pub mod report;
pub mod stats;
pub mod stop;
pub mod vteps;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

pub use plan::{Plan, Section};
use report::{Footprint, Outcome, Report};

/// Where the JSON and the SVGs go, under the output directory.
pub const FIGURES_DIR: &str = "bench";
pub const RESULTS_FILE: &str = "results.json";
pub const REPORT_FILE: &str = "BENCHMARKS.md";
/// Hand-written analysis appended to the report when present (in the figures directory).
pub const NOTES_FILE: &str = "NOTES.md";

fn section<T>(plan: &Plan, s: Section, f: impl FnOnce() -> Result<T>) -> Outcome<T> {
    if !plan.sections.contains(&s) {
        return Outcome::Skipped;
    }
    eprintln!("linen-bench: {} ...", s.name());
    let t = Instant::now();
    let out = Outcome::from_result(f());
    match &out {
        Outcome::Failed(e) => eprintln!("linen-bench: {} FAILED: {e}", s.name()),
        _ => eprintln!(
            "linen-bench: {} done in {:.1} s",
            s.name(),
            t.elapsed().as_secs_f64()
        ),
    }
    out
}

/// Brings up the lab, runs every planned section (a failed section is recorded and the
/// others still run), tears the lab down.
pub fn run(plan: &Plan) -> Result<Report> {
    let started = Instant::now();
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let machine = machine::Machine::detect();
    let bins = bed::Bins::find()?;
    eprintln!(
        "linen-bench: {} run; linen from {}; flaxd {}",
        if plan.quick { "quick" } else { "full" },
        bins.dir.display(),
        bins.flaxd
            .as_ref()
            .map_or("not built".into(), |p| p.display().to_string())
    );
    let bed = bed::Bed::up(plan.nodes, bins.clone())?;
    eprintln!(
        "linen-bench: lab {} up with {} nodes",
        bed.cluster.name(),
        plan.nodes
    );

    let cni = section(plan, Section::Cni, || {
        cni_lat::run(&bed, plan.warm, plan.cold)
    });
    let cold_vteps = section(plan, Section::Vteps, || vteps::run(&bed, &plan.vtep_sizes));
    let churn = section(plan, Section::Churn, || {
        churn::run(&bed, plan.churn_pods, &plan.churn_levels)
    });
    let dataplane = section(plan, Section::Dataplane, || {
        dataplane::run(&bed, plan.dp_rounds, plan.dp_seconds, plan.pings)
    });
    let convergence = section(plan, Section::Convergence, || {
        converge::run(
            &bed,
            plan.conv_rounds,
            &plan.conv_sizes,
            plan.conv_rounds_per_size,
        )
    });
    if let Outcome::Done(converge::Convergence::NotMeasured { reason }) = &convergence {
        println!("convergence: not measured: {reason}");
    }
    let footprint = Outcome::Done(footprint(&bins, &cni, &cold_vteps, &convergence));
    let disruption = section(plan, Section::Disruption, || {
        disrupt::run(&bed, plan.dis_rounds, plan.dis_window)
    });
    if let Outcome::Done(disrupt::Disruption::NotMeasured { reason }) = &disruption {
        println!("disruption: not measured: {reason}");
    }
    drop(bed);

    let mut report = Report {
        tool: "linen-bench".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        quick: plan.quick,
        started: unix,
        duration_s: started.elapsed().as_secs_f64(),
        machine,
        lab_nodes: plan.nodes,
        cni,
        cold_vteps,
        churn,
        convergence,
        dataplane,
        footprint,
        disruption,
        targets: Vec::new(),
        amended: Vec::new(),
    };
    report.compute_targets();
    Ok(report)
}

fn footprint(
    bins: &bed::Bins,
    cni: &Outcome<cni_lat::CniLatency>,
    v: &Outcome<vteps::ColdVteps>,
    conv: &Outcome<converge::Convergence>,
) -> Footprint {
    let rss = |state: &str, variant: &str| {
        cni.done()
            .and_then(|c| c.get(state, variant, "ADD"))
            .and_then(|s| s.max_rss_kib)
    };
    let measured = match conv.done() {
        Some(converge::Convergence::Measured(m)) => Some(m),
        _ => None,
    };
    let cni_dir = Path::new(machine::SYSTEM_CNI_DIR);
    Footprint {
        linen_add_warm_rss_kib: rss("warm", "linen"),
        linen_add_cold_rss_kib: rss("cold", "linen"),
        linen_add_max_vteps_rss_kib: v
            .done()
            .and_then(|v| v.points.last())
            .and_then(|p| Some((p.vteps, p.linen_max_rss_kib?))),
        bridge_add_warm_rss_kib: rss("warm", "bridge"),
        linen_binary_bytes: machine::file_size(&bins.linen),
        flaxd_binary_bytes: bins.flaxd.as_deref().and_then(machine::file_size),
        bridge_binary_bytes: machine::file_size(&cni_dir.join("bridge")),
        host_local_binary_bytes: machine::file_size(&cni_dir.join("host-local")),
        flaxd_rss_idle_kib: measured.map(|m| m.flaxd_rss_idle_kib),
        flaxd_rss_at_max_members_kib: measured
            .and_then(|m| m.scale.last())
            .map(|p| (p.members, p.flaxd_rss_kib)),
        flaxd_peak_rss_kib: measured.map(|m| m.flaxd_peak_rss_kib),
    }
}

/// A results.json written by an earlier run.
pub fn read_results(path: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("decode {}", path.display()))
}

/// Writes `<out>/bench/results.json`, the SVGs and `<out>/BENCHMARKS.md`; returns the
/// report's path.
pub fn write(report: &Report, out: &Path) -> Result<PathBuf> {
    let figs = out.join(FIGURES_DIR);
    std::fs::create_dir_all(&figs).with_context(|| format!("create {}", figs.display()))?;
    let json = serde_json::to_string_pretty(report).context("encode the results")?;
    std::fs::write(figs.join(RESULTS_FILE), json + "\n").context("write the results")?;
    if let Some(c) = report.cni.done() {
        plot::add_latency(&figs, c, "warm")?;
        plot::add_latency(&figs, c, "cold")?;
    }
    if let Some(v) = report.cold_vteps.done() {
        plot::cold_vteps(&figs, v)?;
    }
    if let Some(converge::Convergence::Measured(m)) = report.convergence.done()
        && !m.scale.is_empty()
    {
        plot::convergence(&figs, m)?;
    }
    let notes = std::fs::read_to_string(figs.join(NOTES_FILE)).ok();
    let md = markdown::render(report, notes.as_deref());
    let path = out.join(REPORT_FILE);
    std::fs::write(&path, md).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}
