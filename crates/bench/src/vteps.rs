//! Section 2: the first ADD on a cold node (no OVS bridge) with 1, 10, 100 (and 1000)
//! remote VTEPs, linen next to the ovs-vsctl baseline doing the same work; then, with those
//! tunnels in place, the warm ADD next to the reference bridge plugin's ADD on a fresh pod
//! (interleaved): the curve that shows whether a warm ADD grows with the cluster.
//!
//! The VTEPs are the lab's other nodes, then addresses of 198.18.0.0/15 (RFC 2544's
//! benchmarking range). No node has a route to that range, so nothing could be sent there;
//! and userspace OVS tunnels send nothing until traffic flows, which none does here.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::baseline;
use crate::bed::{self, Bed, NodeCtx};
use crate::stats::Summary;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Point {
    pub vteps: usize,
    pub linen_ms: Summary,
    pub linen_samples_ms: Vec<f64>,
    /// Absent when the baseline was not run at this size.
    pub ovs_vsctl_ms: Option<Summary>,
    pub linen_max_rss_kib: Option<Summary>,
    /// The warm ADD (bridge and these tunnels in place, same configuration).
    #[serde(default)]
    pub warm_ms: Option<Summary>,
    #[serde(default)]
    pub warm_max_rss_kib: Option<Summary>,
    /// The bridge plugin's ADD of a fresh pod, interleaved with the warm ADDs.
    #[serde(default)]
    pub bridge_ms: Option<Summary>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ColdVteps {
    pub points: Vec<Point>,
}

impl ColdVteps {
    pub fn at(&self, vteps: usize) -> Option<&Point> {
        self.points.iter().find(|p| p.vteps == vteps)
    }
}

/// `count` remote VTEPs: the lab's other nodes first, then 198.18.x.y.
pub fn vtep_list(others: &[IpAddr], count: usize) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = others.iter().copied().take(count).collect();
    let mut k: u32 = 1;
    while out.len() < count {
        // 198.18.0.1, 198.18.0.2, ... skipping .0 and .255 of each /24.
        let host = k % 254 + 1;
        let net = k / 254;
        let ip = Ipv4Addr::new(198, 18 + (net / 256) as u8, (net % 256) as u8, host as u8);
        out.push(IpAddr::V4(ip));
        k += 1;
    }
    out
}

/// `sizes`: (VTEP count, linen iterations, baseline iterations).
pub fn run(bed: &Bed, sizes: &[(usize, usize, usize)]) -> Result<ColdVteps> {
    let n = bed.node(0);
    let own = IpAddr::V4(n.underlay_ip());
    let others: Vec<IpAddr> = bed.vteps().into_iter().filter(|ip| *ip != own).collect();
    let bridge_only = bed::conflist(vec![n.bridge_conf()])?;
    let exec = n.exec();
    let anchor = n.pod()?;
    let prev = exec
        .add_network_list(&bridge_only, &anchor.rt())
        .context("bridge ADD of the anchor pod")?;

    let mut points = Vec::new();
    for &(count, iters, base_iters) in sizes {
        let vteps = vtep_list(&others, count);
        let stdin = bed::request(&n.linen_conf(&vteps), Some(&prev));
        let mut ms = Vec::new();
        let mut rss = Vec::new();
        let mut base = Vec::new();
        for i in 0..iters.max(base_iters) {
            crate::stop::check()?;
            if i < iters {
                n.make_cold(false)?;
                let r = n
                    .invoke(&bed.bins.linen, "ADD", &anchor, &stdin)?
                    .check(&format!("linen ADD with {count} VTEPs"))?;
                ms.push(r.ms());
                rss.push(r.max_rss_kib as f64);
                if i == 0 {
                    verify_tunnels(&n, count)?;
                }
            }
            if i < base_iters {
                n.make_cold(false)?;
                base.push(baseline::vsctl_add(&n, &vteps)?.as_secs_f64() * 1e3);
            }
        }
        // Warm: the bridge and `count` tunnels in place. The second ADD records the
        // settled bridge row (ovs-vswitchd fills in its status after the create).
        n.make_cold(false)?;
        let bridge_stdin = bed::request(&n.bridge_conf(), None);
        for _ in 0..2 {
            n.invoke(&bed.bins.linen, "ADD", &anchor, &stdin)?
                .check(&format!("linen ADD with {count} VTEPs"))?;
        }
        let (mut warm, mut warm_rss, mut floor) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..iters {
            crate::stop::check()?;
            let r = n
                .invoke(&bed.bins.linen, "ADD", &anchor, &stdin)?
                .check(&format!("warm linen ADD with {count} VTEPs"))?;
            warm.push(r.ms());
            warm_rss.push(r.max_rss_kib as f64);
            let (add, _) = crate::cni_lat::bridge_add_del(&n, &bridge_stdin)?;
            floor.push(add.ms());
        }
        n.make_cold(false)?;
        tracing::info!(count, "cold and warm ADD with VTEPs measured");
        points.push(Point {
            vteps: count,
            linen_ms: Summary::of(&ms).context("no linen samples")?,
            linen_samples_ms: ms,
            ovs_vsctl_ms: Summary::of(&base),
            linen_max_rss_kib: Summary::of(&rss),
            warm_ms: Summary::of(&warm),
            warm_max_rss_kib: Summary::of(&warm_rss),
            bridge_ms: Summary::of(&floor),
        });
    }
    exec.del_network_list(&bridge_only, &anchor.rt())
        .context("bridge DEL of the anchor pod")?;
    Ok(ColdVteps { points })
}

/// The ADD really made one vxlan interface per VTEP.
fn verify_tunnels(n: &NodeCtx<'_>, count: usize) -> Result<()> {
    let text = n.vsctl(&[
        "--format=json",
        "--columns=name",
        "find",
        "Interface",
        "type=vxlan",
    ])?;
    let v: serde_json::Value = serde_json::from_str(&text).context("ovs-vsctl json")?;
    let got = v["data"].as_array().map_or(0, Vec::len);
    if got != count {
        bail!("linen ADD with {count} VTEPs left {got} vxlan interfaces");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        let others: Vec<IpAddr> = vec!["10.245.2.2".parse().unwrap()];
        let l = vtep_list(&others, 1);
        assert_eq!(l, others);
        let l = vtep_list(&others, 1000);
        assert_eq!(l.len(), 1000);
        let mut uniq = l.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), 1000);
        assert_eq!(l[1].to_string(), "198.18.0.2");
        for ip in &l[1..] {
            let IpAddr::V4(v4) = ip else { panic!() };
            let o = v4.octets();
            assert!(o[0] == 198 && (o[1] == 18 || o[1] == 19), "{ip}");
            assert!(o[3] != 0 && o[3] != 255, "{ip}");
        }
    }
}
