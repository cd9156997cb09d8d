//! `linen-lab demo`: the project's main command, narrated step by step with
//! the time each step took.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use linen_lab::probe::{self, OutsideHost, PeerServer};
use linen_lab::{
    Cluster, ClusterSpec, LabState, Membership, Pod, Topology, ping, report, traffic, wait,
};

/// Prints `==> what`, runs `f`, prints how long it took.
fn step<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("==> {what}");
    let start = Instant::now();
    let out = f();
    let took = start.elapsed().as_secs_f64();
    match &out {
        Ok(_) => println!("    done in {took:.1}s\n"),
        Err(_) => println!("    failed after {took:.1}s\n"),
    }
    out
}

pub fn run(spec: ClusterSpec, keep: bool, seconds: u32) -> Result<ExitCode> {
    let start = Instant::now();
    let layout = match spec.topology {
        Topology::Mesh => "full mesh of VXLAN tunnels, all protected",
        Topology::Hub => "hub and spokes: node 1 relays between the others",
    };
    println!(
        "Linen lab demo: {} nodes x {} pods ({layout}), lab {} in {}\n",
        spec.nodes,
        spec.pods_per_node,
        spec.name,
        spec.lab_dir().display()
    );
    let pods = usize::from(spec.pods_per_node) * spec.nodes;
    // From here until the lab is down (or kept), Ctrl-C tears it down.
    crate::hold(&spec.name, &spec.lab_dir());
    let membership = match spec.membership {
        Membership::Etcd => format!(
            "; etcd on the underlay and a flaxd per node, which registers it (lease TTL {}s), lays the tunnels to every other node and writes its conflist",
            spec.lease_ttl
        ),
        Membership::Static => "; static membership: conflists list every VTEP".to_owned(),
    };
    let mut cluster = step(
        &format!(
            "Starting {} nodes: a network namespace each, its own ovsdb-server + ovs-vswitchd (userspace datapath), br-phy on a shared underlay{membership}",
            spec.nodes
        ),
        || {
            if spec.pods_per_node > 0 {
                linen_lab::pod::plugin_dirs()?;
            }
            Ok(Cluster::up_nodes(spec.clone())?)
        },
    )?;
    step(
        &format!(
            "Wiring {pods} pods through CNI: bridge (kbr0) + host-local, then linen (OVS br0 + VXLAN)"
        ),
        || Ok(cluster.add_planned_pods()?),
    )?;

    println!("==> Status");
    if let Some((state, nodes)) = linen_lab::status(cluster.dir())? {
        println!("{}\n", indent(&report::status(&state, &nodes)));
    }

    let state = cluster.state().clone();
    let matrix = step(
        "Ping matrix: every pod pings every other pod and its gateway",
        || Ok(ping::run(&state)),
    )?;
    println!("{}\n", indent(&matrix.render()));

    if let Some((client, server)) = traffic::cross_node_pods(&state) {
        transfers(&state, client, server, seconds)?;
    }

    // Egress needs flaxd (it keeps the masquerade table); a static lab has none.
    let egress_ok = match (state.membership, state.pods.first()) {
        (Membership::Etcd, Some(pod)) => egress(&state, pod)?,
        _ => true,
    };

    // hostPort: flaxd's conflist chains portmap (a static lab's conflist does not).
    let host_port_ok = match state.membership {
        Membership::Etcd if pods > 0 => host_port(&mut cluster)?,
        _ => true,
    };

    let passed = matrix.passed() && egress_ok && host_port_ok;
    if keep {
        let state = cluster.detach()?;
        crate::release();
        println!("The lab keeps running. Try:");
        let lab = format!("--name {}", state.name);
        println!("    linen-lab status {lab}");
        println!("    linen-lab ping {lab}");
        if let Some(p) = state.pods.first() {
            println!("    linen-lab exec {lab} {} -- ip addr", p.short_name());
        }
        println!("    linen-lab exec {lab} n1 -- ovs-vsctl show");
        if state.membership == Membership::Etcd {
            println!("    linen-lab add-node {lab} --pods 1");
            println!("    linen-lab flaxd {lab} n2 kill");
        }
        println!("    linen-lab down {lab}");
    } else {
        step(
            "Tearing down: CNI DEL of every pod, flaxd (SIGTERM) and etcd stopped, OVS stopped, namespaces deleted",
            || Ok(cluster.down()?),
        )?;
        crate::release();
    }
    println!(
        "Demo {} in {:.1}s",
        if passed { "passed" } else { "FAILED" },
        start.elapsed().as_secs_f64()
    );
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A pod asking for hostPort 8080 (portmap, chained by flaxd's conflist) on node 1 is reached
/// on node 1's address from another node (node 1 itself in a one-node lab); the pod's server
/// says who it saw. The pod is deleted again (DEL releases the port). `Ok(false)` when the
/// answer did not come from the asking node.
pub fn host_port(cluster: &mut Cluster) -> Result<bool> {
    let port: linen_lab::pod::PortMapping = "8080:80/tcp".parse().map_err(anyhow::Error::msg)?;
    let state = cluster.state().clone();
    let n1 = state.nodes.first().context("a lab without nodes")?;
    let from = state.nodes.get(1).unwrap_or(n1);
    let pod = cluster.add_pod_with_ports(&n1.name, std::slice::from_ref(&port))?;
    let ip = pod.ip.context("the hostPort pod has no IPv4 address")?;
    let at = SocketAddr::new(IpAddr::V4(n1.underlay_ip.addr()), port.host_port);
    let seen = {
        let _server = PeerServer::start(&pod.netns, SocketAddr::new(IpAddr::V4(ip.addr()), 80))?;
        step(
            &format!(
                "hostPort: pod {} asks for {port}; {} connects to {at} (portmap DNAT to the pod)",
                pod.short_name(),
                from.name
            ),
            || {
                Ok(wait::until(
                    "the hostPort to answer",
                    Duration::from_secs(20),
                    || probe::ask(&from.netns, at, Duration::from_secs(2)).ok(),
                )?)
            },
        )?
    };
    cluster.del_pod(&pod.name)?;
    let ok = seen == from.underlay_ip.addr().to_string();
    println!(
        "    the pod behind {at} answered and saw {seen} ({})\n",
        if ok {
            "the connecting node"
        } else {
            "NOT the connecting node"
        }
    );
    Ok(ok)
}

/// A pod opens a TCP connection to a host on the underlay that is not a node and has no
/// route to the pod network: only the masquerade flaxd keeps lets it through, and the host
/// sees the node's address. Prints what the host saw; `Ok(false)` when it was not the node.
pub fn egress(state: &LabState, pod: &Pod) -> Result<bool> {
    let node = state
        .nodes
        .iter()
        .find(|n| n.index == pod.node)
        .context("the pod's node")?;
    let outside = OutsideHost::create(state, &format!("{}-ext", state.name))?;
    let server = PeerServer::start(
        &outside.netns,
        SocketAddr::new(IpAddr::V4(outside.ip.addr()), 8000),
    )?;
    let seen = step(
        &format!(
            "Egress: pod {} opens TCP to {} outside the cluster (no route back to pods); flaxd's nftables masquerade on {}",
            pod.short_name(),
            outside.ip.addr(),
            node.name
        ),
        || {
            Ok(wait::until(
                "a pod to reach the outside host",
                Duration::from_secs(20),
                || probe::ask(&pod.netns, server.addr, Duration::from_secs(2)).ok(),
            )?)
        },
    )?;
    let node_ip = node.underlay_ip.addr().to_string();
    println!(
        "    the outside host saw {seen} ({})\n",
        if seen == node_ip {
            "the node's address"
        } else {
            "NOT the node's address"
        }
    );
    Ok(seen == node_ip)
}

/// A TCP transfer from `client` to `server` across the overlay, then between
/// their nodes over the underlay, printed with the ratio.
pub fn transfers(state: &LabState, client: &Pod, server: &Pod, seconds: u32) -> Result<()> {
    let server_ip = server.ip.map(|i| i.addr().to_string()).unwrap_or_default();
    let overlay = step(
        &format!(
            "TCP across the overlay: iperf3 from {} to {} ({server_ip}) for {seconds}s",
            client.short_name(),
            server.short_name()
        ),
        || Ok(traffic::between_pods(client, server, seconds)?),
    )?;
    println!("    overlay:  {}\n", rate(&overlay.throughput));
    let node = |index| {
        state
            .nodes
            .iter()
            .find(|n| n.index == index)
            .with_context(|| format!("pod's node n{index} is not in the lab"))
    };
    let (from, to) = (node(client.node)?, node(server.node)?);
    let underlay = step(
        &format!(
            "For comparison, TCP node to node over the underlay: {} to {} ({})",
            from.name,
            to.name,
            to.underlay_ip.addr()
        ),
        || Ok(traffic::between_nodes(from, to, seconds)?),
    )?;
    println!("    underlay: {}", rate(&underlay.throughput));
    if underlay.throughput.mbps > 0.0 {
        println!(
            "    overlay / underlay = {:.2} (pod MTU {}: VXLAN adds 50 bytes a frame; both paths run through\n    OVS's userspace datapath here, so expect noise between runs)\n",
            overlay.throughput.mbps / underlay.throughput.mbps,
            client.mtu.map_or_else(|| "?".to_owned(), |m| m.to_string())
        );
    }
    Ok(())
}

fn rate(t: &traffic::Throughput) -> String {
    let retr = t
        .retransmits
        .map(|r| format!(", {r} retransmits"))
        .unwrap_or_default();
    format!("{:.0} Mbit/s over {:.1}s{retr}", t.mbps, t.seconds)
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
