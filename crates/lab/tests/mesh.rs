//! The demo as a test (root, real kernel, OVS, reference plugins and linen):
//! 3 nodes x 2 pods in a mesh, the full ping matrix, a cross-node TCP
//! transfer, and a teardown that leaves nothing.

mod common;

use std::time::Instant;

use common::{TestLab, assert_nothing_left, ovs_pids, pings_pass};
use linen_lab::{Cluster, ClusterSpec, traffic};

#[test]
fn mesh_of_three_pings_everywhere_moves_tcp_and_leaves_nothing() {
    let lab = TestLab::new();
    let start = Instant::now();
    let mut cluster = Cluster::up(ClusterSpec {
        pods_per_node: 2,
        ..lab.spec(3)
    })
    .expect("up");
    eprintln!("up with 6 pods: {:.1}s", start.elapsed().as_secs_f64());
    let state = cluster.state().clone();
    assert_eq!(state.pods.len(), 6);
    for pod in &state.pods {
        let ip = pod.ip.expect("address");
        let node = state.nodes.iter().find(|n| n.index == pod.node).unwrap();
        assert!(
            node.pods.node_cidr.contains(&ip.addr()),
            "{ip} on {}",
            node.name
        );
        assert_eq!(ip.prefix_len(), 16);
        assert_eq!(pod.mtu, Some(1450), "{}", pod.name);
        assert_eq!(pod.gateway, Some(node.pods.gateway));
        assert!(pod.mac.is_some());
        assert!(pod.netns.exists());
        // Conflist written where it can be read, host-local state inside the lab.
        assert!(node.conflist_path().is_file());
    }
    assert!(
        node_leases(&state)
            .iter()
            .all(|p| p.starts_with(&state.dir))
    );

    let matrix = pings_pass(&state);
    assert_eq!(matrix.probes.len(), 6 * 5 + 6);

    let (client, server) = traffic::cross_node_pods(&state).expect("pods on two nodes");
    assert_ne!(client.node, server.node);
    let overlay = traffic::between_pods(client, server, 2).expect("tcp over the overlay");
    println!("overlay {:.0} Mbit/s", overlay.throughput.mbps);
    assert!(overlay.throughput.mbps > 0.0, "{overlay:?}");

    let pids: Vec<i32> = state.nodes.iter().flat_map(ovs_pids).collect();
    cluster.down().expect("down");
    lab.assert_gone(&pids);
    assert_nothing_left(&lab);
}

fn node_leases(state: &linen_lab::LabState) -> Vec<std::path::PathBuf> {
    state.nodes.iter().map(|n| n.ipam_dir()).collect()
}
