//! flaxd against a real Open vSwitch that crashes, restarts, loses its database, and holds
//! rows flaxd did not create. Membership comes from a static peer file (the source does not
//! matter here). VTEPs are TEST-NET-1 addresses that no packet is ever sent to.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use common::{LONG, Node, WriteCounter, eventually, http_get, init_logs, write_peers};

const MESH: &[(&str, &str)] = &[("a", "192.0.2.1"), ("b", "192.0.2.2"), ("c", "192.0.2.3")];
const PEERS: &[(&str, &str)] = &[("b", "192.0.2.2"), ("c", "192.0.2.3")];

/// Waits until ovs-vswitchd has given every one of `ports` an OpenFlow port number: the
/// datapath really has them, not just the database.
async fn await_ofports(node: &Node, ports: &[&str]) {
    eventually(&format!("ofports for {ports:?}"), LONG, || async {
        ports
            .iter()
            .all(|p| node.ovs.ofport(p).is_some())
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_vswitchd_gets_its_tunnels_back() {
    init_logs();
    let mut a = Node::new("a", "192.0.2.1");
    let dir = testkit::tempdir().unwrap();
    let peers = dir.path().join("peers.yaml");
    write_peers(&peers, MESH);
    let d = a.start_file(&peers, a.config()).await;
    a.ovs.await_tunnels(PEERS).await;
    await_ofports(&a, &["vxif192_0_2_2", "vxif192_0_2_3"]).await;

    // ovs-vswitchd dies, and meanwhile a tunnel row is lost.
    a.ovs.kill_vswitchd();
    a.ovs.vsctl(&["del-port", "br0", "vxif192_0_2_2"]);
    a.ovs.start_vswitchd();
    a.ovs.await_tunnels(PEERS).await;
    await_ofports(&a, &["br0", "vxif192_0_2_2", "vxif192_0_2_3"]).await;
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ovsdb_restart_even_on_an_empty_database_is_healed() {
    init_logs();
    let mut a = Node::new("a", "192.0.2.1");
    let dir = testkit::tempdir().unwrap();
    let peers = dir.path().join("peers.yaml");
    write_peers(&peers, MESH);
    let d = a.start_file(&peers, a.config()).await;
    a.ovs.await_tunnels(PEERS).await;

    // Same database: flaxd reconnects and keeps applying changes.
    a.ovs.restart_ovsdb(false);
    write_peers(&peers, &[("a", "192.0.2.1"), ("b", "192.0.2.2")]);
    a.ovs.await_tunnels(&[("b", "192.0.2.2")]).await;

    // An emptied database (root row re-created by the packaging): bridge and tunnels return.
    a.ovs.kill_vswitchd();
    a.ovs.restart_ovsdb(true);
    a.ovs.start_vswitchd();
    a.ovs.await_tunnels(&[("b", "192.0.2.2")]).await;
    await_ofports(&a, &["br0", "vxif192_0_2_2"]).await;
    let owner = a
        .ovs
        .vsctl(&["get", "Bridge", "br0", "external_ids:linen-owner"]);
    assert_eq!(owner.trim().trim_matches('"'), "linen");
    assert!(d.metrics().ovsdb_connected.load(Ordering::Relaxed));
    d.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_flaxd_converges_without_recreating_anything() {
    init_logs();
    let a = Node::new("a", "192.0.2.1");
    let dir = testkit::tempdir().unwrap();
    let peers = dir.path().join("peers.yaml");
    write_peers(&peers, MESH);
    let mut cfg = a.config();
    cfg.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    let uuids = |t: &BTreeMap<_, flaxd::linen::model::ObservedPort>| {
        t.values()
            .map(|p| (p.uuid.clone(), p.interfaces[0].uuid.clone()))
            .collect::<Vec<_>>()
    };

    let first = a.start_file(&peers, cfg.clone()).await;
    let before = uuids(&a.ovs.await_tunnels(PEERS).await);
    let bridge = a.ovs.vsctl(&["get", "Bridge", "br0", "_uuid"]);
    // The operations endpoints, while we are here.
    let addr = first.metrics_addr().unwrap();
    eventually("healthz 200", LONG, || async {
        (http_get(addr, "/healthz").await.0 == 200).then_some(())
    })
    .await;
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "flaxd_members 3",
        "flaxd_tunnels 2",
        "flaxd_source_connected 1",
    ] {
        assert!(body.lines().any(|l| l == line), "{line} in\n{body}");
    }
    first.shutdown().await.unwrap();

    let mut writes = WriteCounter::start(&a.ovs.addr()).await;
    let second = a.start_file(&peers, cfg).await;
    eventually("a successful pass of the new flaxd", LONG, || async {
        let m = second.metrics();
        (m.reconciles.load(Ordering::Relaxed) >= 1 && m.health().is_ok()).then_some(())
    })
    .await;
    assert_eq!(writes.changes().await, Vec::<String>::new(), "OVSDB writes");
    let after = uuids(&a.ovs.await_tunnels(PEERS).await);
    assert_eq!(before, after, "no port or interface was re-created");
    assert_eq!(bridge, a.ovs.vsctl(&["get", "Bridge", "br0", "_uuid"]));
    second.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_port_holding_a_tunnel_name_is_never_touched() {
    init_logs();
    let a = Node::new("a", "192.0.2.1");
    // Someone else's bridge has a port with the name flaxd would give the tunnel to c.
    a.ovs.vsctl(&[
        "add-br",
        "brx",
        "--",
        "set",
        "Bridge",
        "brx",
        "datapath_type=netdev",
        "--",
        "add-port",
        "brx",
        "vxif192_0_2_3",
        "--",
        "set",
        "Interface",
        "vxif192_0_2_3",
        "type=internal",
    ]);
    let foreign = |what: &str| a.ovs.vsctl(&["get", "Port", "vxif192_0_2_3", what]);
    let (uuid, ids) = (foreign("_uuid"), foreign("external_ids"));

    let dir = testkit::tempdir().unwrap();
    let peers = dir.path().join("peers.yaml");
    write_peers(&peers, MESH);
    let d = a.start_file(&peers, a.config()).await;
    // The other tunnel is still made; the conflict is reported.
    a.ovs.await_tunnels(&[("b", "192.0.2.2")]).await;
    eventually("the conflict reported", LONG, || async {
        d.metrics()
            .health()
            .err()
            .filter(|why| why.contains("192.0.2.3"))
    })
    .await;
    assert_eq!(d.metrics().conflicts.load(Ordering::Relaxed), 1);
    assert_eq!((foreign("_uuid"), foreign("external_ids")), (uuid, ids));
    let brx_ports = a.ovs.vsctl(&["list-ports", "brx"]);
    assert!(
        brx_ports.lines().any(|l| l == "vxif192_0_2_3"),
        "{brx_ports}"
    );

    // Once the name is free, the tunnel follows without any other trigger.
    a.ovs.vsctl(&["del-port", "brx", "vxif192_0_2_3"]);
    a.ovs.await_tunnels(PEERS).await;
    eventually("healthy again", LONG, || async {
        d.metrics().health().ok()
    })
    .await;
    d.shutdown().await.unwrap();
}
