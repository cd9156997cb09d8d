//! Section 5: the data plane. Cross-node pod-to-pod TCP throughput (iperf3 `-J`) and
//! round-trip time (ping), each next to node-to-node over the same underlay, interleaved
//! round by round in the same run.

use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::bed::Bed;
use crate::proc;
use crate::stats::{Summary, ratio};

const IPERF_PORT: &str = "5201";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rtt {
    pub transmitted: u32,
    pub received: u32,
    pub min_ms: f64,
    pub avg_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Path2 {
    /// Receiver-side throughput of each round, Mbit/s.
    pub mbit_s: Vec<f64>,
    pub throughput: Summary,
    pub retransmits: u64,
    pub rtt: Rtt,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataPlane {
    pub seconds_per_round: u32,
    pub rounds: usize,
    pub pings: u32,
    pub pod_mtu: Option<u32>,
    pub overlay: Path2,
    pub underlay: Path2,
    /// overlay / underlay, of median throughputs.
    pub tcp_ratio: f64,
    /// overlay / underlay, of average RTTs.
    pub rtt_ratio: f64,
}

/// Kills the child it holds when dropped (an iperf3 server a failed client left waiting).
struct Reap(Option<Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run(bed: &Bed, rounds: usize, seconds: u32, pings: u32) -> Result<DataPlane> {
    let (n1, n2) = (bed.node(0), bed.node(1));
    let vteps = bed.vteps();
    let (c1, c2) = (n1.chain(&vteps)?, n2.chain(&vteps)?);
    let (p1, p2) = (n1.pod()?, n2.pod()?);
    let r1 = n1
        .exec()
        .add_network_list(&c1, &p1.rt())
        .context("pod ADD on node 1")?;
    let r2 = n2
        .exec()
        .add_network_list(&c2, &p2.rt())
        .context("pod ADD on node 2")?;
    let ip = |r: &cni::types::Result| {
        r.ips
            .iter()
            .map(|i| i.address.addr())
            .find(IpAddr::is_ipv4)
            .context("pod has no IPv4 address")
    };
    ip(&r1)?;
    let ip2 = ip(&r2)?;
    let pod_mtu = link_mtu(&p1.path, crate::bed::POD_IFNAME);
    let u2 = IpAddr::V4(n2.underlay_ip());

    // The first packets learn MACs across the tunnel; not part of any figure.
    ping_until_answered(&p1.path, ip2)?;
    ping_until_answered(n1.netns(), u2)?;

    let mut over = Vec::new();
    let mut under = Vec::new();
    let (mut over_rx, mut under_rx) = (0, 0);
    for _ in 0..rounds {
        crate::stop::check()?;
        let (mbit, rx) = iperf(&p2.path, ip2, &p1.path, seconds)?;
        over.push(mbit);
        over_rx += rx;
        let (mbit, rx) = iperf(n2.netns(), u2, n1.netns(), seconds)?;
        under.push(mbit);
        under_rx += rx;
    }
    let over_rtt = ping(&p1.path, ip2, pings)?;
    let under_rtt = ping(n1.netns(), u2, pings)?;

    n1.exec()
        .del_network_list(&c1, &p1.rt())
        .context("pod DEL on node 1")?;
    n2.exec()
        .del_network_list(&c2, &p2.rt())
        .context("pod DEL on node 2")?;

    let overlay = Path2 {
        throughput: Summary::of(&over).context("no overlay rounds")?,
        mbit_s: over,
        retransmits: over_rx,
        rtt: over_rtt,
    };
    let underlay = Path2 {
        throughput: Summary::of(&under).context("no underlay rounds")?,
        mbit_s: under,
        retransmits: under_rx,
        rtt: under_rtt,
    };
    Ok(DataPlane {
        seconds_per_round: seconds,
        rounds,
        pings,
        pod_mtu,
        tcp_ratio: ratio(overlay.throughput.median, underlay.throughput.median).unwrap_or(0.0),
        rtt_ratio: ratio(overlay.rtt.avg_ms, underlay.rtt.avg_ms).unwrap_or(0.0),
        overlay,
        underlay,
    })
}

/// The MTU of link `name` in the namespace at `netns`.
fn link_mtu(netns: &Path, name: &str) -> Option<u32> {
    let text = proc::ok("ip", &["-j", "link", "show", "dev", name], Some(netns)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v[0]["mtu"].as_u64().and_then(|m| u32::try_from(m).ok())
}

fn ping_until_answered(from: &Path, dst: IpAddr) -> Result<()> {
    let started = Instant::now();
    let d = dst.to_string();
    while started.elapsed() < Duration::from_secs(15) {
        let mut cmd = Command::new("ping");
        cmd.args(["-c1", "-W1", &d]);
        if proc::run(&mut cmd, Some(from), b"")?.ok() {
            return Ok(());
        }
    }
    bail!("{dst} never answered a ping from {}", from.display())
}

/// `ping -c N -i 0.2` from the namespace `from`.
fn ping(from: &Path, dst: IpAddr, count: u32) -> Result<Rtt> {
    let out = proc::ok(
        "ping",
        &[
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            &dst.to_string(),
        ],
        Some(from),
    )?;
    parse_ping(&out).with_context(|| format!("unexpected ping output {out:?}"))
}

pub fn parse_ping(out: &str) -> Option<Rtt> {
    let mut rtt = Rtt::default();
    for line in out.lines() {
        if let Some((tx, rest)) = line.split_once(" packets transmitted, ") {
            rtt.transmitted = tx.trim().parse().ok()?;
            rtt.received = rest.split_whitespace().next()?.parse().ok()?;
        }
        if let Some(v) = line.strip_prefix("rtt min/avg/max/mdev = ") {
            let nums: Vec<f64> = v
                .trim_end_matches(" ms")
                .split('/')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            (rtt.min_ms, rtt.avg_ms, rtt.max_ms) = (*nums.first()?, *nums.get(1)?, *nums.get(2)?);
        }
    }
    (rtt.transmitted > 0 && rtt.avg_ms > 0.0).then_some(rtt)
}

/// One iperf3 run: a one-shot server in `server_ns` bound to `ip`, a client in
/// `client_ns`. (receiver Mbit/s, retransmits).
fn iperf(server_ns: &Path, ip: IpAddr, client_ns: &Path, seconds: u32) -> Result<(f64, u64)> {
    let ip_s = ip.to_string();
    let mut server = Command::new("iperf3");
    server
        .args(["-s", "-1", "-B", &ip_s, "-p", IPERF_PORT])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    proc::enter_netns(&mut server, server_ns)?;
    let mut server = Reap(Some(server.spawn().context("spawn iperf3 server")?));
    let pid = server.0.as_ref().map_or(0, Child::id);
    // A client started before the server listens fails, and iperf3 may still exit 0 then
    // (its JSON holds an "error"): wait for the listening socket first.
    let started = Instant::now();
    while !listening(pid, IPERF_PORT) {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("iperf3 server in {} never listened", server_ns.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut client = Command::new("iperf3");
    client.args([
        "-J",
        "-c",
        &ip_s,
        "-p",
        IPERF_PORT,
        "-t",
        &seconds.to_string(),
    ]);
    let out = proc::run(&mut client, Some(client_ns), b"")?.stdout_str();
    let parsed = parse_iperf(&out);
    // The one-shot server ends with the test; `server` kills it if it does not.
    if let Some(c) = server.0.as_mut() {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end && c.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    parsed.with_context(|| format!("iperf3 to {ip} failed: {}", out.trim()))
}

/// Whether process `pid` has a listening TCP socket on `port` (in its namespace).
fn listening(pid: u32, port: &str) -> bool {
    let Ok(port) = port.parse::<u16>() else {
        return false;
    };
    let want = format!(":{port:04X}");
    ["tcp", "tcp6"].iter().any(|f| {
        std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                let mut cols = l.split_whitespace();
                let local = cols.nth(1).unwrap_or("");
                let state = cols.nth(1).unwrap_or("");
                local.ends_with(&want) && state == "0A"
            })
        })
    })
}

pub fn parse_iperf(json: &str) -> Option<(f64, u64)> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let end = &v["end"];
    let bps = end["sum_received"]["bits_per_second"].as_f64()?;
    let rx = end["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    (bps > 0.0).then_some((bps / 1e6, rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_output() {
        let out = "PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.\n\n--- 10.244.2.2 ping statistics ---\n20 packets transmitted, 19 received, 5% packet loss, time 3805ms\nrtt min/avg/max/mdev = 0.045/0.061/0.081/0.012 ms\n";
        let r = parse_ping(out).unwrap();
        assert_eq!((r.transmitted, r.received), (20, 19));
        assert_eq!((r.min_ms, r.avg_ms, r.max_ms), (0.045, 0.061, 0.081));
        assert!(parse_ping("garbage").is_none());
        assert!(parse_ping("1 packets transmitted, 0 received, 100% packet loss\n").is_none());
    }

    #[test]
    fn iperf_output() {
        let json = r#"{"end": {"sum_sent": {"bits_per_second": 4.1e8, "retransmits": 3},
                        "sum_received": {"bits_per_second": 4.0e8}}}"#;
        assert_eq!(parse_iperf(json), Some((400.0, 3)));
        assert_eq!(parse_iperf("{}"), None);
        assert_eq!(parse_iperf("not json"), None);
    }
}
