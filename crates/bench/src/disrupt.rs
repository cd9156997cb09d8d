//! Section 7: what operations on a node cost the data path. **Runs only when a `flaxd`
//! binary was built next to `linen`** (and `etcd` is installed); otherwise the section is
//! reported as "not measured".
//!
//! On an etcd lab of its own (`linen_lab::Cluster`: 3 nodes, a flaxd each, 1 pod each; the
//! other sections' bed uses static membership), a continuous ping runs from n1's pod to
//! n2's and from n2's pod to n3's while node n2 goes through:
//! - flaxd stopped with SIGTERM and started again 2 s later (a rolling update);
//! - flaxd SIGKILLed and started again 2 s later, within the lease TTL (a crash);
//! - ovs-vswitchd SIGKILLed and started again at once (reported: OVS itself rebuilds its
//!   datapath from OVSDB; packets in between are lost, and Linen cannot prevent that);
//! - ovsdb-server SIGKILLed and started again at once over the same database (reported:
//!   ovs-vswitchd keeps forwarding with the configuration it has and reconnects; flaxd's
//!   monitor reconnects and finds nothing to change).
//!
//! Every packet counted comes from ping's own summary (a fixed count, so the last replies
//! are awaited and nothing in flight counts as lost).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use linen_lab::flaxd::Health;
use linen_lab::stream::{Loss, Stream};
use linen_lab::{Cluster, ClusterSpec, LabState, Membership, Pod, StopMode};
use serde::{Deserialize, Serialize};

use crate::bed::Bed;
use crate::report::{Outcome, Report};

const NODES: usize = 3;
/// The lease TTL of the lab's flaxds, seconds.
const TTL: u32 = 10;
const INTERVAL: Duration = Duration::from_millis(25);
/// Traffic before the operation starts.
const BEFORE: Duration = Duration::from_secs(1);
/// Between a flaxd's end and the next one's start, as in a rolling update.
const GAP: Duration = Duration::from_secs(2);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Disruption {
    Measured(Box<Figures>),
    NotMeasured { reason: String },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Figures {
    pub nodes: usize,
    pub lease_ttl_s: u32,
    pub interval_ms: u64,
    pub gap_ms: u64,
    pub window_ms: u64,
    pub events: Vec<Event>,
}

/// One kind of operation, over every round, both streams (into and out of the node).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    pub what: String,
    pub rounds: usize,
    pub sent: u32,
    pub lost: u32,
    /// The longest outage any stream saw, ms.
    pub longest_outage_ms: f64,
    /// From the operation until the node is healthy and the overlay converged, worst round, ms.
    pub settled_ms: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    FlaxdTerm,
    FlaxdKill,
    Vswitchd,
    OvsdbServer,
}

impl Op {
    fn what(self) -> String {
        let gap = GAP.as_secs();
        match self {
            Op::FlaxdTerm => format!("flaxd SIGTERM, new flaxd {gap} s later"),
            Op::FlaxdKill => format!("flaxd SIGKILL, new flaxd {gap} s later (TTL {TTL} s)"),
            Op::Vswitchd => "ovs-vswitchd SIGKILL, restarted at once".into(),
            Op::OvsdbServer => "ovsdb-server SIGKILL, restarted at once".into(),
        }
    }
}

/// Runs the section if it can; `NotMeasured` names why not.
pub fn run(bed: &Bed, rounds: usize, window: Duration) -> Result<Disruption> {
    if bed.bins.flaxd.is_none() {
        return Ok(Disruption::NotMeasured {
            reason: "flaxd not available".into(),
        });
    }
    if !Path::new("/usr/bin/etcd").is_file() {
        return Ok(Disruption::NotMeasured {
            reason: "etcd not available (install etcd-server)".into(),
        });
    }
    let name = format!("lbd{:05}", std::process::id() % 100_000);
    let spec = ClusterSpec {
        dir: Some(bed.root.path().join(&name)),
        membership: Membership::Etcd,
        lease_ttl: TTL,
        pods_per_node: 1,
        ..ClusterSpec::new(&name, NODES)
    };
    let mut cluster = Cluster::up(spec).context("the etcd lab")?;
    let mut events = Vec::new();
    for op in [Op::FlaxdTerm, Op::FlaxdKill, Op::Vswitchd, Op::OvsdbServer] {
        events.push(measure(&mut cluster, op, rounds, window)?);
    }
    cluster.down().context("the etcd lab down")?;
    Ok(Disruption::Measured(Box::new(Figures {
        nodes: NODES,
        lease_ttl_s: TTL,
        interval_ms: INTERVAL.as_millis() as u64,
        gap_ms: GAP.as_millis() as u64,
        window_ms: window.as_millis() as u64,
        events,
    })))
}

fn pod_on<'a>(state: &'a LabState, node: &str) -> Result<&'a Pod> {
    let index = state.node(node).context("node")?.index;
    state
        .pods_on(index)
        .find(|p| p.ip.is_some())
        .with_context(|| format!("a wired pod on {node}"))
}

fn measure(cluster: &mut Cluster, op: Op, rounds: usize, window: Duration) -> Result<Event> {
    let state = cluster.state().clone();
    let (p1, p2, p3) = (
        pod_on(&state, "n1")?,
        pod_on(&state, "n2")?,
        pod_on(&state, "n3")?,
    );
    let ip = |p: &Pod| p.ip.map(|i| i.addr()).context("a pod address");
    let count = (window.as_millis() / INTERVAL.as_millis()) as u32;
    let mut ev = Event {
        what: op.what(),
        rounds,
        sent: 0,
        lost: 0,
        longest_outage_ms: 0.0,
        settled_ms: 0.0,
    };
    for _ in 0..rounds {
        // Warm: ARP resolved and every tunnel there before the streams start.
        if linen_lab::ping::ping(p1, ip(p2)?, 5).is_none()
            || linen_lab::ping::ping(p2, ip(p3)?, 5).is_none()
        {
            bail!("pods do not ping before {}", op.what());
        }
        let into = Stream::start(p1, ip(p2)?, INTERVAL, count)?;
        let out_of = Stream::start(p2, ip(p3)?, INTERVAL, count)?;
        let started = Instant::now();
        std::thread::sleep(BEFORE);
        let t = Instant::now();
        match op {
            Op::FlaxdTerm | Op::FlaxdKill => {
                let mode = if op == Op::FlaxdTerm {
                    StopMode::Clean
                } else {
                    StopMode::Crash
                };
                cluster.stop_flaxd("n2", mode)?;
                std::thread::sleep(GAP);
                cluster.start_flaxd("n2")?;
            }
            Op::Vswitchd => cluster.restart_vswitchd("n2")?,
            Op::OvsdbServer => cluster.restart_ovsdb_server("n2")?,
        }
        let n2 = cluster.state().node("n2").context("n2")?.clone();
        linen_lab::wait::until("n2's flaxd healthy", CONVERGE_TIMEOUT, || {
            (n2.flaxd_health() == Health::Healthy).then_some(())
        })?;
        cluster.await_overlay()?;
        let settled = t.elapsed();
        if started.elapsed() >= window {
            bail!(
                "{} took {settled:?}, longer than the ping window",
                op.what()
            );
        }
        let losses: Vec<Loss> = vec![into.finish()?, out_of.finish()?];
        for l in &losses {
            ev.sent += l.sent;
            ev.lost += l.lost();
            ev.longest_outage_ms = ev
                .longest_outage_ms
                .max(l.longest_outage().as_secs_f64() * 1e3);
        }
        ev.settled_ms = ev.settled_ms.max(settled.as_secs_f64() * 1e3);
        tracing::info!(what = ev.what, ?losses, "disruption measured");
    }
    Ok(ev)
}

/// The report's section.
pub fn markdown(o: &mut String, r: &Report) {
    let _ = writeln!(
        o,
        "## 7. Disruption: packets lost while a node's daemons restart\n"
    );
    let figures = match &r.disruption {
        Outcome::Done(Disruption::Measured(f)) => f,
        Outcome::Done(Disruption::NotMeasured { reason }) => {
            let _ = writeln!(o, "Not measured: {reason}.\n");
            return;
        }
        Outcome::Failed(e) => {
            let _ = writeln!(o, "**Failed**: {e}\n");
            return;
        }
        Outcome::Skipped => {
            let _ = writeln!(o, "Skipped in this run.\n");
            return;
        }
    };
    let _ = writeln!(
        o,
        "An etcd lab of {} nodes (flaxd lease TTL {} s), a ping every {} ms from n1's pod to \
         n2's and from n2's pod to n3's, {} ms per stream, while n2 goes through each event. \
         Packets are ping's own count; the outage is the longest run of unanswered pings; \
         settled is from the event (for flaxd: the stop, so the {} ms gap is included) until \
         n2's flaxd is healthy and every node has its tunnels.\n",
        figures.nodes, figures.lease_ttl_s, figures.interval_ms, figures.window_ms, figures.gap_ms
    );
    let _ = writeln!(
        o,
        "| event on n2 | rounds | pings sent | lost | longest outage | settled (worst) |\n| --- | --- | --- | --- | --- | --- |"
    );
    for e in &figures.events {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {:.0} ms | {:.0} ms |",
            e.what, e.rounds, e.sent, e.lost, e.longest_outage_ms, e.settled_ms
        );
    }
    let _ = writeln!(
        o,
        "\nA flaxd restart is not a departure: the node keeps its etcd record and lease, the new \
         flaxd adopts them and finds OVS already right, so peers change nothing. ovs-vswitchd \
         is in the data path: until it has rebuilt its datapath and ports from OVSDB, frames \
         through it are dropped; OVS guarantees the configuration survives (it is in OVSDB), \
         not the packets in between. ovsdb-server is not in the data path: ovs-vswitchd keeps \
         forwarding with the configuration it holds and reconnects, and so does flaxd (the \
         settled time is flaxd's reconnect and resync).\n"
    );
}
