//! The ping matrix: every pod pings every other pod and its own gateway,
//! pairs in parallel on a bounded pool of threads (each ping is a short-lived
//! process that mostly waits), each pair retried a few times to absorb the
//! loss of a first packet while ARP resolves.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::cmd;
use crate::pod::Pod;
use crate::state::LabState;

/// Parallel pings at most.
pub const POOL: usize = 16;
/// Tries per pair before it counts as failed.
pub const ATTEMPTS: u32 = 3;

/// One pair to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// Index of the pinging pod in the matrix's `pods`.
    pub from: usize,
    pub to: Target,
    /// The address pinged: a dual-stack pod is pinged on both.
    pub ip: IpAddr,
}

/// What a pod pings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Another pod, by index in the matrix's `pods`.
    Pod(usize),
    /// The pinging pod's own gateway (its node's Linux bridge).
    Gateway,
}

/// The outcome of one pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub pair: Pair,
    pub ok: bool,
    pub attempts: u32,
}

#[derive(Clone, Debug)]
pub struct Matrix {
    pub pods: Vec<Pod>,
    pub probes: Vec<Probe>,
    pub elapsed: Duration,
}

/// Every pair of wired pods both ways, plus each pod to its gateway, over every address
/// family the pods have (dual-stack: IPv4 and IPv6). Pure.
pub fn plan(pods: &[Pod]) -> Vec<Pair> {
    let mut pairs = Vec::new();
    for (i, from) in pods.iter().enumerate() {
        for (j, to) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            let v4 = to.ip.map(|n| IpAddr::V4(n.addr()));
            let v6 = to
                .ip6
                .filter(|_| from.ip6.is_some())
                .map(|n| IpAddr::V6(n.addr()));
            for ip in v4.into_iter().chain(v6) {
                pairs.push(Pair {
                    from: i,
                    to: Target::Pod(j),
                    ip,
                });
            }
        }
        let gateways = from.gateway.map(IpAddr::V4).into_iter();
        for ip in gateways.chain(from.gateway6.map(IpAddr::V6)) {
            pairs.push(Pair {
                from: i,
                to: Target::Gateway,
                ip,
            });
        }
    }
    pairs
}

/// Runs the whole matrix for the wired pods of `state`.
pub fn run(state: &LabState) -> Matrix {
    let pods: Vec<Pod> = state.wired_pods().cloned().collect();
    run_pairs(pods, |pod, ip| ping(pod, ip, ATTEMPTS))
}

/// Runs `probe` for every pair of [`plan`] on [`POOL`] threads. `probe`
/// returns how many attempts it took, or `None` if it never succeeded.
pub fn run_pairs(pods: Vec<Pod>, probe: impl Fn(&Pod, IpAddr) -> Option<u32> + Sync) -> Matrix {
    let start = Instant::now();
    let pairs = plan(&pods);
    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::with_capacity(pairs.len()));
    std::thread::scope(|s| {
        for _ in 0..POOL.min(pairs.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(pair) = pairs.get(i) else { break };
                    let result = probe(&pods[pair.from], pair.ip);
                    let probe = Probe {
                        pair: pair.clone(),
                        ok: result.is_some(),
                        attempts: result.unwrap_or(ATTEMPTS),
                    };
                    done.lock()
                        .expect("no worker panics holding it")
                        .push((i, probe));
                }
            });
        }
    });
    let mut done = done.into_inner().expect("no worker panicked");
    done.sort_by_key(|(i, _)| *i);
    Matrix {
        pods,
        probes: done.into_iter().map(|(_, p)| p).collect(),
        elapsed: start.elapsed(),
    }
}

/// `ip netns exec POD ping -c1 -W1 IP`, up to `attempts` times.
pub fn ping(pod: &Pod, ip: impl Into<IpAddr>, attempts: u32) -> Option<u32> {
    let ip = ip.into().to_string();
    (1..=attempts).find(|_| cmd::succeeds(pod.netns.command("ping").args(["-c1", "-W1", &ip])))
}

impl Matrix {
    pub fn failures(&self) -> impl Iterator<Item = &Probe> {
        self.probes.iter().filter(|p| !p.ok)
    }

    pub fn passed(&self) -> bool {
        self.failures().next().is_none() && !self.probes.is_empty()
    }

    fn target_name(&self, pair: &Pair) -> String {
        match pair.to {
            Target::Pod(j) => self.pods[j].short_name(),
            Target::Gateway => "gateway".to_owned(),
        }
    }

    /// The table (rows ping columns; `ok`, `FAIL`, `.` for itself), a line
    /// per failure, and a summary.
    pub fn render(&self) -> String {
        let names: Vec<String> = self.pods.iter().map(Pod::short_name).collect();
        let width = names.iter().map(String::len).max().unwrap_or(0).max(4);
        let mut out = String::new();
        let _ = write!(out, "{:<width$}", "from\\to");
        for name in names.iter().chain([&"gw".to_owned()]) {
            let _ = write!(out, " {name:>width$}");
        }
        out.push('\n');
        for (i, name) in names.iter().enumerate() {
            let _ = write!(out, "{name:<width$}");
            // Every address of the target (both families of a dual-stack pod) must answer.
            let cell = |to: Target| {
                let probes: Vec<&Probe> = self
                    .probes
                    .iter()
                    .filter(|p| p.pair.from == i && p.pair.to == to)
                    .collect();
                if probes.is_empty() {
                    "-"
                } else if probes.iter().all(|p| p.ok) {
                    "ok"
                } else {
                    "FAIL"
                }
            };
            for j in 0..names.len() {
                let c = if i == j { "." } else { cell(Target::Pod(j)) };
                let _ = write!(out, " {c:>width$}");
            }
            let _ = writeln!(out, " {:>width$}", cell(Target::Gateway));
        }
        for p in self.failures() {
            let _ = writeln!(
                out,
                "FAIL {} -> {} ({}) after {} attempts",
                names[p.pair.from],
                self.target_name(&p.pair),
                p.pair.ip,
                p.attempts
            );
        }
        let failed = self.failures().count();
        let _ = writeln!(
            out,
            "{} of {} pings passed ({} pods, {:.1}s){}",
            self.probes.len() - failed,
            self.probes.len(),
            self.pods.len(),
            self.elapsed.as_secs_f64(),
            if failed == 0 { "" } else { " -- FAILED" }
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(n: usize) -> Vec<Pod> {
        (1..=n)
            .map(|i| {
                let mut p = Pod::plan("m", 1, u16::try_from(i).unwrap());
                p.ip = Some(format!("10.244.1.{}/16", i + 1).parse().unwrap());
                p.gateway = Some("10.244.1.1".parse().unwrap());
                p
            })
            .collect()
    }

    #[test]
    fn plan_covers_every_ordered_pair_and_gateways() {
        let mut ps = pods(3);
        let pairs = plan(&ps);
        assert_eq!(pairs.len(), 3 * 2 + 3);
        assert!(pairs.iter().all(|p| p.to != Target::Pod(p.from)));
        // A pod without an address is not a target.
        ps[2].ip = None;
        ps[2].gateway = None;
        assert_eq!(plan(&ps).len(), 2 + 2 + 2);
    }

    #[test]
    fn dual_stack_pods_are_pinged_on_both_families() {
        let mut ps = pods(3);
        for (i, p) in ps.iter_mut().enumerate() {
            p.ip6 = Some(format!("fd00:10:244:1::{}/48", i + 2).parse().unwrap());
            p.gateway6 = Some("fd00:10:244:1::1".parse().unwrap());
        }
        let pairs = plan(&ps);
        assert_eq!(pairs.len(), 2 * (3 * 2 + 3));
        assert_eq!(pairs.iter().filter(|p| p.ip.is_ipv6()).count(), 3 * 2 + 3);
        // An IPv4-only pod pings nobody over IPv6, and is pinged over IPv4 only.
        ps[0].ip6 = None;
        ps[0].gateway6 = None;
        let all = plan(&ps);
        let v6: Vec<&Pair> = all.iter().filter(|p| p.ip.is_ipv6()).collect();
        assert_eq!(v6.len(), 2 + 2);
        assert!(v6.iter().all(|p| p.from != 0));
        // The table: a cell is ok only when every family answered.
        let m = run_pairs(ps, |_, ip| ip.is_ipv4().then_some(1));
        assert!(m.render().contains("FAIL"), "{}", m.render());
    }

    #[test]
    fn run_reports_every_pair_in_order() {
        let ps = pods(4);
        let bad: IpAddr = "10.244.1.3".parse().unwrap();
        let m = run_pairs(ps, |_, ip| (ip != bad).then_some(2));
        assert_eq!(m.probes.len(), 4 * 3 + 4);
        assert_eq!(
            m.probes.iter().map(|p| p.pair.clone()).collect::<Vec<_>>(),
            plan(&m.pods)
        );
        assert_eq!(m.failures().count(), 3);
        assert!(!m.passed());
        let text = m.render();
        assert!(
            text.contains("FAIL n1-p1 -> n1-p2 (10.244.1.3) after 3 attempts"),
            "{text}"
        );
        assert!(text.contains("13 of 16 pings passed"), "{text}");
        let ok = run_pairs(pods(2), |_, _| Some(1));
        assert!(ok.passed());
        assert!(!run_pairs(Vec::new(), |_, _| Some(1)).passed());
    }
}
