//! What a lab is made of: its name, size and layout, and the naming rules
//! that keep two labs from ever colliding.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cluster::Error;
use crate::etcd::Etcd;
use crate::netns::Netns;
use crate::node::{MAX_NODES, Node, Role};
use crate::state::{LabState, Owner};
use crate::underlay::Underlay;

/// Where lab directories live unless a spec says otherwise.
pub const DEFAULT_ROOT: &str = "/run/linen-lab";
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;
pub const MAX_NAME_LEN: usize = 32;

/// How tunnels will be laid between nodes (used when pods are wired): every
/// node to every other, or node 1 as the hub and the rest as spokes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    #[default]
    Mesh,
    Hub,
}

impl Topology {
    fn role(self, index: u8) -> Role {
        match (self, index) {
            (Topology::Mesh, _) => Role::Peer,
            (Topology::Hub, 1) => Role::Hub,
            (Topology::Hub, _) => Role::Spoke,
        }
    }
}

/// How nodes learn about each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Membership {
    /// The lab writes every node's `vtepIPs` into its conflist and re-applies
    /// the overlays itself when nodes come and go. The library's default, so
    /// that users who bring their own conflists or their own flaxd (the
    /// plugin tests, the benchmarks) get nodes with nothing running on them.
    #[default]
    Static,
    /// One etcd for the lab and one `flaxd` per node: flaxd registers the
    /// node, keeps its tunnels in step with the others and writes its
    /// conflist. The CLI's default.
    Etcd,
}

/// Who runs the pods' CNI chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// The lab's own runtime (the `cni` crate's, libcni's behaviour): a named namespace per
    /// pod, ADD and DEL run directly.
    #[default]
    Cni,
    /// A containerd per node, asked over CRI as kubelet asks (see [`crate::cri`]); needs
    /// etcd membership (flaxd writes the conflist containerd reads).
    Containerd,
}

/// The pods' address families.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    /// One IPv4 address per pod.
    #[default]
    Ipv4,
    /// An IPv4 and an IPv6 address per pod (host-local with two ranges, both gateways on the
    /// bridge, flaxd with two cluster CIDRs).
    Dual,
    /// One IPv6 address per pod (`fd00:10:244:N::/64`).
    Ipv6,
}

/// The VTEPs' address family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnderlayFamily {
    /// Tunnels between the nodes' IPv4 underlay addresses.
    #[default]
    Ipv4,
    /// Tunnels between IPv6 underlay addresses (`fd00:10:245:2::<i>/64` on every node's
    /// `br-phy`, beside the IPv4 one that etcd and flaxd's endpoint keep using): VXLAN over
    /// IPv6, 70 bytes of overhead.
    Ipv6,
}

/// Seconds a crashed node's flaxd stays a member in an etcd lab: short, so
/// that a lab shows a crash within seconds (production uses 10 or more).
pub const DEFAULT_LEASE_TTL: u32 = 3;

/// What to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    pub name: String,
    pub nodes: usize,
    /// How many pods each node will get once pods are wired.
    pub pods_per_node: u16,
    pub topology: Topology,
    /// The lab directory itself; `None` means `/run/linen-lab/<name>`.
    pub dir: Option<PathBuf>,
    pub underlay_mtu: u32,
    pub membership: Membership,
    /// flaxd's etcd lease TTL in seconds, with [`Membership::Etcd`].
    pub lease_ttl: u32,
    /// Every node's bridge is pointed at a real OpenFlow controller of its own.
    pub controller: bool,
    /// Who runs the pods' CNI chain.
    pub runtime: Runtime,
    /// The pods' address families.
    pub ip_family: IpFamily,
    /// The VTEPs' address family.
    pub underlay: UnderlayFamily,
}

impl ClusterSpec {
    /// A mesh of `nodes` nodes with defaults for everything else.
    pub fn new(name: impl Into<String>, nodes: usize) -> Self {
        Self {
            name: name.into(),
            nodes,
            pods_per_node: 2,
            topology: Topology::Mesh,
            dir: None,
            underlay_mtu: DEFAULT_UNDERLAY_MTU,
            membership: Membership::Static,
            lease_ttl: DEFAULT_LEASE_TTL,
            controller: false,
            runtime: Runtime::Cni,
            ip_family: IpFamily::Ipv4,
            underlay: UnderlayFamily::Ipv4,
        }
    }

    pub fn lab_dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| default_dir(&self.name))
    }

    pub fn validate(&self) -> Result<(), Error> {
        validate_name(&self.name)?;
        if self.nodes == 0 || self.nodes > usize::from(self.max_nodes()) {
            return Err(Error::NodeCount {
                nodes: self.nodes,
                max: self.max_nodes(),
            });
        }
        if self.runtime == Runtime::Containerd && self.membership != Membership::Etcd {
            return Err(Error::RuntimeNeedsEtcd);
        }
        if self.membership == Membership::Etcd && !(1..=3600).contains(&self.lease_ttl) {
            return Err(Error::LeaseTtl {
                ttl: self.lease_ttl,
            });
        }
        if !(1280..=9000).contains(&self.underlay_mtu) {
            return Err(Error::Mtu {
                mtu: self.underlay_mtu,
            });
        }
        Ok(())
    }

    /// 254, or 253 with etcd, whose address is the underlay's last.
    pub fn max_nodes(&self) -> u8 {
        max_nodes(self.membership)
    }

    /// The full state of the lab this spec describes, before anything exists.
    pub fn plan(&self) -> LabState {
        let dir = self.lab_dir();
        let nodes = (1..=self.nodes)
            .map(|i| {
                let index = u8::try_from(i).expect("validated: at most MAX_NODES");
                let role = self.topology.role(index);
                let node = Node::plan(&self.name, index, role, &dir, self.underlay_mtu);
                Node {
                    controller: self.controller,
                    pods: match self.ip_family {
                        IpFamily::Ipv4 => node.pods.clone(),
                        IpFamily::Dual => crate::node::PodRange::dual(index),
                        IpFamily::Ipv6 => crate::node::PodRange::ipv6_only(index),
                    },
                    underlay_ip6: (self.underlay == UnderlayFamily::Ipv6)
                        .then(|| Node::underlay_ip6_for(index)),
                    ..node
                }
            })
            .collect();
        LabState {
            name: self.name.clone(),
            topology: self.topology,
            pods_per_node: self.pods_per_node,
            owner: Owner::Process {
                pid: std::process::id(),
            },
            underlay: Underlay::new(Netns::new(underlay_netns(&self.name)), self.underlay_mtu),
            nodes,
            pods: Vec::new(),
            membership: self.membership,
            runtime: self.runtime,
            etcd: (self.membership == Membership::Etcd).then(|| Etcd::plan(&dir, self.lease_ttl)),
            dir,
        }
    }
}

/// The most nodes a lab with this membership can have.
pub fn max_nodes(membership: Membership) -> u8 {
    match membership {
        Membership::Static => MAX_NODES,
        Membership::Etcd => MAX_NODES - 1,
    }
}

/// `/run/linen-lab/<name>`.
pub fn default_dir(name: &str) -> PathBuf {
    Path::new(DEFAULT_ROOT).join(name)
}

pub(crate) fn underlay_netns(lab: &str) -> String {
    format!("{lab}-ul")
}

/// Lab names become namespace names and path components.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() || name.len() > MAX_NAME_LEN {
        Some("wrong length")
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        Some("must start with a letter")
    } else if name.ends_with('-') {
        Some("must not end with '-'")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        Some("invalid character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// True if `netns` is one the lab `lab` would create: `<lab>-ul`,
/// `<lab>-n<digits>` (a node) or `<lab>-n<digits>-p<digits>` (a pod).
pub fn is_lab_netns(lab: &str, netns: &str) -> bool {
    let Some(rest) = netns.strip_prefix(lab).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let number = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    let node = |s: &str| s.strip_prefix('n').is_some_and(number);
    rest == "ul"
        || node(rest)
        || rest
            .split_once("-p")
            .is_some_and(|(n, p)| node(n) && number(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names() {
        let ok = ["a", "lab1", "my-lab", "a234567890123456789012345678901b"];
        for name in ok {
            assert!(validate_name(name).is_ok(), "{name}");
        }
        let bad = [
            "",
            "1lab",
            "-lab",
            "lab-",
            "Lab",
            "la_b",
            "la.b",
            "la/b",
            "a2345678901234567890123456789012b",
        ];
        for name in bad {
            assert!(validate_name(name).is_err(), "{name}");
        }
    }

    #[test]
    fn lab_namespaces_never_match_another_lab() {
        let cases = [
            ("a", "a-ul", true),
            ("a", "a-n1", true),
            ("a", "a-n254", true),
            ("a", "a-n", false),
            ("a", "a-n1x", false),
            ("a", "ab-n1", false),
            ("a", "a-n1-ul", false),
            ("a-n1", "a-n1", false),
            ("a-n1", "a-n1-ul", true),
            ("a", "b-ul", false),
            ("a", "a-n1-p1", true),
            ("a", "a-n12-p345", true),
            ("a", "a-n1-p", false),
            ("a", "a-n-p1", false),
            ("a", "a-n1-p1x", false),
            ("a", "a-n1-n2-p1", false),
            ("a-n1", "a-n1-n2-p1", true),
            ("a-n1", "a-n1-p1", false),
        ];
        for (lab, netns, want) in cases {
            assert_eq!(is_lab_netns(lab, netns), want, "{lab} {netns}");
        }
    }

    #[test]
    fn spec_validation() {
        let cases = [
            (ClusterSpec::new("a", 3), true),
            (ClusterSpec::new("a", 0), false),
            (ClusterSpec::new("a", 255), false),
            (ClusterSpec::new("a", 254), true),
            (
                ClusterSpec {
                    membership: Membership::Etcd,
                    ..ClusterSpec::new("a", 254)
                },
                false,
            ),
            (
                ClusterSpec {
                    membership: Membership::Etcd,
                    ..ClusterSpec::new("a", 253)
                },
                true,
            ),
            (
                ClusterSpec {
                    membership: Membership::Etcd,
                    lease_ttl: 0,
                    ..ClusterSpec::new("a", 3)
                },
                false,
            ),
            (
                ClusterSpec {
                    underlay_mtu: 1000,
                    ..ClusterSpec::new("a", 1)
                },
                false,
            ),
            // containerd reads the conflist flaxd writes: etcd membership only.
            (
                ClusterSpec {
                    runtime: Runtime::Containerd,
                    ..ClusterSpec::new("a", 2)
                },
                false,
            ),
            (
                ClusterSpec {
                    runtime: Runtime::Containerd,
                    membership: Membership::Etcd,
                    ..ClusterSpec::new("a", 2)
                },
                true,
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(spec.validate().is_ok(), want, "{spec:?}");
        }
    }

    #[test]
    fn plan_names_roles_and_dir() {
        let spec = ClusterSpec {
            topology: Topology::Hub,
            ..ClusterSpec::new("demo", 3)
        };
        let state = spec.plan();
        assert_eq!(state.dir, PathBuf::from("/run/linen-lab/demo"));
        assert_eq!(state.underlay.netns.name(), "demo-ul");
        let got: Vec<(&str, Role)> = state
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.role))
            .collect();
        assert_eq!(
            got,
            [
                ("demo-n1", Role::Hub),
                ("demo-n2", Role::Spoke),
                ("demo-n3", Role::Spoke)
            ]
        );
        assert!(
            state
                .nodes
                .iter()
                .all(|n| is_lab_netns("demo", n.netns.name()))
        );
        assert_eq!(state.node("n2").map(|n| n.index), Some(2));
        assert_eq!(state.node("3").map(|n| n.index), Some(3));
        assert_eq!(state.node("demo-n1").map(|n| n.index), Some(1));
        assert!(state.node("n4").is_none());
        let mesh = ClusterSpec::new("demo", 2).plan();
        assert!(mesh.nodes.iter().all(|n| n.role == Role::Peer));
    }
}
