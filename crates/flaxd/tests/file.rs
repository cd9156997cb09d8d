//! flaxd with the static-file source and a real Open vSwitch: the tunnels follow the file
//! through atomic replacement, in-place edits and a broken version. VTEPs are TEST-NET-1
//! addresses that no packet is ever sent to.

mod common;

use std::sync::atomic::Ordering;

use common::{LONG, Node, eventually, init_logs, write_peers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_follow_the_peer_file() {
    init_logs();
    let a = Node::new("a", "192.0.2.1");
    let dir = testkit::tempdir().unwrap();
    let peers = dir.path().join("peers.yaml");
    write_peers(
        &peers,
        &[("a", "192.0.2.1"), ("b", "192.0.2.2"), ("c", "192.0.2.3")],
    );
    let mut cfg = a.config();
    cfg.policy.hub = true;
    cfg.pod_cidr = Some("10.244.1.0/24".parse().unwrap());
    let d = a.start_file(&peers, cfg).await;
    let t = a
        .ovs
        .await_tunnels(&[("b", "192.0.2.2"), ("c", "192.0.2.3")])
        .await;
    assert!(t.values().all(|p| !p.protected), "a hub's tunnels relay");
    assert_eq!(a.await_conflist_subnet().await, "10.244.1.1");

    // Replaced by rename: c leaves, d joins.
    write_peers(
        &peers,
        &[("a", "192.0.2.1"), ("b", "192.0.2.2"), ("d", "192.0.2.4")],
    );
    a.ovs
        .await_tunnels(&[("b", "192.0.2.2"), ("d", "192.0.2.4")])
        .await;

    // A broken file changes nothing (the last good membership stays)...
    std::fs::write(&peers, "- name: b\n  vtep: [not an address\n").unwrap();
    // A pass has seen it: reconcile_once records the source as disconnected first thing.
    eventually("a pass over the broken file", LONG, || async {
        (!d.metrics().source_connected.load(Ordering::Relaxed)).then_some(())
    })
    .await;
    // That pass may still be running: poke OVS (a foreign port, which flaxd leaves alone),
    // so a pass completes after this point, and only then look.
    let passes = d.metrics().reconciles.load(Ordering::Relaxed);
    a.ovs.vsctl(&[
        "add-port",
        "br0",
        "poke",
        "--",
        "set",
        "Interface",
        "poke",
        "type=internal",
    ]);
    eventually("a completed pass after the broken file", LONG, || async {
        (d.metrics().reconciles.load(Ordering::Relaxed) > passes).then_some(())
    })
    .await;
    assert!(!d.members().borrow().connected);
    let remotes: Vec<String> = a
        .ovs
        .tunnels()
        .await
        .keys()
        .map(|ip| ip.to_string())
        .collect();
    assert_eq!(
        remotes,
        ["192.0.2.2", "192.0.2.4"],
        "the last good membership stays"
    );

    // ...and an edit in place (JSON this time) is followed.
    std::fs::write(&peers, r#"[{"name": "e", "vtep": "192.0.2.5"}]"#).unwrap();
    a.ovs.await_tunnels(&[("e", "192.0.2.5")]).await;
    assert!(d.members().borrow().connected);
    d.shutdown().await.unwrap();
}
