//! A simulated node: its names, addresses and paths (a pure plan, table-tested
//! below), and the provisioning of its `br-phy` on top of a running OVS.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cmd::{self, CmdError};
use crate::netns::Netns;
use crate::ovs::Ovs;
use crate::underlay::NODE_UPLINK;
use crate::wait::{self, Timeout};

/// The OVS bridge that owns the node's underlay address; userspace VXLAN
/// leaves through it (see ENVIRONMENT.md).
pub const PHY_BRIDGE: &str = "br-phy";
/// `external_ids` key on every OVS row the lab creates; the value is the lab name.
pub const OWNER_KEY: &str = "linen-lab";
/// All pods of all nodes share this one L2 overlay subnet.
pub const CLUSTER_CIDR: Ipv4Net = ipnet_v4(Ipv4Addr::new(10, 244, 0, 0), 16);
/// The IPv6 pod network of a dual-stack lab (`--ip-family dual`): node `N` gets
/// `fd00:10:244:N::/64`.
pub const CLUSTER_CIDR_V6: &str = "fd00:10:244::/48";
/// Node N has underlay address 10.245.2.N/24, as in the seed's examples.
pub const UNDERLAY_SUBNET: Ipv4Net = ipnet_v4(Ipv4Addr::new(10, 245, 2, 0), 24);
/// VXLAN over IPv4 adds 50 bytes.
pub const VXLAN_OVERHEAD: u32 = 50;
/// Nodes are numbered 1..=MAX_NODES: the index is the last octet of the
/// underlay address and the third octet of the pod range.
pub const MAX_NODES: u8 = 254;

const fn ipnet_v4(addr: Ipv4Addr, prefix: u8) -> Ipv4Net {
    match Ipv4Net::new(addr, prefix) {
        Ok(net) => net,
        Err(_) => panic!("prefix length is at most 32"),
    }
}

#[derive(Debug, Error)]
pub enum Error {
    #[error("{step} on node {node}")]
    Command {
        step: &'static str,
        node: String,
        #[source]
        source: CmdError,
    },
    #[error("node {node}: internal interface {PHY_BRIDGE} never appeared")]
    NoPhyInterface {
        node: String,
        #[source]
        source: Timeout,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A node's place in the overlay. In a hub-and-spoke layout the hub's tunnel
/// ports stay unprotected so it relays between spokes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Full mesh: tunnels to every other node.
    Peer,
    Hub,
    Spoke,
}

/// The pod addresses of one node, in the seed's scheme: host-local is given
/// the whole cluster subnet (so pods share one L2 overlay) and a start/end
/// inside the node's /24.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRange {
    pub cluster_cidr: Ipv4Net,
    pub node_cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub range_start: Ipv4Addr,
    pub range_end: Ipv4Addr,
    /// Dual-stack (`--ip-family dual`): the node's IPv6 pods too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<PodRange6>,
}

/// The IPv6 pod addresses of one node: `fd00:10:244:N::/64`, gateway `::1`, pods from `::2`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRange6 {
    pub cluster_cidr: Ipv6Net,
    pub node_cidr: Ipv6Net,
    pub gateway: Ipv6Addr,
    pub range_start: Ipv6Addr,
    pub range_end: Ipv6Addr,
}

impl PodRange6 {
    pub fn for_node(index: u8) -> Self {
        let at = |host| Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(index), 0, 0, 0, host);
        Self {
            cluster_cidr: CLUSTER_CIDR_V6.parse().expect("a valid CIDR"),
            node_cidr: Ipv6Net::new(at(0), 64).expect("a valid prefix"),
            gateway: at(1),
            range_start: at(2),
            range_end: at(0xfffe),
        }
    }
}

impl PodRange {
    /// [`PodRange::for_node`] plus the node's IPv6 pod subnet.
    pub fn dual(index: u8) -> Self {
        Self {
            v6: Some(PodRange6::for_node(index)),
            ..Self::for_node(index)
        }
    }

    /// The node's pod subnets: IPv4, then IPv6 when dual-stack (flaxd's `--pod-cidr`).
    pub fn node_cidrs(&self) -> Vec<String> {
        std::iter::once(self.node_cidr.to_string())
            .chain(self.v6.as_ref().map(|v| v.node_cidr.to_string()))
            .collect()
    }

    /// The cluster CIDRs: IPv4, then IPv6 when dual-stack (flaxd's `--cluster-cidr`).
    pub fn cluster_cidrs(&self) -> Vec<String> {
        std::iter::once(self.cluster_cidr.to_string())
            .chain(self.v6.as_ref().map(|v| v.cluster_cidr.to_string()))
            .collect()
    }

    /// 10.244.N.0/24, gateway .1, pods .2 to .254.
    pub fn for_node(index: u8) -> Self {
        let at = |host| Ipv4Addr::new(10, 244, index, host);
        Self {
            cluster_cidr: CLUSTER_CIDR,
            node_cidr: ipnet_v4(at(0), 24),
            gateway: at(1),
            range_start: at(2),
            range_end: at(254),
            v6: None,
        }
    }

    /// The `ipam` object for the reference host-local plugin: one range set per family.
    pub fn host_local_ipam(&self) -> serde_json::Value {
        let mut ranges = vec![serde_json::json!([{
            "subnet": self.cluster_cidr.to_string(),
            "rangeStart": self.range_start.to_string(),
            "rangeEnd": self.range_end.to_string(),
            "gateway": self.gateway.to_string(),
        }])];
        if let Some(v6) = &self.v6 {
            ranges.push(serde_json::json!([{
                "subnet": v6.cluster_cidr.to_string(),
                "rangeStart": v6.range_start.to_string(),
                "rangeEnd": v6.range_end.to_string(),
                "gateway": v6.gateway.to_string(),
            }]));
        }
        serde_json::json!({ "type": "host-local", "ranges": ranges })
    }

    /// host-local's `routes`: a default route per family.
    pub fn default_routes(&self) -> serde_json::Value {
        let mut routes = vec![serde_json::json!({ "dst": "0.0.0.0/0" })];
        if self.v6.is_some() {
            routes.push(serde_json::json!({ "dst": "::/0" }));
        }
        serde_json::Value::Array(routes)
    }
}

/// Everything recorded about one node; serialised in the lab's state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// 1-based.
    pub index: u8,
    /// `<lab>-n<index>`, also the namespace name.
    pub name: String,
    pub netns: Netns,
    /// `/var/run/netns/<name>`.
    pub netns_path: PathBuf,
    /// The OVS run directory: db, socket, pid files, unixctl sockets, logs.
    pub run_dir: PathBuf,
    pub ovsdb_socket: PathBuf,
    /// Address and prefix on `br-phy`.
    pub underlay_ip: Ipv4Net,
    pub underlay_mtu: u32,
    /// The veth end on the underlay bridge (in the underlay namespace).
    pub underlay_port: String,
    pub role: Role,
    pub pods: PodRange,
    /// The node's flaxd, in an etcd lab: recorded as soon as it is started.
    #[serde(default)]
    pub flaxd_pid: Option<i32>,
    /// The node's bridge is pointed at an OpenFlow controller of its own
    /// (`ovs-testcontroller` on the node's loopback; `up --controller`).
    #[serde(default)]
    pub controller: bool,
}

impl Node {
    /// The plan for node `index` of lab `lab` whose state lives in `lab_dir`.
    pub fn plan(lab: &str, index: u8, role: Role, lab_dir: &Path, underlay_mtu: u32) -> Self {
        let name = format!("{lab}-n{index}");
        let netns = Netns::new(name.clone());
        let run_dir = lab_dir.join(format!("n{index}"));
        let ovs = Ovs::new(netns.clone(), &run_dir);
        Self {
            index,
            netns_path: netns.path(),
            ovsdb_socket: ovs.db_socket(),
            name,
            netns,
            run_dir,
            underlay_ip: ipnet_v4(
                Ipv4Addr::new(10, 245, 2, index),
                UNDERLAY_SUBNET.prefix_len(),
            ),
            underlay_mtu,
            underlay_port: format!("n{index}"),
            role,
            pods: PodRange::for_node(index),
            flaxd_pid: None,
            controller: false,
        }
    }

    /// The handle to this node's OVS.
    pub fn ovs(&self) -> Ovs {
        Ovs::new(self.netns.clone(), &self.run_dir)
    }

    /// MTU for pods so that VXLAN frames fit the underlay.
    pub fn pod_mtu(&self) -> u32 {
        self.underlay_mtu - VXLAN_OVERHEAD
    }

    /// `PROGRAM` inside the node namespace with `OVS_RUNDIR` and friends set,
    /// so `ovs-vsctl show` / `ovs-appctl` reach this node's OVS.
    pub fn command(&self, program: &str) -> Command {
        self.ovs().in_netns(program)
    }

    /// Creates `br-phy` (netdev datapath) with `eth0` as a port, puts the
    /// underlay address on its internal interface and brings everything up.
    /// Idempotent. Every row it creates is tagged `linen-lab=<lab>`.
    pub fn provision(&self, lab: &str) -> Result<()> {
        let tag = format!("external_ids:{OWNER_KEY}={lab}");
        let mtu = format!("mtu_request={}", self.underlay_mtu);
        let mut vsctl = self.ovs().vsctl();
        #[rustfmt::skip]
        vsctl.args([
            "--", "--may-exist", "add-br", PHY_BRIDGE,
            "--", "set", "Bridge", PHY_BRIDGE, "datapath_type=netdev", &tag,
            "--", "set", "Port", PHY_BRIDGE, &tag,
            "--", "set", "Interface", PHY_BRIDGE, &mtu,
            "--", "--may-exist", "add-port", PHY_BRIDGE, NODE_UPLINK,
            "--", "set", "Port", NODE_UPLINK, &tag,
        ]);
        self.run("create br-phy", &mut vsctl)?;

        // ovs-vsctl waits for vswitchd to apply the change, so the tap is
        // normally there already; the bound covers a slow reconfiguration.
        let probe = || cmd::succeeds(&mut self.netns.ip(["link", "show", "dev", PHY_BRIDGE]));
        wait::until("br-phy tap device", Duration::from_secs(10), || {
            probe().then_some(())
        })
        .map_err(|source| Error::NoPhyInterface {
            node: self.name.clone(),
            source,
        })?;

        let addr = self.underlay_ip.to_string();
        let steps: [(&'static str, &[&str]); 4] = [
            ("bring up lo", &["link", "set", "lo", "up"]),
            ("bring up eth0", &["link", "set", NODE_UPLINK, "up"]),
            (
                "set underlay address",
                &["addr", "replace", &addr, "dev", PHY_BRIDGE],
            ),
            ("bring up br-phy", &["link", "set", PHY_BRIDGE, "up"]),
        ];
        for (step, args) in steps {
            self.run(step, &mut self.netns.ip(args))?;
        }
        Ok(())
    }

    fn run(&self, step: &'static str, cmd: &mut Command) -> Result<()> {
        cmd::run(cmd).map_err(|source| Error::Command {
            step,
            node: self.name.clone(),
            source,
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_addresses_and_paths() {
        let dir = Path::new("/run/linen-lab/a");
        let cases = [
            (1u8, "10.245.2.1/24", "10.244.1.0/24", "10.244.1.1"),
            (254, "10.245.2.254/24", "10.244.254.0/24", "10.244.254.1"),
        ];
        for (index, ul, pods, gw) in cases {
            let n = Node::plan("a", index, Role::Peer, dir, 1500);
            assert_eq!(n.name, format!("a-n{index}"));
            assert_eq!(
                n.netns_path,
                PathBuf::from(format!("/var/run/netns/a-n{index}"))
            );
            assert_eq!(n.run_dir, dir.join(format!("n{index}")));
            assert_eq!(n.ovsdb_socket, dir.join(format!("n{index}/db.sock")));
            assert_eq!(n.underlay_ip.to_string(), ul);
            assert_eq!(n.pods.node_cidr.to_string(), pods);
            assert_eq!(n.pods.gateway.to_string(), gw);
            assert_eq!(n.pods.cluster_cidr.to_string(), "10.244.0.0/16");
            assert!(n.pods.node_cidr.contains(&n.pods.range_start));
            assert!(n.pods.node_cidr.contains(&n.pods.range_end));
            assert_eq!(n.pod_mtu(), 1450);
        }
    }

    #[test]
    fn host_local_ipam_uses_the_cluster_subnet() {
        let ipam = PodRange::for_node(3).host_local_ipam();
        let range = &ipam["ranges"][0][0];
        assert_eq!(ipam["type"], "host-local");
        assert_eq!(range["subnet"], "10.244.0.0/16");
        assert_eq!(range["rangeStart"], "10.244.3.2");
        assert_eq!(range["rangeEnd"], "10.244.3.254");
        assert_eq!(range["gateway"], "10.244.3.1");
    }
}
