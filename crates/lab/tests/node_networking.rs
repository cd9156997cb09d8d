//! Pods behave like pods on any Kubernetes node (root, real packets): egress to a host
//! outside the cluster is masqueraded to the node's address by flaxd's nftables table while
//! pod-to-pod traffic keeps the pod's address; a hostPort (portmap, chained by the conflist
//! flaxd writes) is reachable from another node, from the node itself and from the pod
//! itself; a second pod asking for a held hostPort fails and leaks nothing; flaxd repairs
//! its rules within a resync, leaves foreign nftables tables alone, removes its own only on
//! `--uninstall`, and creates none with `--ip-masq=false`.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{TestLab, eventually, linen_table};
use linen_lab::pod::PortMapping;
use linen_lab::probe::{OutsideHost, PeerServer, ask};
use linen_lab::{Cluster, Node, StopMode};

const STEP: Duration = Duration::from_secs(2);

fn nft(node: &Node, args: &[&str]) -> std::process::Output {
    node.netns
        .command("nft")
        .args(args)
        .output()
        .expect("run nft")
}

fn masq_rules(node: &Node) -> usize {
    linen_table(node).map_or(0, |t| t.matches("masquerade fully-random").count())
}

fn ip_of(pod: &linen_lab::Pod) -> IpAddr {
    IpAddr::V4(pod.ip.expect("a wired pod").addr())
}

#[test]
fn egress_is_masqueraded_to_the_node_and_pod_traffic_is_not() {
    testkit::require::root();
    let lab = TestLab::new();
    let cluster = Cluster::up(lab.etcd_spec(2, 1, 3)).expect("up");
    let state = cluster.state().clone();
    let (n1, n2) = (state.node("n1").unwrap(), state.node("n2").unwrap());
    let p1 = state.pods.iter().find(|p| p.node == 1).unwrap();
    let p2 = state.pods.iter().find(|p| p.node == 2).unwrap();
    eventually(
        "n1's flaxd to lay its masquerade rule",
        Duration::from_secs(20),
        || (masq_rules(n1) == 1).then_some(()),
    );

    // A host on the underlay that is not a node and has no route to the pod network.
    let outside = OutsideHost::create(&state, &testkit::name("ext")).expect("outside host");
    let routes = common::run(&mut outside.netns.ip(["route", "show"]));
    assert!(
        !routes.contains("10.244."),
        "no route back to pods: {routes}"
    );
    let server = PeerServer::start(
        &outside.netns,
        SocketAddr::new(IpAddr::V4(outside.ip.addr()), 8000),
    )
    .expect("server on the outside host");
    let started = Instant::now();
    let seen = eventually(
        "a pod to reach the outside host over TCP",
        Duration::from_secs(20),
        || ask(&p1.netns, server.addr, STEP).ok(),
    );
    println!(
        "egress: pod {} -> outside {} seen from {seen} after {:.2}s",
        ip_of(p1),
        outside.ip.addr(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        seen,
        n1.underlay_ip.addr().to_string(),
        "SNAT to the node's address"
    );
    assert_eq!(server.seen(), [IpAddr::V4(n1.underlay_ip.addr())]);

    // Pod to pod across nodes: the pod's own address arrives.
    let pod_server =
        PeerServer::start(&p2.netns, SocketAddr::new(ip_of(p2), 8001)).expect("server in a pod");
    let seen = eventually("pod to pod over TCP", Duration::from_secs(20), || {
        ask(&p1.netns, pod_server.addr, STEP).ok()
    });
    assert_eq!(
        seen,
        ip_of(p1).to_string(),
        "pod-to-pod traffic is not SNATed"
    );
    let _ = n2;
}

#[test]
fn host_port_from_another_node_the_node_and_the_pod_itself_and_no_double_booking() {
    testkit::require::root();
    let lab = TestLab::new();
    let mut cluster = Cluster::up(lab.etcd_spec(2, 0, 3)).expect("up");
    let port: PortMapping = "8080:80/tcp".parse().unwrap();
    let pod = cluster
        .add_pod_with_ports("n1", std::slice::from_ref(&port))
        .expect("a pod with a hostPort");
    let state = cluster.state().clone();
    let (n1, n2) = (state.node("n1").unwrap(), state.node("n2").unwrap());
    let _server =
        PeerServer::start(&pod.netns, SocketAddr::new(ip_of(&pod), 80)).expect("server in the pod");
    let host_port = SocketAddr::new(IpAddr::V4(n1.underlay_ip.addr()), 8080);
    let from_n2 = eventually(
        "the hostPort from another node",
        Duration::from_secs(20),
        || ask(&n2.netns, host_port, STEP).ok(),
    );
    assert_eq!(from_n2, n2.underlay_ip.addr().to_string());
    let from_n1 = eventually(
        "the hostPort from its own node",
        Duration::from_secs(20),
        || ask(&n1.netns, host_port, STEP).ok(),
    );
    println!("hostPort from n1 itself seen as {from_n1}");
    // Hairpin: the pod through its own node's hostPort (snat makes the reply come back).
    let hairpin = eventually(
        "the pod through its own hostPort",
        Duration::from_secs(20),
        || ask(&pod.netns, host_port, STEP).ok(),
    );
    println!("hostPort from the pod itself seen as {hairpin}");

    // A second pod asking for the same hostPort on the same node.
    let veths = || common::run(&mut n1.netns.ip(["-o", "link", "show", "type", "veth"]));
    let files = |dir: std::path::PathBuf| {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let nat = || {
        let out = n1
            .netns
            .command("iptables-save")
            .args(["-t", "nat"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let (veths0, leases0, ports0, nat0) = (
        veths(),
        files(n1.ipam_dir().join("linen-lab")),
        files(n1.host_port_dir()),
        nat(),
    );
    assert_eq!(ports0, ["tcp-8080"]);
    let err = cluster
        .add_pod_with_ports("n1", std::slice::from_ref(&port))
        .expect_err("a second pod on hostPort 8080");
    let text = linen_lab::error_chain(&err);
    assert!(
        text.contains("hostPort 8080/tcp is already held by container"),
        "a clear error: {text}"
    );
    assert_eq!(veths(), veths0, "no veth left");
    assert_eq!(
        files(n1.ipam_dir().join("linen-lab")),
        leases0,
        "no lease left"
    );
    assert_eq!(
        files(n1.host_port_dir()),
        ports0,
        "the first pod keeps its port"
    );
    assert_eq!(nat(), nat0, "no NAT rule left");
    assert_eq!(cluster.state().pods.len(), 1);
    // The first pod still answers on it.
    assert_eq!(
        ask(&n2.netns, host_port, STEP).expect("still forwarded"),
        n2.underlay_ip.addr().to_string()
    );
    // Deleting the pod gives the port back.
    cluster.del_pod(&pod.name).expect("del");
    assert!(files(n1.host_port_dir()).is_empty());
}

struct Flaxd(Child);

impl Drop for Flaxd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_flaxd(state: &linen_lab::LabState, node: &Node, extra: &[&str], log: &str) -> Flaxd {
    let etcd = state.etcd.as_ref().unwrap();
    let mut cmd = node
        .netns
        .command(&linen_lab::flaxd::binary().unwrap().to_string_lossy());
    cmd.args(linen_lab::flaxd::args(node, etcd)).args(extra);
    let file = std::fs::File::create(node.run_dir.join(log)).unwrap();
    cmd.stdout(file.try_clone().unwrap()).stderr(file);
    Flaxd(testkit::process::spawn(cmd).expect("start flaxd"))
}

fn run_flaxd(node: &Node, args: &[&str]) -> std::process::Output {
    let mut cmd: Command = node
        .netns
        .command(&linen_lab::flaxd::binary().unwrap().to_string_lossy());
    cmd.args(args).output().expect("run flaxd")
}

#[test]
fn masquerade_is_repaired_foreign_tables_are_left_alone_and_uninstall_removes_it() {
    testkit::require::root();
    let lab = TestLab::new();
    let mut cluster = Cluster::up(lab.etcd_spec(2, 0, 3)).expect("up");
    let state = cluster.state().clone();
    let n1 = state.node("n1").unwrap().clone();
    eventually("the masquerade rule", Duration::from_secs(20), || {
        (masq_rules(&n1) == 1).then_some(())
    });
    // SIGTERM removes nothing.
    cluster
        .stop_flaxd("n1", StopMode::Clean)
        .expect("stop flaxd");
    assert_eq!(masq_rules(&n1), 1, "a plain exit leaves the rules");

    // A foreign table and a rule of someone else's, in the node.
    let foreign = testkit::name("f").replace('-', "_");
    let script = format!(
        "table inet {foreign} {{\n chain post {{\n  type nat hook postrouting priority 50; policy accept;\n  ip saddr 10.99.0.0/16 counter return comment \"not linen\"\n }}\n}}\n"
    );
    let mut add = n1.netns.command("nft");
    add.args(["-f", "-"]).stdin(std::process::Stdio::piped());
    let mut child = add.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let listing = || {
        String::from_utf8_lossy(&nft(&n1, &["list", "table", "inet", &foreign]).stdout).into_owned()
    };
    let before = listing();
    assert!(before.contains("not linen"), "{before}");

    let resync = 2;
    let flaxd = start_flaxd(
        &state,
        &n1,
        &[&format!("--resync={resync}")],
        "flaxd-test.log",
    );
    eventually("flaxd to be healthy", Duration::from_secs(20), || {
        (n1.flaxd_health() == linen_lab::flaxd::Health::Healthy).then_some(())
    });
    // Rules deleted by hand: put back within a resync.
    assert!(
        nft(&n1, &["flush", "chain", "inet", "linen", "postrouting"])
            .status
            .success()
    );
    assert_eq!(masq_rules(&n1), 0);
    let t = Instant::now();
    eventually(
        "flaxd to repair the flushed chain",
        Duration::from_secs(20),
        || (masq_rules(&n1) == 1).then_some(()),
    );
    let repair = t.elapsed().as_secs_f64();
    // And the whole table deleted by hand.
    assert!(
        nft(&n1, &["delete", "table", "inet", "linen"])
            .status
            .success()
    );
    let t = Instant::now();
    eventually(
        "flaxd to repair the deleted table",
        Duration::from_secs(20),
        || (masq_rules(&n1) == 1).then_some(()),
    );
    let repair_table = t.elapsed().as_secs_f64();
    println!(
        "repair: flushed chain {repair:.2}s, deleted table {repair_table:.2}s (resync {resync}s)"
    );
    assert!(
        repair <= f64::from(resync) + 1.5,
        "within a resync: {repair:.2}s"
    );
    assert!(
        repair_table <= f64::from(resync) + 1.5,
        "within a resync: {repair_table:.2}s"
    );
    let metrics = n1
        .netns
        .http_get(n1.metrics_addr(), "/metrics", STEP)
        .expect("metrics")
        .1;
    assert!(metrics.contains("flaxd_ip_masq_rules_ok 1"), "{metrics}");
    assert!(
        metrics.contains("flaxd_ip_masq_repairs_total 2"),
        "{metrics}"
    );
    assert!(metrics.contains("flaxd_ip_masq_enabled 1"), "{metrics}");
    assert_eq!(
        listing(),
        before,
        "the foreign table is untouched after resyncs"
    );
    drop(flaxd);

    // Uninstall removes Linen's table only.
    let out = run_flaxd(&n1, &["--uninstall"]);
    assert!(out.status.success(), "{out:?}");
    assert!(linen_table(&n1).is_none(), "uninstall removes the table");
    assert_eq!(
        listing(),
        before,
        "the foreign table is untouched after uninstall"
    );

    // --ip-masq=false creates nothing.
    let _flaxd = start_flaxd(
        &state,
        &n1,
        &[&format!("--resync={resync}"), "--ip-masq=false"],
        "flaxd-test2.log",
    );
    eventually(
        "flaxd (--ip-masq=false) to be healthy",
        Duration::from_secs(20),
        || (n1.flaxd_health() == linen_lab::flaxd::Health::Healthy).then_some(()),
    );
    let metrics = eventually("two resyncs", Duration::from_secs(20), || {
        let m = n1
            .netns
            .http_get(n1.metrics_addr(), "/metrics", STEP)
            .ok()?
            .1;
        let passes = m
            .lines()
            .find_map(|l| l.strip_prefix("flaxd_reconciles_total "))?
            .trim()
            .parse::<u64>()
            .ok()?;
        (passes >= 3).then_some(m)
    });
    assert!(metrics.contains("flaxd_ip_masq_enabled 0"), "{metrics}");
    assert!(
        linen_table(&n1).is_none(),
        "--ip-masq=false creates nothing"
    );
    assert_eq!(listing(), before);
}
