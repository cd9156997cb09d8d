//! The seed's OpenFlow controller end to end (root; real etcd, flaxd, OVS, packets, and a
//! real controller: `linen-lab up --controller` runs Debian's `ovs-testcontroller`, a
//! learning switch, on every node's loopback, and flaxd points the node's bridge at it).
//! Pods ping across the overlay through the controller's flows; when a node's controller
//! dies, its bridge falls back to switching on its own (fail_mode=standalone) and the pings
//! still pass.

mod common;

use std::time::Duration;

use common::{TestLab, assert_nothing_left, eventually, lab_cli, ok, pings_pass};
use linen_lab::{Daemon, LabState, Node};

fn state(lab: &TestLab) -> LabState {
    linen_lab::load(&lab.dir()).unwrap().expect("state")
}

/// The OpenFlow flows of `node`'s bridge, one per line.
fn flows(node: &Node) -> String {
    let mgmt = node.run_dir.join("br0.mgmt");
    common::run(
        std::process::Command::new("ovs-ofctl")
            .arg("dump-flows")
            .arg(format!("unix:{}", mgmt.display())),
    )
}

/// Waits until every node's bridge reports its controller connected (`status`).
fn await_controllers(lab: &TestLab) {
    eventually(
        "every bridge to connect to its controller",
        Duration::from_secs(30),
        || {
            let (_, nodes) = linen_lab::status(&lab.dir()).unwrap().unwrap();
            nodes
                .iter()
                .all(|n| n.controller_connected == Some(true))
                .then_some(())
        },
    );
}

#[test]
fn pods_ping_through_a_real_controller_and_survive_its_death() {
    let lab = TestLab::new();
    let up = ok(&lab_cli(
        &lab,
        &["up", "--nodes", "2", "--pods-per-node", "1", "--controller"],
    ));
    let s = state(&lab);
    assert!(s.nodes.iter().all(|n| n.controller), "{up}");

    // flaxd set the controller; every bridge connects, and `status` says so.
    await_controllers(&lab);
    let status = ok(&lab_cli(&lab, &["status"]));
    assert!(status.contains("CONTROLLER"), "{status}");
    assert_eq!(status.matches("connected: yes").count(), 2, "{status}");
    for node in &s.nodes {
        let target = common::run(node.ovs().vsctl().args(["get-controller", "br0"]));
        assert_eq!(target.trim(), linen_lab::ovs::controller_target());
        // flaxd's conflist carries the same target, so the plugin agrees.
        let conf = std::fs::read_to_string(node.conflist_path()).unwrap();
        assert!(
            conf.contains(&linen_lab::ovs::controller_target()),
            "{conf}"
        );
    }

    // The pods ping each other through the controller's flows: with a controller connected,
    // OVS has no NORMAL fallback flow, so what forwards is what the controller installed.
    pings_pass(&s);
    let n1 = s.node("n1").unwrap().clone();
    let table = flows(&n1);
    assert!(!table.contains("actions=NORMAL"), "{table}");
    assert!(table.contains("actions=output:"), "learned flows: {table}");

    // n2's controller dies: its bridge reports it, falls back to standalone switching
    // (after OVS's inactivity probes), and the pods keep pinging.
    let n2 = s.node("n2").unwrap().clone();
    n2.ovs()
        .kill(Daemon::Controller)
        .expect("kill n2's controller");
    let killed = std::time::Instant::now();
    eventually(
        "n2's bridge to see its controller gone",
        Duration::from_secs(30),
        || {
            let (_, nodes) = linen_lab::status(&lab.dir()).unwrap().unwrap();
            (nodes
                .iter()
                .find(|n| n.node.index == 2)?
                .controller_connected
                == Some(false))
            .then_some(())
        },
    );
    // Fail-open: ovs-vswitchd adds its own hidden NORMAL flow (shown by bridge/dump-flows,
    // not by ovs-ofctl) once the controller has missed its inactivity probes.
    eventually(
        "n2's bridge to switch on its own",
        Duration::from_secs(60),
        || {
            let all = common::run(
                n2.ovs()
                    .appctl(Daemon::Vswitchd)
                    .args(["bridge/dump-flows", "br0"]),
            );
            all.contains("actions=NORMAL").then_some(())
        },
    );
    // A figure for the reader (OVS's rule: three missed inactivity probes), not a bound.
    println!(
        "controller killed -> fail-open NORMAL flow: {:.1}s",
        killed.elapsed().as_secs_f64()
    );
    // Drop what the dead controller had installed: what forwards now is the bridge alone.
    common::run(
        std::process::Command::new("ovs-ofctl")
            .arg("del-flows")
            .arg(format!("unix:{}", n2.run_dir.join("br0.mgmt").display())),
    );
    pings_pass(&s);

    ok(&lab_cli(&lab, &["down"]));
    assert_nothing_left(&lab);
}

/// Static membership (the conflist's `controller`, written by the lab, set by the plugin on
/// ADD) and a hub-and-spoke layout: three nodes, every bridge at its own controller, the
/// spokes' pods reach each other through the hub.
#[test]
fn static_hub_and_spoke_with_controllers_pings_through_the_hub() {
    let lab = TestLab::new();
    ok(&lab_cli(
        &lab,
        &[
            "up",
            "--nodes",
            "3",
            "--pods-per-node",
            "1",
            "--topology",
            "hub",
            "--membership",
            "static",
            "--controller",
        ],
    ));
    let s = state(&lab);
    for node in &s.nodes {
        let conf = std::fs::read_to_string(node.conflist_path()).unwrap();
        assert!(
            conf.contains(&linen_lab::ovs::controller_target()),
            "{conf}"
        );
    }
    await_controllers(&lab);
    for node in &s.nodes {
        let rows = common::run(node.ovs().vsctl().args([
            "--bare",
            "--columns=_uuid",
            "list",
            "Controller",
        ]));
        assert_eq!(
            rows.lines().filter(|l| !l.trim().is_empty()).count(),
            1,
            "{}: {rows}",
            node.name
        );
    }
    pings_pass(&s);
    ok(&lab_cli(&lab, &["down"]));
    assert_nothing_left(&lab);
}

/// A full mesh of three bridges, each at its own learning-switch controller: pods on every
/// node reach each other through the controllers' flows.
#[test]
fn a_three_node_mesh_with_controllers_pings() {
    let lab = TestLab::new();
    ok(&lab_cli(
        &lab,
        &["up", "--nodes", "3", "--pods-per-node", "1", "--controller"],
    ));
    let s = state(&lab);
    await_controllers(&lab);
    pings_pass(&s);
    let table = flows(s.node("n3").unwrap());
    assert!(!table.contains("actions=NORMAL"), "{table}");
    ok(&lab_cli(&lab, &["down"]));
    assert_nothing_left(&lab);
}
