//! Etcd membership under failures (root; real etcd, a real flaxd process per
//! node, real OVS, real packets): a flaxd crashes and comes back, an
//! ovs-vswitchd crashes and comes back. Nothing is repaired by the lab: what
//! heals is flaxd's and OVS's own doing.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{TestLab, assert_nothing_left, eventually, pings_pass, remotes_of, tunnels_of};
use linen::model::Source;
use linen_lab::{Cluster, Daemon, Node, StopMode};

/// flaxd's lease TTL in these labs, seconds.
const TTL: u32 = 3;

fn uuids(node: &Node) -> BTreeMap<IpAddr, String> {
    tunnels_of(node)
        .into_iter()
        .map(|(remote, t)| (remote, t.uuid))
        .collect()
}

#[test]
fn a_killed_flaxd_is_dropped_after_its_lease_and_comes_back_without_recreating_ports() {
    let lab = TestLab::new();
    let mut cluster = Cluster::up(lab.etcd_spec(3, 1, TTL)).expect("up");
    let state = cluster.state().clone();
    let n2 = state.node("n2").unwrap().clone();
    let ip2 = n2.underlay_ip.addr().to_string();
    let others: Vec<Node> = state
        .nodes
        .iter()
        .filter(|n| n.index != 2)
        .cloned()
        .collect();
    let n2_ports = uuids(&n2);
    assert_eq!(n2_ports.len(), 2);

    let killed = Instant::now();
    cluster.stop_flaxd("n2", StopMode::Crash).expect("kill");
    for node in &others {
        eventually(
            format!("{} to drop n2 after its lease", node.name),
            Duration::from_secs(u64::from(TTL) + 10),
            || (!remotes_of(node).contains(&ip2)).then_some(()),
        );
    }
    let took = killed.elapsed();
    eprintln!(
        "SIGKILL until n2 is dropped everywhere: {:.1}s (TTL {TTL}s)",
        took.as_secs_f64()
    );
    // etcd expires a lease no sooner than its TTL (it may extend it by up to
    // an election timeout); a revoked one would be gone in milliseconds.
    assert!(took >= Duration::from_secs(u64::from(TTL) - 1), "{took:?}");
    // A dead flaxd removes nothing: n2 keeps its tunnels meanwhile.
    assert_eq!(uuids(&n2), n2_ports);
    let status = linen_lab::status(cluster.dir()).unwrap().unwrap().1;
    let s2 = status.iter().find(|s| s.node.index == 2).unwrap();
    assert_eq!(
        s2.flaxd.as_ref().and_then(|f| f.pid),
        None,
        "status shows it dead"
    );

    let back = Instant::now();
    cluster.start_flaxd("n2").expect("restart");
    cluster.await_overlay().expect("n2 back everywhere");
    eprintln!(
        "restart until converged: {:.1}s",
        back.elapsed().as_secs_f64()
    );
    for node in &others {
        let t = &tunnels_of(node)[&n2.underlay_ip.addr().into()];
        assert_eq!(t.source, Some(Source::Flaxd));
    }
    // The restarted flaxd converged without deleting and re-creating a port.
    assert_eq!(uuids(&n2), n2_ports);
    assert_eq!(
        n2.flaxd_health(),
        linen_lab::flaxd::Health::Healthy,
        "{}",
        n2.name
    );
    pings_pass(cluster.state());

    cluster.down().expect("down");
    assert_nothing_left(&lab);
}

#[test]
fn a_crashed_vswitchd_comes_back_with_flaxds_tunnels_and_pings_pass() {
    let lab = TestLab::new();
    let cluster = Cluster::up(lab.etcd_spec(3, 1, TTL)).expect("up");
    let state = cluster.state().clone();
    pings_pass(&state);
    let n2 = state.node("n2").unwrap().clone();

    // A plain crash and restart: ovs-vswitchd rebuilds from OVSDB.
    cluster.restart_vswitchd("n2").expect("restart vswitchd");
    pings_pass(&state);

    // A crash during which a tunnel row is lost: flaxd puts it back (it
    // watches OVSDB), and the restarted ovs-vswitchd carries it.
    let lost: IpAddr = state.node("n1").unwrap().underlay_ip.addr().into();
    let before = uuids(&n2);
    let ovs = n2.ovs();
    ovs.kill(Daemon::Vswitchd).expect("kill vswitchd");
    let port = tunnels_of(&n2)[&lost].port.clone();
    common::run(ovs.vsctl().args(["--no-wait", "del-port", "br0", &port]));
    ovs.start_vswitchd().expect("start vswitchd");
    let restored = eventually(
        "flaxd to restore the lost tunnel",
        Duration::from_secs(20),
        || {
            tunnels_of(&n2)
                .remove(&lost)
                .filter(|t| t.uuid != before[&lost])
        },
    );
    assert_eq!(restored.source, Some(Source::Flaxd));
    assert_eq!(restored.port, port);
    pings_pass(&state);

    drop(cluster);
    assert_nothing_left(&lab);
}

#[test]
fn start_right_after_an_outside_kill_starts_a_new_flaxd() {
    let lab = TestLab::new();
    let mut cluster = Cluster::up(lab.etcd_spec(2, 0, TTL)).expect("up");
    let old = cluster
        .state()
        .node("n2")
        .unwrap()
        .flaxd_pid
        .expect("n2's flaxd");
    // SIGKILL from outside the lab (an operator, the OOM killer), then `start` at once:
    // the dying process must not pass for a running one.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let new = cluster.start_flaxd("n2").expect("start");
    assert_ne!(new, old, "start returned the killed flaxd");
    let n2 = cluster.state().node("n2").unwrap().clone();
    // The new process runs flaxd once `ip netns exec` has exec'd it, and answers.
    eventually("n2's new flaxd healthy", Duration::from_secs(20), || {
        (n2.flaxd_running() == Some(new) && n2.flaxd_health() == linen_lab::flaxd::Health::Healthy)
            .then_some(())
    });
    cluster.down().expect("down");
    assert_nothing_left(&lab);
}
