//! containerd's CRI as the caller (root, real parts): on an etcd lab (a flaxd per node
//! writing `10-linen.conflist`), a containerd 1.6 per node runs real pod sandboxes asked for
//! over the CRI v1 gRPC API, as kubelet asks — RunPodSandbox with port mappings,
//! PodSandboxStatus, CreateContainer/StartContainer and ExecSync for the checks,
//! StopPodSandbox, RemovePodSandbox. containerd's CRI plugin (libcni) runs the chain:
//! loopback, bridge + host-local, linen, portmap. The checks: the sandbox's address is from
//! its node's subnet and its MTU is fitted; it pings a sandbox on another node; egress to a
//! host outside the cluster is SNATed to the node while pod-to-pod traffic keeps the pod's
//! address; its hostPort answers from another node and from its own; a second sandbox on
//! the same hostPort fails with linen's error and leaks nothing; Stop/Remove release the
//! lease, the veth and the port; churn through CRI leaks nothing, and its latency is
//! printed next to the lab's direct CNI path.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{TestLab, assert_nothing_left, eventually};
use linen_lab::cri::{self, Cri};
use linen_lab::pod::PortMapping;
use linen_lab::probe::{OutsideHost, PeerServer, ask_at};
use linen_lab::{Cluster, Node};

const STEP: Duration = Duration::from_secs(2);

fn require_tools() {
    testkit::require::root();
    testkit::require::file("/usr/bin/containerd", "containerd");
    testkit::require::file("/usr/bin/containerd-shim-runc-v2", "containerd");
    testkit::require::file("/usr/bin/ctr", "containerd");
    testkit::require::file("/usr/sbin/runc", "runc");
    testkit::require::file("/bin/busybox", "busybox-static");
    testkit::require::file("/usr/lib/cni/loopback", "containernetworking-plugins");
}

/// The veths of a node, by name.
fn veths(node: &Node) -> BTreeSet<String> {
    common::run(&mut node.netns.ip(["-o", "link", "show", "type", "veth"]))
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

/// host-local's leases on a node (one file per address).
fn leases(node: &Node) -> BTreeSet<String> {
    std::fs::read_dir(node.ipam_dir().join("linen-lab"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

fn host_ports(node: &Node) -> BTreeSet<String> {
    std::fs::read_dir(node.host_port_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The node's NAT table without comments and counters.
fn nat(node: &Node) -> Vec<String> {
    let out = node
        .netns
        .command("iptables-save")
        .args(["-t", "nat"])
        .output()
        .expect("iptables-save");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(':'))
        .map(str::to_owned)
        .collect()
}

/// A sandbox with a container in it, and where to reach its network.
struct CriPod {
    id: String,
    container: String,
    ip: IpAddr,
    netns: std::path::PathBuf,
}

fn run_pod(cri: &Cri, name: &str, ports: &[PortMapping]) -> CriPod {
    let sandbox = cri.run_pod(name, ports).expect("RunPodSandbox");
    let status = cri.pod_status(&sandbox.id).expect("PodSandboxStatus");
    assert!(status.ready, "{name} is ready");
    let container = cri.start_container(&sandbox, "sleep").expect("a container");
    CriPod {
        ip: *status.ips.first().expect("CRI reports the pod's address"),
        netns: status.netns().expect("the sandbox's pid"),
        id: sandbox.id,
        container,
    }
}

fn exec_ok(cri: &Cri, pod: &CriPod, argv: &[&str]) -> String {
    let out = cri.exec(&pod.container, argv).expect("ExecSync");
    assert_eq!(
        out.exit_code, 0,
        "{argv:?} in {}: {}{}",
        pod.id, out.stdout, out.stderr
    );
    out.stdout
}

#[test]
fn cri_sandboxes_get_a_linen_network_reach_pods_and_the_outside_and_serve_host_ports() {
    require_tools();
    let lab = TestLab::new();
    let cluster = Cluster::up(lab.etcd_spec(2, 0, 3)).expect("up");
    let state = cluster.state().clone();
    let (n1, n2) = (state.node("n1").unwrap(), state.node("n2").unwrap());
    let (cri1, cri2) = (
        cri::start(n1).expect("containerd on n1"),
        cri::start(n2).expect("containerd on n2"),
    );
    println!("runtime: {}", cri1.version().unwrap());

    let port: PortMapping = "8080:80/tcp".parse().unwrap();
    let started = Instant::now();
    let a = run_pod(&cri1, "a", std::slice::from_ref(&port));
    println!(
        "RunPodSandbox + container on n1: {:.3}s",
        started.elapsed().as_secs_f64()
    );
    let b = run_pod(&cri2, "b", &[]);

    // The address is from the node's subnet, and CRI, host-local and the kernel agree.
    for (pod, node) in [(&a, n1), (&b, n2)] {
        assert!(
            node.pods.node_cidr.contains(&match pod.ip {
                IpAddr::V4(ip) => ip,
                IpAddr::V6(ip) => panic!("IPv4 pods here, got {ip}"),
            }),
            "{} in {}",
            pod.ip,
            node.pods.node_cidr
        );
        assert!(
            leases(node).contains(&pod.ip.to_string()),
            "host-local's lease"
        );
        let cri = if node.index == 1 { &cri1 } else { &cri2 };
        let addr = exec_ok(cri, pod, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(addr.contains(&format!("inet {}/", pod.ip)), "{addr}");
        let mtu = exec_ok(cri, pod, &["cat", "/sys/class/net/eth0/mtu"]);
        assert_eq!(
            mtu.trim(),
            node.pod_mtu().to_string(),
            "the MTU linen fitted"
        );
    }
    // Across the overlay, from inside the container.
    let pinged = eventually("a to ping b across nodes", Duration::from_secs(20), || {
        let out = cri1
            .exec(
                &a.container,
                &["ping", "-c", "1", "-W", "2", &b.ip.to_string()],
            )
            .ok()?;
        (out.exit_code == 0).then_some(out.stdout)
    });
    assert!(pinged.contains("1 packets received"), "{pinged}");

    // Egress: SNATed to the node; pod to pod: the pod's own address.
    let outside = OutsideHost::create(&state, &testkit::name("ext")).expect("outside host");
    let server = PeerServer::start(
        &outside.netns,
        SocketAddr::new(IpAddr::V4(outside.ip.addr()), 8000),
    )
    .expect("server on the outside host");
    let seen = eventually(
        "a to reach the outside host",
        Duration::from_secs(20),
        || ask_at(&a.netns, server.addr, STEP).ok(),
    );
    assert_eq!(
        seen,
        n1.underlay_ip.addr().to_string(),
        "egress SNAT to the node"
    );
    let b_server =
        PeerServer::start_at(&b.netns, SocketAddr::new(b.ip, 8001)).expect("server in b");
    let seen = eventually("a to reach b over TCP", Duration::from_secs(20), || {
        ask_at(&a.netns, b_server.addr, STEP).ok()
    });
    assert_eq!(seen, a.ip.to_string(), "pod-to-pod traffic is not SNATed");

    // a's hostPort 8080 -> a:80, from another node and from its own.
    let _a_server = PeerServer::start_at(&a.netns, SocketAddr::new(a.ip, 80)).expect("server in a");
    let host_port = SocketAddr::new(IpAddr::V4(n1.underlay_ip.addr()), 8080);
    let from_n2 = eventually("the hostPort from n2", Duration::from_secs(20), || {
        ask(&n2.netns, host_port)
    });
    assert_eq!(from_n2, n2.underlay_ip.addr().to_string());
    let from_n1 = eventually("the hostPort from n1", Duration::from_secs(20), || {
        ask(&n1.netns, host_port)
    });
    println!("hostPort from n1 itself seen as {from_n1}");

    // A second sandbox on the same hostPort: refused by linen, and nothing of it is left.
    let before = (
        veths(n1),
        leases(n1),
        host_ports(n1),
        nat(n1),
        cri1.list_pods().unwrap(),
    );
    assert_eq!(before.2, BTreeSet::from(["tcp-8080".to_owned()]));
    let err = cri1
        .run_pod("c", std::slice::from_ref(&port))
        .expect_err("a second sandbox on hostPort 8080");
    let text = linen_lab::error_chain(&err);
    assert!(
        text.contains("hostPort 8080/tcp is already held by container"),
        "a clear error: {text}"
    );
    let after = (
        veths(n1),
        leases(n1),
        host_ports(n1),
        nat(n1),
        cri1.list_pods().unwrap(),
    );
    assert_eq!(after.0, before.0, "no veth left");
    assert_eq!(after.1, before.1, "no lease left");
    assert_eq!(after.2, before.2, "a keeps its port");
    assert_eq!(after.3, before.3, "no NAT rule left");
    assert_eq!(
        after.4.len(),
        before.4.len(),
        "no sandbox left: {:?}",
        after.4
    );
    assert_eq!(
        ask(&n2.netns, host_port).expect("a still answers"),
        n2.underlay_ip.addr().to_string()
    );

    // Stop + Remove: the chain's DEL gives back the lease, the veth and the port.
    let veths_with_a = veths(n1);
    cri1.stop_pod(&a.id).expect("StopPodSandbox");
    cri1.remove_pod(&a.id).expect("RemovePodSandbox");
    assert!(
        !leases(n1).contains(&a.ip.to_string()),
        "a's lease released"
    );
    assert_eq!(veths(n1).len(), veths_with_a.len() - 1, "a's veth removed");
    assert!(host_ports(n1).is_empty(), "a's hostPort released");
    assert!(cri1.list_pods().unwrap().is_empty());

    drop((cri1, cri2, b_server, server, outside));
    drop(cluster);
    assert_nothing_left(&lab);
}

fn ask(ns: &linen_lab::Netns, addr: SocketAddr) -> Option<String> {
    linen_lab::probe::ask(ns, addr, STEP).ok()
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

/// Churn through CRI: sandboxes run, stopped and removed one after another, then the lab's
/// direct CNI path (the `cni` crate's runtime) on the same node, both timed; nothing leaks.
#[test]
fn churn_through_cri_leaks_nothing_and_is_timed_against_the_direct_cni_path() {
    require_tools();
    const ROUNDS: usize = 12;
    let lab = TestLab::new();
    let mut cluster = Cluster::up(lab.etcd_spec(2, 0, 3)).expect("up");
    let n1 = cluster.state().node("n1").unwrap().clone();
    let cri = cri::start(&n1).expect("containerd on n1");
    let (veths0, leases0) = (veths(&n1), leases(&n1));

    let (mut run, mut gone) = (Vec::new(), Vec::new());
    let mut addresses = BTreeSet::new();
    for i in 0..ROUNDS {
        let t = Instant::now();
        let sandbox = cri
            .run_pod(&format!("churn{i}"), &[])
            .expect("RunPodSandbox");
        run.push(t.elapsed());
        let status = cri.pod_status(&sandbox.id).expect("status");
        assert!(status.ready);
        addresses.insert(status.ips[0]);
        let t = Instant::now();
        cri.stop_pod(&sandbox.id).expect("StopPodSandbox");
        cri.remove_pod(&sandbox.id).expect("RemovePodSandbox");
        gone.push(t.elapsed());
    }
    assert_eq!(veths(&n1), veths0, "no veth left after {ROUNDS} CRI pods");
    assert_eq!(leases(&n1), leases0, "no lease left");
    assert!(cri.list_pods().unwrap().is_empty(), "no sandbox left");

    let (mut add, mut del) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let pod = cluster.add_pod("n1").expect("direct ADD");
        add.push(t.elapsed());
        let t = Instant::now();
        cluster.del_pod(&pod.name).expect("direct DEL");
        del.push(t.elapsed());
    }
    assert_eq!(veths(&n1), veths0);
    assert_eq!(leases(&n1), leases0);
    println!(
        "churn, {ROUNDS} pods on n1, medians: CRI RunPodSandbox {:.1} ms, Stop+Remove {:.1} ms; \
         direct CNI (namespace + ADD) {:.1} ms, DEL {:.1} ms; {} distinct addresses through CRI",
        median(run),
        median(gone),
        median(add),
        median(del),
        addresses.len()
    );
    drop(cri);
    drop(cluster);
    assert_nothing_left(&lab);
}

/// `linen-lab up --runtime containerd`: the lab's own pods are CRI sandboxes (their named
/// namespaces bound to the sandboxes'), every lab tool works on them, and the whole pod
/// matrix pings across nodes; deleting a pod goes through StopPodSandbox/RemovePodSandbox.
#[test]
fn a_containerd_lab_wires_its_pods_through_cri_and_every_pod_pings_every_other() {
    require_tools();
    let lab = TestLab::new();
    let mut cluster = Cluster::up(linen_lab::ClusterSpec {
        runtime: linen_lab::Runtime::Containerd,
        ..lab.etcd_spec(2, 2, 3)
    })
    .expect("up --runtime containerd");
    let state = cluster.state().clone();
    assert_eq!(state.pods.len(), 4);
    for pod in &state.pods {
        let node = state.nodes.iter().find(|n| n.index == pod.node).unwrap();
        assert!(pod.sandbox.is_some(), "{} is a CRI sandbox", pod.name);
        let ip = pod.ip.expect("an address").addr();
        assert!(
            node.pods.node_cidr.contains(&ip),
            "{ip} in {}",
            node.pods.node_cidr
        );
        assert_eq!(pod.mtu, Some(node.pod_mtu()));
    }
    let cri = cri::Cri::connect(&cri::Layout::of(state.node("n1").unwrap())).unwrap();
    assert_eq!(
        cri.list_pods().unwrap().len(),
        2,
        "n1's containerd runs n1's pods"
    );
    let matrix = common::pings_pass(&state);
    println!(
        "ping matrix over CRI pods: {} probes passed",
        matrix.probes.len()
    );

    let n1 = state.node("n1").unwrap().clone();
    let gone = state.pods.iter().find(|p| p.node == 1).unwrap().clone();
    cluster.del_pod(&gone.name).expect("del a CRI pod");
    assert!(!gone.netns.exists(), "its namespace binding is gone");
    assert!(
        !leases(&n1).contains(&gone.ip.unwrap().addr().to_string()),
        "lease released"
    );
    assert_eq!(cri.list_pods().unwrap().len(), 1);
    drop(cri);
    drop(cluster);
    assert_nothing_left(&lab);
}
