//! Hub and spokes (root): spokes have a tunnel to the hub only, the hub's
//! tunnels are unprotected, and spoke-to-spoke pings pass because the hub
//! relays them.

mod common;

use common::{TestLab, assert_nothing_left, pings_pass};
use linen_lab::{Cluster, ClusterSpec, Role, Topology, Tunnels, ping};

#[test]
fn spokes_reach_each_other_through_the_hub() {
    let lab = TestLab::new();
    let mut cluster = Cluster::up(ClusterSpec {
        topology: Topology::Hub,
        pods_per_node: 2,
        ..lab.spec(3)
    })
    .expect("up");
    let (state, nodes) = linen_lab::status(cluster.dir()).unwrap().unwrap();
    for n in &nodes {
        let Tunnels::Ports(ports) = &n.tunnels else {
            panic!("{}: {:?}", n.node.name, n.tunnels);
        };
        let got: Vec<(String, bool)> = ports
            .iter()
            .map(|t| (t.remote.to_string(), t.protected))
            .collect();
        match n.node.role {
            Role::Hub => assert_eq!(
                got,
                [("10.245.2.2".into(), false), ("10.245.2.3".into(), false)]
            ),
            Role::Spoke => assert_eq!(got, [("10.245.2.1".into(), true)]),
            Role::Peer => panic!("no peers in a hub layout"),
        }
    }
    // Spoke to spoke has no direct tunnel: these pings cross the hub.
    let matrix = pings_pass(&state);
    let spoke_to_spoke = matrix
        .probes
        .iter()
        .filter(|p| {
            let from = matrix.pods[p.pair.from].node;
            matches!(p.pair.to, ping::Target::Pod(j) if from != 1 && matrix.pods[j].node != 1 && matrix.pods[j].node != from)
        })
        .count();
    assert_eq!(spoke_to_spoke, 2 * 2 * 2);
    cluster.down().expect("down");
    assert_nothing_left(&lab);
}
