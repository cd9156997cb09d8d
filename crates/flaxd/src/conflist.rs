//! This node's CNI network configuration list: `bridge` (with `host-local` handing out the
//! node's pod subnet inside the cluster CIDR, `hairpinMode` so a pod reaches itself through
//! its node's hostPort) chained with `linen`, then the reference `portmap` plugin for
//! `hostPort` (`capabilities: {"portMappings": true}`, `snat` so a pod reaches a hostPort of
//! its own node). flaxd manages the tunnels, so the `linen` entry lists no `vtepIPs`; its
//! `mtu` comes from [`linen::mtu`]. `linen` takes the port mappings too: it records which pod
//! holds each hostPort and refuses a second pod asking for one already held (portmap alone
//! would silently let the first pod keep it).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use linen::config::{Controllers, Datapath, PluginConf, SeedFields, TunnelKey};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ConflistError {
    #[error("pod subnet {pod} is not inside a cluster CIDR of its family ({cluster:?})")]
    OutsideCluster { pod: IpNet, cluster: Vec<IpNet> },
    #[error("pod subnets {0:?}: give one or two (IPv4 and IPv6), at most one per family")]
    Families(Vec<IpNet>),
    #[error("pod subnet {0} is too small for a gateway and pods")]
    TooSmall(IpNet),
    #[error("the underlay MTU {0} is too small to carry VXLAN")]
    UnderlayTooSmall(u32),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: linen::install::InstallError,
    },
}

/// What goes into the conflist besides the pod subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflistSpec {
    /// The network name (`name` of the conflist).
    pub network: String,
    /// The pods' Linux bridge.
    pub linux_bridge: String,
    pub ovs_bridge: String,
    pub ovsdb: String,
    /// The bridge's controller targets: written as the plugin's `controller`, so an ADD plans
    /// the same controller rows flaxd keeps (no fight over the row).
    pub controllers: Vec<String>,
    pub datapath: Datapath,
    pub key: TunnelKey,
    /// The whole pod network, one CIDR per family (dual-stack: two): one layer-2 overlay, so
    /// every pod's prefix is its family's cluster CIDR.
    pub cluster_cidrs: Vec<IpNet>,
    pub underlay_mtu: u32,
    /// This node's VTEP: its address family decides the VXLAN overhead.
    pub vtep: IpAddr,
    /// Where `host-local` keeps its leases (`dataDir`); `None` leaves host-local's own
    /// default (`/var/lib/cni/networks`).
    pub ipam_data_dir: Option<PathBuf>,
    /// Where the plugin records hostPort holders (`hostPortDir`); `None`: its default.
    pub host_port_dir: Option<PathBuf>,
}

/// The conventional file name: `10-` sorts it first in `/etc/cni/net.d` for runtimes that
/// take the first conflist (containerd's `max_conf_num = 1`).
pub const FILE_NAME: &str = "10-linen.conflist";

/// One host-local range: the pod subnet's addresses, the gateway its first.
struct Range {
    cluster: IpNet,
    gateway: IpAddr,
    start: IpAddr,
    end: IpAddr,
    default_route: &'static str,
}

fn range(spec: &ConflistSpec, pod: IpNet) -> Result<Range, ConflistError> {
    let pod = pod.trunc();
    let cluster = spec
        .cluster_cidrs
        .iter()
        .find(|c| c.contains(&pod))
        .copied()
        .ok_or_else(|| ConflistError::OutsideCluster {
            pod,
            cluster: spec.cluster_cidrs.clone(),
        })?;
    let (gateway, start, end, default_route) = match pod {
        IpNet::V4(p) => {
            let net = u32::from(p.network());
            let bcast = u32::from(p.broadcast());
            if bcast.saturating_sub(net) < 3 {
                return Err(ConflistError::TooSmall(pod));
            }
            let ip = |n: u32| IpAddr::from(std::net::Ipv4Addr::from(n));
            (ip(net + 1), ip(net + 2), ip(bcast - 1), "0.0.0.0/0")
        }
        IpNet::V6(p) => {
            let net = u128::from(p.network());
            let last = u128::from(p.broadcast());
            if last.saturating_sub(net) < 3 {
                return Err(ConflistError::TooSmall(pod));
            }
            let ip = |n: u128| IpAddr::from(std::net::Ipv6Addr::from(n));
            (ip(net + 1), ip(net + 2), ip(last - 1), "::/0")
        }
    };
    Ok(Range {
        cluster,
        gateway,
        start,
        end,
        default_route,
    })
}

/// The conflist for a node whose pods take addresses from `pod_cidrs` (one per family:
/// dual-stack pods get one address of each, the bridge both gateways).
pub fn render(spec: &ConflistSpec, pod_cidrs: &[IpNet]) -> Result<String, ConflistError> {
    let pods = crate::membership::pod_cidrs(pod_cidrs)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ConflistError::Families(pod_cidrs.to_vec()))?;
    let ranges = pods
        .iter()
        .map(|p| range(spec, *p))
        .collect::<Result<Vec<_>, _>>()?;
    let mtu = linen::mtu::max_pod_mtu(spec.underlay_mtu, linen::mtu::vxlan_overhead([&spec.vtep]))
        .ok_or(ConflistError::UnderlayTooSmall(spec.underlay_mtu))?;
    // The plugin's fields through its own wire format (linen::config::PluginConf).
    let linen = PluginConf {
        seed: SeedFields {
            ovs_bridge: Some(spec.ovs_bridge.clone()),
            controller: (!spec.controllers.is_empty())
                .then(|| Controllers::Many(spec.controllers.clone())),
            ..Default::default()
        },
        ovsdb_socket: Some(spec.ovsdb.clone()),
        datapath_type: Some(spec.datapath.as_ovs().to_owned()),
        vni: match spec.key {
            TunnelKey::Vni(vni) => Some(u64::from(vni)),
            TunnelKey::Flow => None,
        },
        mtu: Some(u64::from(mtu)),
        underlay_mtu: Some(u64::from(spec.underlay_mtu)),
        host_port_dir: spec.host_port_dir.as_ref().map(|d| d.display().to_string()),
    }
    .to_json();
    // host-local's `ranges`: one range set per family; each range's subnet is the whole
    // cluster CIDR (one layer-2 overlay), its addresses the node's slice.
    let mut ipam = json!({
        "type": "host-local",
        "ranges": ranges.iter().map(|r| json!([{
            "subnet": r.cluster.trunc().to_string(),
            "rangeStart": r.start.to_string(),
            "rangeEnd": r.end.to_string(),
            "gateway": r.gateway.to_string(),
        }])).collect::<Vec<_>>(),
        "routes": ranges.iter().map(|r| json!({ "dst": r.default_route })).collect::<Vec<_>>(),
    });
    if let Some(dir) = &spec.ipam_data_dir {
        ipam["dataDir"] = json!(dir);
    }
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": spec.network,
        "plugins": [
            {
                "type": "bridge",
                "bridge": spec.linux_bridge,
                "isGateway": true,
                "hairpinMode": true,
                "mtu": mtu,
                "ipam": ipam,
            },
            linen,
            {
                "type": "portmap",
                "capabilities": { "portMappings": true },
                "snat": true,
            },
        ],
    });
    let mut text = serde_json::to_string_pretty(&conf).expect("a JSON value serialises");
    text.push('\n');
    Ok(text)
}

/// Writes `content` to `path` unless it already holds exactly that, atomically (see
/// [`linen::install::write_atomic`]): a reader (the container runtime) sees the old file or
/// the new one, never a partial one. Returns whether it wrote.
pub fn write_if_changed(path: &Path, content: &str) -> Result<bool, ConflistError> {
    linen::install::write_atomic(path, content.as_bytes(), 0o644).map_err(|source| {
        ConflistError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn spec() -> ConflistSpec {
        ConflistSpec {
            network: "linen".into(),
            linux_bridge: "kbr0".into(),
            ovs_bridge: "br0".into(),
            ovsdb: "unix:/var/run/openvswitch/db.sock".into(),
            controllers: Vec::new(),
            datapath: Datapath::System,
            key: TunnelKey::Flow,
            cluster_cidrs: vec![net("10.244.0.0/16")],
            underlay_mtu: 1500,
            vtep: "192.0.2.1".parse().unwrap(),
            ipam_data_dir: None,
            host_port_dir: None,
        }
    }

    #[test]
    fn renders_bridge_and_linen() {
        let text = render(&spec(), &[net("10.244.3.0/24")]).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["name"], "linen");
        let bridge = &v["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "kbr0");
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(
            bridge["hairpinMode"], true,
            "a pod reaches its own hostPort"
        );
        let portmap = &v["plugins"][2];
        assert_eq!(portmap["type"], "portmap", "hostPort needs portmap, last");
        assert_eq!(portmap["capabilities"]["portMappings"], true);
        assert_eq!(
            portmap["snat"], true,
            "a pod reaches a hostPort of its own node"
        );
        assert_eq!(v["plugins"].as_array().unwrap().len(), 3);
        assert_eq!(
            v["plugins"][1]["capabilities"]["portMappings"], true,
            "linen guards hostPorts"
        );
        assert_eq!(bridge["mtu"], 1450);
        let ipam = &bridge["ipam"];
        assert_eq!(ipam["type"], "host-local");
        let range = &ipam["ranges"][0][0];
        assert_eq!(range["subnet"], "10.244.0.0/16");
        assert_eq!(range["gateway"], "10.244.3.1");
        assert_eq!(range["rangeStart"], "10.244.3.2");
        assert_eq!(range["rangeEnd"], "10.244.3.254");
        assert_eq!(ipam["ranges"].as_array().unwrap().len(), 1, "single-stack");
        assert_eq!(ipam["routes"], serde_json::json!([{"dst": "0.0.0.0/0"}]));
        let linen = &v["plugins"][1];
        assert_eq!(linen["type"], "linen");
        assert_eq!(linen["ovsBridge"], "br0");
        assert_eq!(linen["datapathType"], "system");
        assert_eq!(linen["mtu"], 1450);
        assert!(linen.get("vtepIPs").is_none(), "flaxd manages the tunnels");
        assert!(linen.get("vni").is_none());
        // The plugin accepts what flaxd writes.
        let cfg = linen::config::LinenConfig::from_json(linen).expect("linen parses it");
        assert_eq!(cfg.mtu, Some(1450));
        assert!(cfg.vtep_ips.is_empty());
        assert!(ipam.get("dataDir").is_none(), "host-local's default");
        let mut with_dir = spec();
        with_dir.ipam_data_dir = Some("/run/lab/n1/ipam".into());
        let v: Value =
            serde_json::from_str(&render(&with_dir, &[net("10.244.3.0/24")]).unwrap()).unwrap();
        assert_eq!(v["plugins"][0]["ipam"]["dataDir"], "/run/lab/n1/ipam");
        assert!(
            v["plugins"][1].get("hostPortDir").is_none(),
            "the plugin's default"
        );
        let mut with_ports = spec();
        with_ports.host_port_dir = Some("/run/lab/n1/hostports".into());
        let v: Value =
            serde_json::from_str(&render(&with_ports, &[net("10.244.3.0/24")]).unwrap()).unwrap();
        assert_eq!(v["plugins"][1]["hostPortDir"], "/run/lab/n1/hostports");
        let cfg = linen::config::LinenConfig::from_json(&v["plugins"][1]).unwrap();
        assert_eq!(
            cfg.host_port_dir,
            std::path::PathBuf::from("/run/lab/n1/hostports")
        );
    }

    #[test]
    fn variants() {
        let mut s = spec();
        s.datapath = Datapath::Netdev;
        s.key = TunnelKey::Vni(7);
        s.underlay_mtu = 9000;
        s.vtep = "2001:db8::1".parse().unwrap();
        s.cluster_cidrs = vec![net("fd10::/48")];
        let v: Value =
            serde_json::from_str(&render(&s, &[net("fd10:0:0:5::/64")]).unwrap()).unwrap();
        assert_eq!(v["plugins"][1]["mtu"], 8930, "IPv6 overhead is 70");
        assert_eq!(v["plugins"][1]["vni"], 7);
        assert_eq!(v["plugins"][1]["datapathType"], "netdev");
        let ipam = &v["plugins"][0]["ipam"];
        assert_eq!(ipam["ranges"][0][0]["gateway"], "fd10:0:0:5::1");
        assert_eq!(ipam["routes"][0]["dst"], "::/0");
    }

    #[test]
    fn dual_stack_gets_a_range_and_a_default_route_per_family() {
        let mut s = spec();
        s.cluster_cidrs = vec![net("10.244.0.0/16"), net("fd00:10:244::/48")];
        // Given in either order: IPv4 first in the conflist.
        let text = render(&s, &[net("fd00:10:244:3::/64"), net("10.244.3.0/24")]).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let ipam = &v["plugins"][0]["ipam"];
        assert_eq!(
            ipam["ranges"],
            serde_json::json!([
                [{"subnet": "10.244.0.0/16", "rangeStart": "10.244.3.2",
                  "rangeEnd": "10.244.3.254", "gateway": "10.244.3.1"}],
                [{"subnet": "fd00:10:244::/48", "rangeStart": "fd00:10:244:3::2",
                  "rangeEnd": "fd00:10:244:3:ffff:ffff:ffff:fffe", "gateway": "fd00:10:244:3::1"}],
            ])
        );
        assert_eq!(
            ipam["routes"],
            serde_json::json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}])
        );
        // An IPv6 subnet without an IPv6 cluster CIDR, two of a family, none.
        assert!(matches!(
            render(&spec(), &[net("10.244.3.0/24"), net("fd00:10:244:3::/64")]),
            Err(ConflistError::OutsideCluster { .. })
        ));
        for bad in [vec![net("10.244.3.0/24"), net("10.244.4.0/24")], vec![]] {
            assert!(
                matches!(render(&s, &bad), Err(ConflistError::Families(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_plugin_reads_back_flaxds_controllers() {
        let mut s = spec();
        let v: Value = serde_json::from_str(&render(&s, &[net("10.244.1.0/24")]).unwrap()).unwrap();
        assert!(v["plugins"][1].get("controller").is_none());
        s.controllers = vec!["ssl:10.0.0.1:6653".into(), "tcp:10.0.0.2:6653".into()];
        let v: Value = serde_json::from_str(&render(&s, &[net("10.244.1.0/24")]).unwrap()).unwrap();
        let plugin = linen::config::LinenConfig::from_json(&v["plugins"][1]).unwrap();
        assert_eq!(plugin.bridge_spec().controllers, s.controllers);
    }

    #[test]
    fn refusals() {
        let s = spec();
        assert!(matches!(
            render(&s, &[net("10.9.0.0/24")]),
            Err(ConflistError::OutsideCluster { .. })
        ));
        assert!(matches!(
            render(&s, &[net("10.244.0.0/31")]),
            Err(ConflistError::TooSmall(_))
        ));
        let mut tiny = spec();
        tiny.underlay_mtu = 100;
        assert!(matches!(
            render(&tiny, &[net("10.244.1.0/24")]),
            Err(ConflistError::UnderlayTooSmall(100))
        ));
    }

    #[test]
    fn writes_only_changes_and_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net.d/10-linen.conflist");
        use std::os::unix::fs::MetadataExt;
        let inode = || std::fs::metadata(&path).unwrap().ino();
        assert!(write_if_changed(&path, "a\n").unwrap());
        // Held open, so its inode number cannot be reused by a new file.
        let mut reader = std::fs::File::open(&path).unwrap();
        let first = inode();
        assert!(!write_if_changed(&path, "a\n").unwrap(), "same content");
        assert_eq!(inode(), first, "the same content is not written again");
        // A reader of the old file keeps the old content whole: the new one is another file
        // renamed over it, never an edit in place.
        assert!(write_if_changed(&path, "b\n").unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b\n");
        assert_ne!(inode(), first, "replaced by rename, not rewritten in place");
        let mut old = String::new();
        std::io::Read::read_to_string(&mut reader, &mut old).unwrap();
        assert_eq!(old, "a\n");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["10-linen.conflist"], "no temporary file left");
    }
}
