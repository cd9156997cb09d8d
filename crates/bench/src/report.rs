//! The result of one run: a JSON document (machine-readable, every sample kept) and the
//! targets the figures are reported against (never asserted).

use serde::{Deserialize, Serialize};

use crate::churn::Churn;
use crate::cni_lat::CniLatency;
use crate::converge::Convergence;
use crate::dataplane::DataPlane;
use crate::disrupt::Disruption;
use crate::machine::Machine;
use crate::plan::Section;
use crate::stats::Summary;
use crate::vteps::ColdVteps;

/// A section's figures, or why it has none.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome<T> {
    Done(T),
    Failed(String),
    Skipped,
}

/// A results.json from before a section existed reads as having skipped it.
impl<T> Default for Outcome<T> {
    fn default() -> Self {
        Outcome::Skipped
    }
}

impl<T> Outcome<T> {
    pub fn done(&self) -> Option<&T> {
        match self {
            Outcome::Done(t) => Some(t),
            _ => None,
        }
    }

    pub fn from_result(r: anyhow::Result<T>) -> Self {
        match r {
            Ok(t) => Outcome::Done(t),
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Footprint {
    /// Peak RSS of one linen ADD on a warm node, KiB.
    pub linen_add_warm_rss_kib: Option<Summary>,
    pub linen_add_cold_rss_kib: Option<Summary>,
    /// With the most VTEPs measured.
    pub linen_add_max_vteps_rss_kib: Option<(usize, Summary)>,
    /// The peer: the reference bridge plugin's ADD (host-local runs as its own child).
    pub bridge_add_warm_rss_kib: Option<Summary>,
    pub linen_binary_bytes: Option<u64>,
    pub flaxd_binary_bytes: Option<u64>,
    pub bridge_binary_bytes: Option<u64>,
    pub host_local_binary_bytes: Option<u64>,
    pub flaxd_rss_idle_kib: Option<u64>,
    /// (members, KiB) at the largest membership measured.
    pub flaxd_rss_at_max_members_kib: Option<(usize, u64)>,
    pub flaxd_peak_rss_kib: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub value: Option<f64>,
    pub met: Option<bool>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    pub quick: bool,
    /// Unix seconds at the start of the run.
    pub started: u64,
    pub duration_s: f64,
    pub machine: Machine,
    pub lab_nodes: usize,
    pub cni: Outcome<CniLatency>,
    pub cold_vteps: Outcome<ColdVteps>,
    pub churn: Outcome<Churn>,
    pub convergence: Outcome<Convergence>,
    pub dataplane: Outcome<DataPlane>,
    pub footprint: Outcome<Footprint>,
    #[serde(default)]
    pub disruption: Outcome<Disruption>,
    pub targets: Vec<Target>,
    /// Sections measured later, in runs of their own, and merged in (`--merge`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amended: Vec<Amendment>,
}

/// A section replaced by a later run of its own.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Amendment {
    pub section: String,
    /// Unix seconds at the start of that run.
    pub started: u64,
    pub duration_s: f64,
}

impl Report {
    /// `self` with the sections of `later` named in `sections` put in its place (each
    /// recorded in [`Report::amended`]); the targets computed again. The footprint, which
    /// every section feeds, is taken from `later` only when it measured CNI, VTEPs or
    /// convergence.
    pub fn merge(mut self, later: Report, sections: &[Section]) -> Report {
        for &s in sections {
            match s {
                Section::Cni => self.cni = later.cni.clone(),
                Section::Vteps => self.cold_vteps = later.cold_vteps.clone(),
                Section::Churn => self.churn = later.churn.clone(),
                Section::Dataplane => self.dataplane = later.dataplane.clone(),
                Section::Convergence => self.convergence = later.convergence.clone(),
                Section::Disruption => self.disruption = later.disruption.clone(),
            }
            self.amended.retain(|a| a.section != s.name());
            self.amended.push(Amendment {
                section: s.name().into(),
                started: later.started,
                duration_s: later.duration_s,
            });
        }
        if sections
            .iter()
            .any(|s| matches!(s, Section::Cni | Section::Vteps | Section::Convergence))
        {
            self.footprint = later.footprint;
        }
        self.compute_targets();
        self
    }

    /// Every section that failed, by name.
    pub fn failures(&self) -> Vec<(&'static str, &str)> {
        [
            ("cni", failed(&self.cni)),
            ("cold_vteps", failed(&self.cold_vteps)),
            ("churn", failed(&self.churn)),
            ("convergence", failed(&self.convergence)),
            ("dataplane", failed(&self.dataplane)),
            ("footprint", failed(&self.footprint)),
            ("disruption", failed(&self.disruption)),
        ]
        .into_iter()
        .filter_map(|(name, e)| Some((name, e?)))
        .collect()
    }

    /// The targets of the brief, computed from the figures (reported, never asserted).
    pub fn compute_targets(&mut self) {
        let cni = self.cni.done();
        let warm_bridge = cni.and_then(|c| c.ratio("warm ADD linen/bridge"));
        let warm_vsctl = cni
            .and_then(|c| c.ratio("warm ADD linen/ovs-vsctl"))
            .map(|r| 1.0 / r);
        let cold100 = self
            .cold_vteps
            .done()
            .and_then(|v| v.at(100))
            .map(|p| p.linen_ms.median);
        let tcp = self.dataplane.done().map(|d| d.tcp_ratio);
        self.targets = vec![
            target(
                "warm ADD: linen / bridge (medians)",
                "<= 0.10",
                warm_bridge,
                |v| v <= 0.10,
            ),
            target(
                "warm ADD: ovs-vsctl baseline / linen (medians)",
                ">= 5x",
                warm_vsctl,
                |v| v >= 5.0,
            ),
            target(
                "cold ADD with 100 VTEPs: linen median",
                "< 50 ms",
                cold100,
                |v| v < 50.0,
            ),
            target(
                "TCP throughput: overlay / underlay (medians)",
                ">= 0.85",
                tcp,
                |v| v >= 0.85,
            ),
        ];
    }
}

fn failed<T>(o: &Outcome<T>) -> Option<&str> {
    match o {
        Outcome::Failed(e) => Some(e),
        _ => None,
    }
}

fn target(name: &str, goal: &str, value: Option<f64>, ok: impl Fn(f64) -> bool) -> Target {
    Target {
        name: name.into(),
        goal: goal.into(),
        met: value.map(&ok),
        value,
    }
}
