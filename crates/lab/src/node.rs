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
    /// Dual-stack (`--ip-family dual`) or IPv6-only (`ipv6`): the node's IPv6 pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<PodRange6>,
    /// Pods get an IPv4 address (false: IPv6-only pods, `--ip-family ipv6`).
    #[serde(default = "yes", skip_serializing_if = "Clone::clone")]
    pub v4: bool,
}

fn yes() -> bool {
    true
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
        let v4 = self.v4.then(|| self.node_cidr.to_string());
        v4.into_iter()
            .chain(self.v6.as_ref().map(|v| v.node_cidr.to_string()))
            .collect()
    }

    /// The cluster CIDRs: IPv4, then IPv6 when dual-stack (flaxd's `--cluster-cidr`).
    pub fn cluster_cidrs(&self) -> Vec<String> {
        let v4 = self.v4.then(|| self.cluster_cidr.to_string());
        v4.into_iter()
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
            v4: true,
        }
    }

    /// IPv6 pods only: the node's IPv6 subnet (the IPv4 fields stay planned, unused).
    pub fn ipv6_only(index: u8) -> Self {
        Self {
            v4: false,
            ..Self::dual(index)
        }
    }

    /// The gateway of the first range host-local hands out (IPv4 unless IPv6-only).
    pub fn first_gateway(&self) -> String {
        match (&self.v6, self.v4) {
            (Some(v6), false) => v6.gateway.to_string(),
            _ => self.gateway.to_string(),
        }
    }

    /// The `ipam` object for the reference host-local plugin: one range set per family.
    pub fn host_local_ipam(&self) -> serde_json::Value {
        let mut ranges = Vec::new();
        if self.v4 {
            ranges.push(serde_json::json!([{
                "subnet": self.cluster_cidr.to_string(),
                "rangeStart": self.range_start.to_string(),
                "rangeEnd": self.range_end.to_string(),
                "gateway": self.gateway.to_string(),
            }]));
        }
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
        let mut routes = Vec::new();
        if self.v4 {
            routes.push(serde_json::json!({ "dst": "0.0.0.0/0" }));
        }
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
    /// With `--underlay ipv6`: an IPv6 address on `br-phy` too (`fd00:10:245:2::<i>/64`),
    /// and the node's VTEP (the tunnels run over IPv6; etcd and flaxd's endpoint stay on
    /// the IPv4 address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_ip6: Option<Ipv6Net>,
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
            underlay_ip6: None,
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

    /// The node's VTEP: its IPv6 underlay address when it has one, else its IPv4 one.
    pub fn vtep(&self) -> std::net::IpAddr {
        match self.underlay_ip6 {
            Some(v6) => std::net::IpAddr::V6(v6.addr()),
            None => std::net::IpAddr::V4(self.underlay_ip.addr()),
        }
    }

    /// `fd00:10:245:2::<index>/64`: a node's IPv6 underlay address (`--underlay ipv6`).
    pub fn underlay_ip6_for(index: u8) -> Ipv6Net {
        Ipv6Net::new(
            Ipv6Addr::new(0xfd00, 0x10, 0x245, 2, 0, 0, 0, u16::from(index)),
            64,
        )
        .expect("a valid prefix")
    }

    /// MTU for pods so that VXLAN frames fit the underlay: the plugin's own rule (50 bytes
    /// of overhead over IPv4 VTEPs, 70 over IPv6).
    pub fn pod_mtu(&self) -> u32 {
        let overhead = linen::mtu::vxlan_overhead([&self.vtep()]);
        linen::mtu::max_pod_mtu(self.underlay_mtu, overhead)
            .unwrap_or(self.underlay_mtu - VXLAN_OVERHEAD)
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
        if let Some(v6) = self.underlay_ip6 {
            // No duplicate address detection: the address is usable at once (the lab owns
            // the underlay and gives every node its own).
            let addr = v6.to_string();
            self.run(
                "set IPv6 underlay address",
                &mut self
                    .netns
                    .ip(["addr", "replace", &addr, "dev", PHY_BRIDGE, "nodad"]),
            )?;
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
        assert_eq!(ipam["ranges"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn dual_stack_and_ipv6_only_ranges() {
        let dual = PodRange::dual(3);
        let ipam = dual.host_local_ipam();
        assert_eq!(ipam["ranges"][1][0]["subnet"], "fd00:10:244::/48");
        assert_eq!(ipam["ranges"][1][0]["rangeStart"], "fd00:10:244:3::2");
        assert_eq!(ipam["ranges"][1][0]["gateway"], "fd00:10:244:3::1");
        assert_eq!(dual.node_cidrs(), ["10.244.3.0/24", "fd00:10:244:3::/64"]);
        assert_eq!(dual.cluster_cidrs(), ["10.244.0.0/16", "fd00:10:244::/48"]);
        assert_eq!(
            dual.default_routes(),
            serde_json::json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
        );
        assert_eq!(dual.first_gateway(), "10.244.3.1");
        let v6 = PodRange::ipv6_only(3);
        let ipam = v6.host_local_ipam();
        assert_eq!(ipam["ranges"].as_array().unwrap().len(), 1);
        assert_eq!(ipam["ranges"][0][0]["gateway"], "fd00:10:244:3::1");
        assert_eq!(v6.node_cidrs(), ["fd00:10:244:3::/64"]);
        assert_eq!(v6.default_routes(), serde_json::json!([{"dst": "::/0"}]));
        assert_eq!(v6.first_gateway(), "fd00:10:244:3::1");
        // Recorded in the state file and read back (v4 defaults to true for older states).
        let back: PodRange = serde_json::from_value(serde_json::to_value(&v6).unwrap()).unwrap();
        assert_eq!(back, v6);
        let mut old = serde_json::to_value(PodRange::for_node(3)).unwrap();
        old.as_object_mut().unwrap().remove("v4");
        assert!(serde_json::from_value::<PodRange>(old).unwrap().v4);
    }
}
