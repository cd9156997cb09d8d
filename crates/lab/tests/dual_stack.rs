//! Dual-stack pods (root, real packets): with `--ip-family dual` every pod gets an IPv4
//! address from its node's 10.244.N.0/24 and an IPv6 one from its node's fd00:10:244:N::/64
//! (host-local with two ranges, both gateways on the bridge), and the ping matrix passes over
//! both families across nodes: with etcd membership (flaxd gets both cluster CIDRs, records
//! both subnets, writes both ranges into its conflist and masquerades both families), with
//! static membership, and through containerd's CRI.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{TestLab, assert_nothing_left, eventually};
use linen_lab::probe::{OutsideHost, PeerServer, ask};
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
            let text = common::linen_table(n1)?;
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

/// `--underlay ipv6`: the tunnels run between the nodes' IPv6 underlay addresses (VXLAN over
/// IPv6 in OVS's userspace datapath), pods get the IPv6 MTU rule (underlay - 70), and
/// dual-stack pods ping over both families; with flaxd (etcd) and with static membership.
#[test]
fn an_ipv6_underlay_carries_the_overlay() {
    testkit::require::root();
    for membership in [linen_lab::Membership::Etcd, linen_lab::Membership::Static] {
        let lab = TestLab::new();
        let cluster = Cluster::up(ClusterSpec {
            ip_family: IpFamily::Dual,
            underlay: linen_lab::UnderlayFamily::Ipv6,
            membership,
            ..lab.etcd_spec(2, 2, 3)
        })
        .expect("a lab on an IPv6 underlay");
        let state = cluster.state().clone();
        for node in &state.nodes {
            let vtep = node.vtep();
            assert!(vtep.is_ipv6(), "{vtep}");
            let remotes = common::remotes_of(node);
            assert_eq!(remotes.len(), 1, "{remotes:?}");
            assert!(
                remotes[0].contains(':'),
                "an IPv6 tunnel remote: {remotes:?}"
            );
            assert_eq!(node.pod_mtu(), 1500 - 70);
        }
        for pod in &state.pods {
            assert_eq!(pod.mtu, Some(1430), "{}", pod.name);
        }
        check_dual(&state);
        println!(
            "{membership:?}: IPv6 underlay, remotes {:?}",
            common::remotes_of(&state.nodes[0])
        );
        if membership == linen_lab::Membership::Etcd {
            // Egress over IPv6: a host on the underlay with no route to the pods sees the
            // node's IPv6 address (flaxd's ip6 masquerade), in real packets.
            let n1 = state.node("n1").unwrap();
            let pod = state.pods.iter().find(|p| p.node == 1).unwrap();
            let outside =
                OutsideHost::create(&state, &testkit::name("ext6")).expect("outside host");
            let at = SocketAddr::new(
                IpAddr::V6(outside.ip6.expect("on an IPv6 underlay").addr()),
                8000,
            );
            let server = PeerServer::start(&outside.netns, at).expect("server");
            let seen = eventually(
                "a pod to reach the outside host over IPv6",
                Duration::from_secs(20),
                || ask(&pod.netns, at, Duration::from_secs(2)).ok(),
            );
            assert_eq!(
                seen,
                n1.underlay_ip6.unwrap().addr().to_string(),
                "IPv6 egress SNAT to the node"
            );
            assert_eq!(server.seen().len(), 1);
            println!(
                "IPv6 egress from {} seen as {seen}",
                pod.ip6.unwrap().addr()
            );
        }
        drop(cluster);
        assert_nothing_left(&lab);
    }
}

/// `--ip-family ipv6 --underlay ipv6`: IPv6 end to end. Pods have only an IPv6 address from
/// their node's /64, flaxd's conflist has one IPv6 range and its masquerade one ip6 rule, the
/// tunnels run over IPv6, and every pod pings every other and its gateway over IPv6.
#[test]
fn ipv6_only_pods_on_an_ipv6_underlay() {
    testkit::require::root();
    let lab = TestLab::new();
    let cluster = Cluster::up(ClusterSpec {
        ip_family: IpFamily::Ipv6,
        underlay: linen_lab::UnderlayFamily::Ipv6,
        ..lab.etcd_spec(2, 2, 3)
    })
    .expect("an IPv6-only lab");
    let state = cluster.state().clone();
    assert_eq!(state.pods.len(), 4);
    for pod in &state.pods {
        let node = state.nodes.iter().find(|n| n.index == pod.node).unwrap();
        assert_eq!(pod.ip, None, "{}: no IPv4 address", pod.name);
        let ip6 = pod.ip6.expect("an IPv6 address").addr();
        assert!(
            node.pods.v6.as_ref().unwrap().node_cidr.contains(&ip6),
            "{ip6}"
        );
        assert_eq!(pod.mtu, Some(1430));
    }
    let n1 = state.node("n1").unwrap();
    let conf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(n1.conflist_path()).unwrap()).unwrap();
    let ipam = &conf["plugins"][0]["ipam"];
    assert_eq!(ipam["ranges"].as_array().unwrap().len(), 1, "{ipam}");
    assert_eq!(ipam["ranges"][0][0]["subnet"], "fd00:10:244::/48");
    assert_eq!(ipam["routes"], serde_json::json!([{"dst": "::/0"}]));
    let table = eventually("n1's ip6 masquerade rule", Duration::from_secs(20), || {
        let text = common::linen_table(n1)?;
        text.contains("ip6 saddr fd00:10:244:1::/64")
            .then_some(text)
    });
    assert_eq!(
        table.matches("masquerade fully-random").count(),
        1,
        "{table}"
    );
    let matrix = common::pings_pass(&state);
    assert!(matrix.probes.iter().all(|p| p.pair.ip.is_ipv6()));
    assert_eq!(matrix.probes.len(), 4 * 4, "4 pods x (3 pods + gateway)");
    println!("IPv6-only: {} probes passed", matrix.probes.len());
    drop(cluster);
    assert_nothing_left(&lab);
}
