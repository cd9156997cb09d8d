//! Dual-stack pods (root, real packets): with `--ip-family dual` every pod gets an IPv4
//! address from its node's 10.244.N.0/24 and an IPv6 one from its node's fd00:10:244:N::/64
//! (host-local with two ranges, both gateways on the bridge), and the ping matrix passes over
//! both families across nodes: with etcd membership (flaxd gets both cluster CIDRs, records
//! both subnets, writes both ranges into its conflist and masquerades both families), with
//! static membership, and through containerd's CRI.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{TestLab, assert_nothing_left, eventually};
use linen_lab::{Cluster, ClusterSpec, IpFamily, Runtime};

/// Every pod has both addresses, in its node's subnets; the matrix has IPv6 probes and passes.
fn check_dual(state: &linen_lab::LabState) -> usize {
    for pod in &state.pods {
        let node = state.nodes.iter().find(|n| n.index == pod.node).unwrap();
        let v6 = node.pods.v6.as_ref().expect("a dual-stack node");
        let ip = pod.ip.expect("an IPv4 address").addr();
        let ip6 = pod.ip6.expect("an IPv6 address").addr();
        assert!(node.pods.node_cidr.contains(&ip), "{ip}");
        assert!(v6.node_cidr.contains(&ip6), "{ip6} in {}", v6.node_cidr);
        assert_eq!(pod.gateway6, Some(v6.gateway));
    }
    let matrix = common::pings_pass(state);
    let v6 = matrix.probes.iter().filter(|p| p.pair.ip.is_ipv6()).count();
    let v4 = matrix.probes.len() - v6;
    // Every other pod and the gateway, in each family.
    let n = state.pods.len();
    assert_eq!(
        v6,
        n * n,
        "IPv6 probes: {n} pods x ({} pods + gateway)",
        n - 1
    );
    assert_eq!(v4, v6);
    println!("dual-stack ping matrix: {v4} IPv4 + {v6} IPv6 probes passed");
    v6
}

#[test]
fn dual_stack_pods_ping_across_nodes_over_both_families_with_flaxd() {
    testkit::require::root();
    let lab = TestLab::new();
    let cluster = Cluster::up(ClusterSpec {
        ip_family: IpFamily::Dual,
        ..lab.etcd_spec(2, 2, 3)
    })
    .expect("a dual-stack etcd lab");
    let state = cluster.state().clone();
    check_dual(&state);
    let n1 = state.node("n1").unwrap();
    // flaxd's conflist: one range per family, a default route per family.
    let conf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(n1.conflist_path()).unwrap()).unwrap();
    let ipam = &conf["plugins"][0]["ipam"];
    assert_eq!(ipam["ranges"][1][0]["subnet"], "fd00:10:244::/48");
    assert_eq!(ipam["ranges"][1][0]["gateway"], "fd00:10:244:1::1");
    assert_eq!(ipam["routes"][1]["dst"], "::/0");
    // flaxd masquerades both families: an ip and an ip6 rule for this node's subnets.
    let table = eventually(
        "n1's masquerade rules for both families",
        Duration::from_secs(20),
        || {
            let out = n1
                .netns
                .command("nft")
                .args(["list", "table", "inet", "linen"])
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (text.contains("ip saddr 10.244.1.0/24")
                && text.contains("ip6 saddr fd00:10:244:1::/64"))
            .then_some(text)
        },
    );
    assert_eq!(
        table.matches("masquerade fully-random").count(),
        2,
        "{table}"
    );
    // A pod on n2 over IPv6 from inside a pod on n1 (the kernel's own route choice).
    let (p1, p2) = (
        state.pods.iter().find(|p| p.node == 1).unwrap(),
        state.pods.iter().find(|p| p.node == 2).unwrap(),
    );
    let ip6 = IpAddr::V6(p2.ip6.unwrap().addr()).to_string();
    let out = common::run(
        p1.netns
            .command("ping")
            .args(["-c", "3", "-i", "0.2", &ip6]),
    );
    assert!(out.contains("3 received"), "{out}");
    drop(cluster);
    assert_nothing_left(&lab);
}

#[test]
fn dual_stack_pods_with_static_membership_and_through_cri() {
    testkit::require::root();
    let lab = TestLab::new();
    let cluster = Cluster::up(ClusterSpec {
        ip_family: IpFamily::Dual,
        pods_per_node: 2,
        ..lab.spec(2)
    })
    .expect("a dual-stack static lab");
    check_dual(cluster.state());
    drop(cluster);
    assert_nothing_left(&lab);

    testkit::require::file("/usr/bin/containerd", "containerd");
    let lab = TestLab::new();
    let cluster = Cluster::up(ClusterSpec {
        ip_family: IpFamily::Dual,
        runtime: Runtime::Containerd,
        ..lab.etcd_spec(2, 1, 3)
    })
    .expect("a dual-stack containerd lab");
    check_dual(cluster.state());
    drop(cluster);
    assert_nothing_left(&lab);
}
