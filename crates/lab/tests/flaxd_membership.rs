//! Etcd membership end to end (root; real etcd, a real flaxd process per
//! node, real OVS, real packets), through the `linen-lab` CLI: nodes join and
//! leave, and the other nodes' tunnels follow through flaxd alone.

mod common;

use std::time::{Duration, Instant};

use common::{
    TestLab, assert_nothing_left, eventually, fails, lab_cli, lab_cli_env, ok, pings_pass,
    remotes_of, tunnels_of,
};
use linen::model::Source::Flaxd;
use linen_lab::LabState;

fn state(lab: &TestLab) -> LabState {
    linen_lab::load(&lab.dir()).unwrap().expect("state")
}

#[test]
fn a_joining_node_gets_tunnels_from_every_flaxd_and_its_pods_ping_the_others() {
    let lab = TestLab::new();
    let started = Instant::now();
    let up = ok(&lab_cli(
        &lab,
        &["up", "--nodes", "3", "--pods-per-node", "1"],
    ));
    eprintln!("up (etcd, 3x1): {:.1}s", started.elapsed().as_secs_f64());
    assert!(
        up.contains("membership: etcd at https://10.245.2.254:2379"),
        "{up}"
    );
    let before = state(&lab);
    assert!(before.etcd.as_ref().and_then(|e| e.pid).is_some());
    // flaxd wrote each node's conflist: no vtepIPs (it manages tunnels), the
    // lab's planned pod range, host-local's leases inside the lab.
    let conflists: Vec<String> = before
        .nodes
        .iter()
        .map(|n| std::fs::read_to_string(n.conflist_path()).expect("conflist"))
        .collect();
    for (node, text) in before.nodes.iter().zip(&conflists) {
        assert!(!text.contains("vtepIPs"), "{text}");
        assert!(
            text.contains(&format!("\"gateway\": \"{}\"", node.pods.gateway)),
            "{text}"
        );
        assert!(
            text.contains(&node.ipam_dir().display().to_string()),
            "{text}"
        );
    }

    let joined = Instant::now();
    let out = ok(&lab_cli(&lab, &["add-node", "--pods", "1"]));
    eprintln!(
        "add-node with a pod: {:.1}s",
        joined.elapsed().as_secs_f64()
    );
    let after = state(&lab);
    let n4 = after.node("n4").expect("n4").clone();
    assert!(out.contains(&format!("{}-n4-p1", lab.name)), "{out}");
    for node in &after.nodes {
        let tunnels = tunnels_of(node);
        let want: Vec<String> = after
            .nodes
            .iter()
            .filter(|n| n.index != node.index)
            .map(|n| n.underlay_ip.addr().to_string())
            .collect();
        assert_eq!(remotes_of(node), want, "{}", node.name);
        assert!(
            tunnels
                .values()
                .all(|t| t.source == Some(Flaxd) && t.protected),
            "{}: {tunnels:?}",
            node.name
        );
    }
    // The lab did not touch the old nodes: their conflists are flaxd's, unchanged.
    for (node, text) in before.nodes.iter().zip(&conflists) {
        let now = std::fs::read_to_string(node.conflist_path()).unwrap();
        assert_eq!(&now, text, "{}", node.name);
    }
    let p = after.pods_on(n4.index).next().expect("a pod on n4");
    assert!(n4.pods.node_cidr.contains(&p.ip.expect("address").addr()));
    pings_pass(&after);

    let status = ok(&lab_cli(&lab, &["status"]));
    let n4_line = status
        .lines()
        .find(|l| l.starts_with(&n4.name))
        .expect("n4 in status");
    assert!(n4_line.contains("healthy"), "{n4_line}");

    ok(&lab_cli(&lab, &["down"]));
    assert_nothing_left(&lab);
}

#[test]
fn a_leaving_node_revokes_its_lease_and_disappears_at_once() {
    let lab = TestLab::new();
    // A long TTL: only `flaxd --leave` (which del-node runs after SIGTERM)
    // can make n3 go in time; a stopped flaxd alone keeps n3 a member.
    ok(&lab_cli(
        &lab,
        &[
            "up",
            "--nodes",
            "3",
            "--pods-per-node",
            "1",
            "--lease-ttl",
            "60",
        ],
    ));
    let s = state(&lab);
    let n3 = s.node("n3").unwrap().clone();
    let gone_ip = n3.underlay_ip.addr().to_string();
    let flaxd_pid = n3.flaxd_pid.expect("n3's flaxd");

    let left = Instant::now();
    ok(&lab_cli(&lab, &["del-node", "n3"]));
    let s = state(&lab);
    for node in &s.nodes {
        eventually(
            format!("{} to drop its tunnel to n3", node.name),
            Duration::from_secs(10),
            || (!remotes_of(node).contains(&gone_ip)).then_some(()),
        );
    }
    let took = left.elapsed();
    eprintln!(
        "del-node until every tunnel to it is gone: {:.1}s",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(20), "not the revoke: {took:?}");
    assert!(
        !common::alive_in(flaxd_pid, &n3.run_dir),
        "n3's flaxd stopped"
    );
    assert!(!n3.netns.exists() && !n3.run_dir.exists());
    assert_eq!(remotes_of(s.node("n1").unwrap()), ["10.245.2.2"]);
    assert_eq!(remotes_of(s.node("n2").unwrap()), ["10.245.2.1"]);
    pings_pass(&s);

    ok(&lab_cli(&lab, &["down"]));
    assert_nothing_left(&lab);
}

#[test]
fn a_missing_etcd_or_flaxd_is_named_before_anything_is_created() {
    let lab = TestLab::new();
    let err = fails(&lab_cli_env(
        &lab,
        &["up", "--nodes", "1"],
        &[("PATH", "/nonexistent")],
    ));
    assert!(
        err.contains("etcd (not in PATH)") && err.contains("etcd-server"),
        "{err}"
    );
    // linen is there, flaxd is not.
    let bins = testkit::tempdir().unwrap();
    let linen = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("linen"))
        .expect("target dir");
    std::os::unix::fs::symlink(&linen, bins.path().join("linen")).unwrap();
    let dir = bins.path().to_string_lossy().into_owned();
    let err = fails(&lab_cli_env(
        &lab,
        &["up", "--nodes", "1"],
        &[("LINEN_BIN_DIR", &dir)],
    ));
    assert!(
        err.contains("flaxd binary") && err.contains("cargo build -p flaxd"),
        "{err}"
    );
    assert!(lab.namespaces().is_empty());
    assert!(!lab.dir().exists());
    // Static membership needs neither.
    ok(&lab_cli_env(
        &lab,
        &["up", "--nodes", "1", "--membership", "static"],
        &[("LINEN_BIN_DIR", &dir)],
    ));
    ok(&lab_cli(&lab, &["down"]));
    assert_nothing_left(&lab);
}
