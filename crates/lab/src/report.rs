//! Readable tables for `status` and the demo: nodes, pods, tunnels.

use std::fmt::Write as _;

use crate::flaxd::Health;
use crate::manage::{EtcdStatus, FlaxdStatus, NodeStatus, Tunnels, etcd_status};
use crate::spec::Topology;
use crate::state::{LabState, Owner};

/// Columns padded to the widest cell, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (cell, w) in cells.zip(&widths) {
            let _ = write!(text, "{cell:<w$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// The whole `status` report. Probes the lab's etcd, if it has one.
pub fn status(state: &LabState, nodes: &[NodeStatus]) -> String {
    status_with(state, etcd_status(state).as_ref(), nodes)
}

/// The `status` report from what was observed.
pub fn status_with(state: &LabState, etcd: Option<&EtcdStatus>, nodes: &[NodeStatus]) -> String {
    let topology = match state.topology {
        Topology::Mesh => "mesh",
        Topology::Hub => "hub and spokes",
    };
    let owner = match state.owner {
        Owner::Detached => "detached".to_owned(),
        Owner::Process { pid } => format!("owned by pid {pid}"),
    };
    let mut out = format!(
        "lab {} ({topology}, {} nodes, {} pods, {owner}) in {}\n\n",
        state.name,
        state.nodes.len(),
        state.pods.len(),
        state.dir.display()
    );
    out.push_str(&membership_line(etcd));
    out.push_str(&nodes_table(nodes));
    out.push('\n');
    out.push_str(&pods_table(state));
    out.push('\n');
    out.push_str(&tunnels_table(nodes));
    out
}

/// How nodes learn about each other, and etcd's health.
pub fn membership_line(etcd: Option<&EtcdStatus>) -> String {
    match etcd {
        None => "membership: static (conflists list the VTEPs; the lab re-applies on changes)\n\n"
            .to_owned(),
        Some(e) => {
            let state = match (e.pid, e.healthy) {
                (Some(pid), true) => format!("up ({pid}), healthy"),
                (Some(pid), false) => format!("up ({pid}), NOT healthy"),
                (None, _) => "DEAD".to_owned(),
            };
            format!(
                "membership: etcd at {} ({state}); a flaxd per node, lease TTL {}s\n\n",
                e.endpoint, e.lease_ttl
            )
        }
    }
}

/// `up (pid) ok`, `up (pid) 503: why`, `dead`.
fn flaxd_cell(f: &FlaxdStatus) -> String {
    match (f.pid, &f.health) {
        (None, _) => "dead".to_owned(),
        (Some(pid), Health::Healthy) => format!("up ({pid}) healthy"),
        (Some(pid), Health::Unhealthy(why)) => format!("up ({pid}) {why}"),
        (Some(pid), Health::Unreachable(why)) => format!("up ({pid}) /healthz: {why}"),
    }
}

pub fn nodes_table(nodes: &[NodeStatus]) -> String {
    let alive = |pid: Option<i32>| pid.map_or("dead".to_owned(), |p| format!("up ({p})"));
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let netns = if n.netns_exists {
                n.node.netns_path.display().to_string()
            } else {
                format!("(missing) {}", n.node.netns.name())
            };
            let mut row = vec![
                n.node.name.clone(),
                format!("{:?}", n.node.role).to_lowercase(),
                netns,
                n.node.underlay_ip.to_string(),
                n.node.underlay_mtu.to_string(),
                n.node.pods.node_cidr.to_string(),
                alive(n.ovsdb_server),
                alive(n.ovs_vswitchd),
            ];
            if let Some(f) = &n.flaxd {
                row.push(flaxd_cell(f));
            }
            if let Some(up) = n.controller_connected {
                row.push(
                    if up {
                        "connected: yes"
                    } else {
                        "connected: no"
                    }
                    .to_owned(),
                );
            }
            row
        })
        .collect();
    let mut header = vec![
        "NODE", "ROLE", "NETNS", "UNDERLAY", "MTU", "PODS", "OVSDB", "VSWITCHD",
    ];
    if nodes.iter().any(|n| n.flaxd.is_some()) {
        header.push("FLAXD");
    }
    if nodes.iter().any(|n| n.controller_connected.is_some()) {
        header.push("CONTROLLER");
    }
    table(&header, &rows)
}

pub fn pods_table(state: &LabState) -> String {
    if state.pods.is_empty() {
        return "no pods\n".to_owned();
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let rows: Vec<Vec<String>> = state
        .pods
        .iter()
        .map(|p| {
            let node = state
                .nodes
                .iter()
                .find(|n| n.index == p.node)
                .map_or_else(|| format!("n{}", p.node), |n| n.name.clone());
            vec![
                p.name.clone(),
                node,
                // A dual-stack pod: both addresses, IPv4 first.
                opt(both(p.ip, p.ip6)),
                opt(both(p.gateway, p.gateway6)),
                opt(p.mac.clone()),
                opt(p.mtu.map(|m| m.to_string())),
            ]
        })
        .collect();
    table(&["POD", "NODE", "IP", "GATEWAY", "MAC", "MTU"], &rows)
}

pub fn tunnels_table(nodes: &[NodeStatus]) -> String {
    let mut rows = Vec::new();
    for n in nodes {
        let name = n.node.name.clone();
        match &n.tunnels {
            Tunnels::Ports(ports) if !ports.is_empty() => {
                for t in ports {
                    rows.push(vec![
                        name.clone(),
                        t.port.clone(),
                        t.remote.to_string(),
                        if t.protected { "yes" } else { "no (relays)" }.to_owned(),
                        t.source.map_or("?", |s| s.as_str()).to_owned(),
                    ]);
                }
            }
            other => {
                let why = match other {
                    Tunnels::NoOvsdb => "(ovsdb-server not running)".to_owned(),
                    Tunnels::NoBridge => {
                        "(no overlay bridge yet: the first pod or flaxd creates it)".to_owned()
                    }
                    Tunnels::Unreadable(e) => format!("(unreadable: {e})"),
                    Tunnels::Ports(_) => "(no tunnels)".to_owned(),
                };
                rows.push(vec![name, why]);
            }
        }
    }
    table(&["NODE", "TUNNEL", "REMOTE", "PROTECTED", "SOURCE"], &rows)
}

/// A pod's IPv4 and IPv6 values, IPv4 first, space-separated; `None` when it has neither.
fn both(v4: Option<impl ToString>, v6: Option<impl ToString>) -> Option<String> {
    let all: Vec<String> = v4
        .map(|a| a.to_string())
        .into_iter()
        .chain(v6.map(|a| a.to_string()))
        .collect();
    (!all.is_empty()).then(|| all.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns() {
        let t = table(
            &["A", "BB"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22222".into()],
            ],
        );
        assert_eq!(t, "A    BB\nxyz  1\nq    22222\n");
    }
}
