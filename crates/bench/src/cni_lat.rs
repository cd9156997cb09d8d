//! Section 1: CNI ADD and DEL latency on a warm node (bridge and tunnels exist) and a cold
//! one (no OVS bridge, no Linux bridge), for four variants measured round-robin in the
//! same run so that drift on a shared machine hits them alike:
//! - `linen`: the linen process alone, invoked directly with a prevResult the bridge
//!   plugin produced once;
//! - `chain`: bridge + host-local + linen through the CNI runtime, a fresh pod each time;
//! - `bridge`: the reference bridge plugin (with host-local) alone, the floor any chained
//!   plugin adds to;
//! - `ovs-vsctl`: linen's ADD work done by forking ovs-vsctl per step (ADD only).

use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::baseline;
use crate::bed::{self, Bed, NodeCtx, PodNs};
use crate::stats::{Summary, ratio};

pub const VARIANTS: [&str; 4] = ["linen", "chain", "bridge", "ovs-vsctl"];

/// One variant's samples for one verb on one node state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Series {
    /// `warm` or `cold`.
    pub state: String,
    pub variant: String,
    pub verb: String,
    pub summary: Summary,
    pub samples_ms: Vec<f64>,
    /// Peak RSS of the measured process (single-process variants only), KiB.
    pub max_rss_kib: Option<Summary>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ratio {
    pub name: String,
    pub value: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CniLatency {
    pub node_vteps: usize,
    pub warm_iterations: usize,
    pub cold_iterations: usize,
    pub series: Vec<Series>,
    /// Ratios of medians, e.g. `warm ADD linen/bridge`.
    pub ratios: Vec<Ratio>,
}

impl CniLatency {
    pub fn get(&self, state: &str, variant: &str, verb: &str) -> Option<&Series> {
        self.series
            .iter()
            .find(|s| s.state == state && s.variant == variant && s.verb == verb)
    }

    pub fn ratio(&self, name: &str) -> Option<f64> {
        self.ratios.iter().find(|r| r.name == name).map(|r| r.value)
    }
}

/// (state, variant, verb)
type Key = (&'static str, &'static str, &'static str);

#[derive(Default)]
struct Acc {
    /// key -> (ms, peak RSS KiB)
    samples: Vec<(Key, Vec<f64>, Vec<f64>)>,
}

impl Acc {
    fn push(&mut self, key: Key, ms: f64, rss: Option<u64>) {
        let i = match self.samples.iter().position(|(k, _, _)| *k == key) {
            Some(i) => i,
            None => {
                self.samples.push((key, Vec::new(), Vec::new()));
                self.samples.len() - 1
            }
        };
        self.samples[i].1.push(ms);
        if let Some(r) = rss {
            self.samples[i].2.push(r as f64);
        }
    }
}

pub fn run(bed: &Bed, warm: usize, cold: usize) -> Result<CniLatency> {
    let n = bed.node(0);
    let vteps = bed.vteps();
    let chain = n.chain(&vteps)?;
    let bridge_only = bed::conflist(vec![n.bridge_conf()])?;
    let exec = n.exec();

    // The anchor pod: the bridge plugin's result, once, is linen's prevResult.
    let anchor = n.pod()?;
    let prev = exec
        .add_network_list(&bridge_only, &anchor.rt())
        .context("bridge ADD of the anchor pod")?;
    let linen_stdin = bed::request(&n.linen_conf(&vteps), Some(&prev));
    let bridge_stdin = bed::request(&n.bridge_conf(), None);
    let mut acc = Acc::default();

    let linen = |verb: &str| -> Result<crate::proc::Run> {
        n.invoke(&bed.bins.linen, verb, &anchor, &linen_stdin)?
            .check(&format!("linen {verb}"))
    };
    linen("ADD")?; // Now warm.

    for _ in 0..warm {
        one_round(&n, "warm", &mut acc, &linen, &bridge_stdin, &chain, &vteps)?;
    }
    for _ in 0..cold {
        one_round(&n, "cold", &mut acc, &linen, &bridge_stdin, &chain, &vteps)?;
    }
    // Leave the node warm with linen's own rows (the baseline's are not tagged as linen's).
    n.make_cold(false)?;
    linen("ADD")?;
    exec.del_network_list(&bridge_only, &anchor.rt())
        .context("bridge DEL of the anchor pod")?;

    let series: Vec<Series> = acc
        .samples
        .into_iter()
        .filter_map(|((state, variant, verb), ms, rss)| {
            Some(Series {
                state: state.into(),
                variant: variant.into(),
                verb: verb.into(),
                summary: Summary::of(&ms)?,
                samples_ms: ms,
                max_rss_kib: Summary::of(&rss),
            })
        })
        .collect();
    let mut out = CniLatency {
        node_vteps: vteps.len() - 1,
        warm_iterations: warm,
        cold_iterations: cold,
        series,
        ratios: Vec::new(),
    };
    let med = |state: &str, variant: &str, verb: &str| {
        out.get(state, variant, verb).map(|s| s.summary.median)
    };
    let mut ratios = Vec::new();
    for state in ["warm", "cold"] {
        for (verb, a, b) in [
            ("ADD", "linen", "bridge"),
            ("ADD", "linen", "ovs-vsctl"),
            ("ADD", "chain", "bridge"),
            ("DEL", "linen", "bridge"),
            ("DEL", "chain", "bridge"),
        ] {
            if let (Some(x), Some(y)) = (med(state, a, verb), med(state, b, verb))
                && let Some(value) = ratio(x, y)
            {
                ratios.push(Ratio {
                    name: format!("{state} {verb} {a}/{b}"),
                    value,
                });
            }
        }
    }
    out.ratios = ratios;
    Ok(out)
}

/// One sample of every variant on `state`; cold state is re-made before each.
fn one_round(
    n: &NodeCtx<'_>,
    state: &'static str,
    acc: &mut Acc,
    linen: &dyn Fn(&str) -> Result<crate::proc::Run>,
    bridge_stdin: &[u8],
    chain: &cni::runtime::NetworkConfigList,
    vteps: &[std::net::IpAddr],
) -> Result<()> {
    crate::stop::check()?;
    let cold = state == "cold";
    // linen alone.
    if cold {
        n.make_cold(false)?;
    }
    let r = linen("ADD")?;
    acc.push((state, "linen", "ADD"), r.ms(), Some(r.max_rss_kib));
    let r = linen("DEL")?;
    acc.push((state, "linen", "DEL"), r.ms(), Some(r.max_rss_kib));

    // bridge alone, on a fresh pod.
    if cold {
        n.make_cold(true)?;
    }
    let (add, del) = bridge_add_del(n, bridge_stdin)?;
    acc.push((state, "bridge", "ADD"), add.ms(), Some(add.max_rss_kib));
    acc.push((state, "bridge", "DEL"), del.ms(), Some(del.max_rss_kib));

    // The whole chain through the runtime, on a fresh pod.
    if cold {
        n.make_cold(true)?;
    }
    chain_once(n, state, acc, chain)?;

    // The ovs-vsctl baseline.
    if cold {
        n.make_cold(false)?;
    }
    let took = baseline::vsctl_add(n, vteps)?;
    acc.push((state, "ovs-vsctl", "ADD"), took.as_secs_f64() * 1e3, None);
    if cold {
        // Its rows are not linen's: linen would refuse them. Back to cold for the next round.
        n.make_cold(false)?;
    }
    Ok(())
}

/// The reference bridge plugin's ADD then DEL of a fresh pod: the floor a chained plugin
/// adds to. Returns both runs.
pub fn bridge_add_del(
    n: &NodeCtx<'_>,
    bridge_stdin: &[u8],
) -> Result<(crate::proc::Run, crate::proc::Run)> {
    let pod = n.pod()?;
    let bridge = &n.bed.bins.bridge;
    let add = n
        .invoke(bridge, "ADD", &pod, bridge_stdin)?
        .check("bridge ADD")?;
    let prev = cni::types::Result::from_slice(&add.stdout, bed::VERSION)
        .map(|(_, res)| res)
        .context("bridge ADD result")?;
    let del_stdin = bed::request(
        &serde_json::from_slice(bridge_stdin).context("bridge conf")?,
        Some(&prev),
    );
    let del = n
        .invoke(bridge, "DEL", &pod, &del_stdin)?
        .check("bridge DEL")?;
    Ok((add, del))
}

fn chain_once(
    n: &NodeCtx<'_>,
    state: &'static str,
    acc: &mut Acc,
    chain: &cni::runtime::NetworkConfigList,
) -> Result<()> {
    let pod: PodNs = n.pod()?;
    let exec = n.exec();
    let t = Instant::now();
    exec.add_network_list(chain, &pod.rt())
        .with_context(|| format!("chain ADD of {}", pod.name))?;
    acc.push(
        (state, "chain", "ADD"),
        t.elapsed().as_secs_f64() * 1e3,
        None,
    );
    let t = Instant::now();
    exec.del_network_list(chain, &pod.rt())
        .with_context(|| format!("chain DEL of {}", pod.name))?;
    acc.push(
        (state, "chain", "DEL"),
        t.elapsed().as_secs_f64() * 1e3,
        None,
    );
    Ok(())
}
