//! Section 4: membership convergence with flaxd and etcd. **Runs only when a `flaxd`
//! binary was built next to `linen`** (and `etcd` is installed); otherwise the section is
//! reported as "not measured: flaxd not available" — no figure is ever made up.
//!
//! What it drives, all inside the lab: one etcd in node 1's namespace (client URL on node
//! 1's underlay address), one `flaxd --source etcd` per node on its own OVS bridge
//! ([`BRIDGE`], apart from the CNI benchmarks' `br0`). Convergence is read from each node's
//! OVSDB: a member counts as reached when its tunnel interface (tagged `linen-source=flaxd`)
//! exists with an OpenFlow port number, i.e. ovs-vswitchd has it in the data path.
//! - initial: every flaxd started, until the full mesh exists;
//! - a real node leaving (its flaxd stopped, then `flaxd --leave` revokes its lease) and
//!   joining again (process start, registration, every node's tunnel to it and its tunnels
//!   to every node);
//! - scale: M synthetic members (VTEPs in 198.18.0.0/15, no route) written in one etcd
//!   transaction, until every node has M+2 tunnels; then one member more joining and
//!   leaving at that size; then the M removed;
//! - flaxd's RSS idle and at the largest M.

mod etcd;
mod ovs;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::bed::Bed;
use crate::stats::Summary;

pub use etcd::Etcd;

/// flaxd's OVS bridge: the one linen uses, as in production (the CNI benchmarks' bridge is
/// deleted first: its `vtepIPs` tunnels would hold the port names flaxd wants).
pub const BRIDGE: &str = crate::bed::OVS_BRIDGE;
pub const ETCD_PORT: u16 = 23790;
pub const ETCD_PREFIX: &str = "/linen";
/// flaxd's reconciler debounce (its default; not a flag), part of every figure below.
pub const FLAXD_DEBOUNCE_MS: u64 = 100;
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Convergence {
    Measured(Box<Measured>),
    NotMeasured { reason: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScalePoint {
    /// Members in etcd, the real nodes included.
    pub members: usize,
    /// M synthetic members written in one transaction, until every node has them.
    pub bulk_join_ms: f64,
    /// One member more at this size, until every node has its tunnel.
    pub join_one_ms: Summary,
    /// That member deleted, until every node dropped it.
    pub leave_one_ms: Summary,
    /// The M deleted in one request, until every node dropped them.
    pub bulk_leave_ms: f64,
    /// flaxd's RSS on node 1 with this many members, KiB.
    pub flaxd_rss_kib: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measured {
    pub nodes: usize,
    pub debounce_ms: u64,
    /// Every flaxd started until the full mesh exists.
    pub initial_ms: f64,
    /// A real node's flaxd restarted until it and every peer have their tunnels.
    pub node_join_ms: Summary,
    /// A real node's flaxd stopped (SIGTERM) and `flaxd --leave` run, until every peer
    /// dropped its tunnel.
    pub node_leave_ms: Summary,
    pub scale: Vec<ScalePoint>,
    pub flaxd_rss_idle_kib: u64,
    pub flaxd_peak_rss_kib: u64,
}

/// Runs the section if it can; `NotMeasured` names why not.
pub fn run(
    bed: &Bed,
    rounds: usize,
    sizes: &[usize],
    rounds_per_size: usize,
) -> Result<Convergence> {
    let Some(flaxd) = bed.bins.flaxd.clone() else {
        return Ok(Convergence::NotMeasured {
            reason: "flaxd not available".into(),
        });
    };
    if !Path::new("/usr/bin/etcd").is_file() {
        return Ok(Convergence::NotMeasured {
            reason: "etcd not available (install etcd-server)".into(),
        });
    }
    for i in 0..bed.cluster.nodes().len() {
        bed.node(i).make_cold(false)?;
    }
    let n1 = bed.node(0);
    let res = crate::proc::in_netns(n1.netns(), || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("tokio runtime")?;
        rt.block_on(measure(bed, &flaxd, rounds, sizes, rounds_per_size))
            .map(|m| Convergence::Measured(Box::new(m)))
    });
    res.map_err(|e| e.context(logs_tail(bed)))
}

/// The last lines of every flaxd's log, for an error report.
fn logs_tail(bed: &Bed) -> String {
    let mut out = String::from("flaxd logs:");
    for n in bed.cluster.nodes() {
        let path = bed.root.path().join(format!("flaxd-{}.log", n.index));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("\n[{}] ", n.name));
        out.push_str(&lines[lines.len().saturating_sub(5)..].join("\n  "));
    }
    out
}

/// A flaxd process on one node; SIGTERM (then SIGKILL) on drop.
struct Flaxd {
    child: Option<std::process::Child>,
}

impl Flaxd {
    fn start(bed: &Bed, bin: &Path, node: usize, etcd_url: &str) -> Result<Flaxd> {
        let n = bed.node(node);
        let log = bed.root.path().join(format!("flaxd-{}.log", n.node.index));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let mut cmd = std::process::Command::new(bin);
        cmd.args([
            "--node-name",
            &n.node.name,
            "--vtep",
            &n.underlay_ip().to_string(),
            "--ovsdb",
            &format!("unix:{}", n.node.ovsdb_socket.display()),
            "--bridge",
            BRIDGE,
            "--datapath",
            "netdev",
            "--source",
            "etcd",
            "--etcd-endpoints",
            etcd_url,
            // The bench's throwaway etcd on the bed's loopback is plaintext.
            "--etcd-insecure",
            "--etcd-prefix",
            ETCD_PREFIX,
            "--metrics-addr",
            "127.0.0.1:9109",
        ])
        .env("FLAXD_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
        crate::proc::enter_netns(&mut cmd, n.netns())?;
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        Ok(Flaxd { child: Some(child) })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// `flaxd --leave` for `node`: its lease revoked and its record deleted.
    fn leave(bed: &Bed, bin: &Path, node: usize, etcd_url: &str) -> Result<()> {
        let n = bed.node(node);
        let mut cmd = std::process::Command::new(bin);
        cmd.args([
            "--leave",
            "--node-name",
            &n.node.name,
            "--source",
            "etcd",
            "--etcd-endpoints",
            etcd_url,
            // The bench's throwaway etcd on the bed's loopback is plaintext.
            "--etcd-insecure",
            "--etcd-prefix",
            ETCD_PREFIX,
        ])
        .env("FLAXD_LOG", "warn")
        .stdin(std::process::Stdio::null());
        crate::proc::enter_netns(&mut cmd, n.netns())?;
        let out = cmd
            .output()
            .with_context(|| format!("run {} --leave", bin.display()))?;
        if !out.status.success() {
            bail!(
                "flaxd --leave for {} failed ({}): {}",
                n.node.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// SIGTERM, then wait (bounded) for it to exit (a restart is not a departure: the
    /// node stays a member until [`Flaxd::leave`] or its lease TTL).
    fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("flaxd (pid {pid}) did not stop within 10 s of SIGTERM; killed")
    }
}

impl Drop for Flaxd {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "flaxd stop");
        }
    }
}

/// `VmRSS` and `VmHWM` of a process, KiB.
fn rss(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

async fn measure(
    bed: &Bed,
    flaxd: &Path,
    rounds: usize,
    sizes: &[usize],
    rounds_per_size: usize,
) -> Result<Measured> {
    let nodes = bed.cluster.nodes().len();
    let data: PathBuf = bed.root.path().join("etcd");
    let url = format!("http://{}:{ETCD_PORT}", bed.node(0).underlay_ip());
    let mut etcd = Etcd::start(bed.node(0).netns(), &data, &url).await?;
    let ovs = ovs::Watch::connect(bed).await?;
    let real: Vec<IpAddr> = bed.vteps();

    // Initial: every flaxd started, until the full mesh exists.
    let started = Instant::now();
    let mut daemons: Vec<Flaxd> = (0..nodes)
        .map(|i| Flaxd::start(bed, flaxd, i, &url))
        .collect::<Result<_>>()?;
    ovs.wait(CONVERGE_TIMEOUT, |i, t| t.has_all(&real, real[i]))
        .await
        .context("initial full mesh")?;
    let initial_ms = started.elapsed().as_secs_f64() * 1e3;
    let (idle, _) = rss(daemons[0].pid().unwrap_or(0));

    // A real node leaves and joins again.
    let last = nodes - 1;
    let gone = real[last];
    let (mut joins, mut leaves) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        daemons[last].stop()?;
        Flaxd::leave(bed, flaxd, last, &url)?;
        ovs.wait(CONVERGE_TIMEOUT, |i, tun| i == last || !tun.has(gone))
            .await
            .context("peers dropping a stopped node")?;
        leaves.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        daemons[last] = Flaxd::start(bed, flaxd, last, &url)?;
        ovs.wait(CONVERGE_TIMEOUT, |i, tun| tun.has_all(&real, real[i]))
            .await
            .context("a restarted node rejoining")?;
        joins.push(t.elapsed().as_secs_f64() * 1e3);
    }

    // Scale: synthetic members.
    let mut scale = Vec::new();
    let mut peak = 0;
    for &m in sizes {
        let fake = crate::vteps::vtep_list(&[], m + 1);
        let (bulk, extra) = fake.split_at(m);
        let t0 = etcd.put_members("fake", bulk).await?;
        let want = real.len() - 1 + m;
        ovs.wait(CONVERGE_TIMEOUT, |_, t| t.count() >= want)
            .await
            .with_context(|| format!("{m} members joining"))?;
        let bulk_join_ms = t0.elapsed().as_secs_f64() * 1e3;
        let (rss_now, hwm) = rss(daemons[0].pid().unwrap_or(0));
        peak = peak.max(hwm);
        let (mut j, mut l) = (Vec::new(), Vec::new());
        for _ in 0..rounds_per_size {
            let t = etcd.put_members("extra", extra).await?;
            ovs.wait(CONVERGE_TIMEOUT, |_, tun| tun.has(extra[0]))
                .await
                .context("one member joining")?;
            j.push(t.elapsed().as_secs_f64() * 1e3);
            let t = etcd.delete_members("extra").await?;
            ovs.wait(CONVERGE_TIMEOUT, |_, tun| !tun.has(extra[0]))
                .await
                .context("one member leaving")?;
            l.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let t = etcd.delete_members("fake").await?;
        ovs.wait(CONVERGE_TIMEOUT, |i, tun| {
            tun.count() == real.len() - 1 && tun.has_all(&real, real[i])
        })
        .await
        .with_context(|| format!("{m} members leaving"))?;
        let bulk_leave_ms = t.elapsed().as_secs_f64() * 1e3;
        tracing::info!(members = m, "convergence measured");
        scale.push(ScalePoint {
            members: m + real.len(),
            bulk_join_ms,
            join_one_ms: Summary::of(&j).context("no join samples")?,
            leave_one_ms: Summary::of(&l).context("no leave samples")?,
            bulk_leave_ms,
            flaxd_rss_kib: rss_now,
        });
    }
    let (_, hwm) = rss(daemons[0].pid().unwrap_or(0));
    peak = peak.max(hwm);
    for d in &mut daemons {
        d.stop()?;
    }
    etcd.stop();
    Ok(Measured {
        nodes,
        debounce_ms: FLAXD_DEBOUNCE_MS,
        initial_ms,
        node_join_ms: Summary::of(&joins).context("no join rounds")?,
        node_leave_ms: Summary::of(&leaves).context("no leave rounds")?,
        scale,
        flaxd_rss_idle_kib: idle,
        flaxd_peak_rss_kib: peak,
    })
}
