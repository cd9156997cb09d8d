//! Six nodes with four pods each (root): all come up and the full ping
//! matrix (24 x 23 pod pairs and 24 gateways) passes.

mod common;

use std::time::Instant;

use common::{TestLab, assert_nothing_left, pings_pass};
use linen_lab::{Cluster, ClusterSpec};

#[test]
fn six_nodes_of_four_pods_pass_the_full_matrix() {
    let lab = TestLab::new();
    let start = Instant::now();
    let mut cluster = Cluster::up(ClusterSpec {
        pods_per_node: 4,
        ..lab.spec(6)
    })
    .expect("up");
    let up = start.elapsed();
    let state = cluster.state().clone();
    assert_eq!(state.wired_pods().count(), 24);
    let matrix = pings_pass(&state);
    assert_eq!(matrix.probes.len(), 24 * 23 + 24);
    let down = Instant::now();
    cluster.down().expect("down");
    eprintln!(
        "6x4: up {:.1}s, ping matrix {:.1}s, down {:.1}s",
        up.as_secs_f64(),
        matrix.elapsed.as_secs_f64(),
        down.elapsed().as_secs_f64()
    );
    assert_nothing_left(&lab);
}
