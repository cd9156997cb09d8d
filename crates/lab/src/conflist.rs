//! The CNI network configuration list of each node: the reference `bridge`
//! plugin (with `host-local` IPAM, `hairpinMode`) chained with `linen`, with
//! Linen's VTEPs laid out by the lab's topology, then `portmap` for hostPorts
//! (as flaxd writes it). A pure function of the lab state, written to
//! `<node run dir>/net.d/10-linen.conflist` so it can be read and reused.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use linen::config::{Controllers, PluginConf, SeedFields};
use serde_json::{Value, json};
use thiserror::Error;

use crate::node::{Node, Role};
use crate::state::LabState;

/// The network name every node's conflist carries (and podman's `--network`).
pub const NETWORK_NAME: &str = "linen-lab";
/// Debian's reference plugins 1.1.1 speak up to 1.0.0.
pub const CNI_VERSION: &str = "1.0.0";
/// The pods' Linux bridge on every node.
pub const LINUX_BRIDGE: &str = "kbr0";
/// Linen's OVS bridge on every node.
pub const OVS_BRIDGE: &str = "br0";
/// The file name inside the node's `net.d`.
pub const FILE_NAME: &str = "10-linen.conflist";

#[derive(Debug, Error)]
pub enum Error {
    #[error("write the CNI config of node {node} to {path}")]
    Write {
        node: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The remote VTEPs in `node`'s conflist: in a mesh every node's underlay
/// address (linen skips its own); the hub lists every spoke; a spoke lists
/// only the hub.
pub fn vtep_ips(state: &LabState, node: &Node) -> Vec<IpAddr> {
    let ip = |n: &Node| n.vtep();
    match node.role {
        Role::Peer => state.nodes.iter().map(ip).collect(),
        Role::Hub => state
            .nodes
            .iter()
            .filter(|n| n.index != node.index)
            .map(ip)
            .collect(),
        Role::Spoke => state
            .nodes
            .iter()
            .filter(|n| n.role == Role::Hub)
            .map(ip)
            .collect(),
    }
}

impl Node {
    /// Where host-local keeps this node's leases: inside the lab, never the
    /// global /var/lib/cni.
    pub fn ipam_dir(&self) -> PathBuf {
        self.run_dir.join("ipam")
    }

    /// The runtime's cache of ADD results (libcni's layout) for this node.
    pub fn cni_cache_dir(&self) -> PathBuf {
        self.run_dir.join("cni-cache")
    }

    /// Where the linen plugin records this node's hostPort holders.
    pub fn host_port_dir(&self) -> PathBuf {
        self.run_dir.join("hostports")
    }

    /// The directory holding this node's conflist, as `/etc/cni/net.d` would.
    pub fn conf_dir(&self) -> PathBuf {
        self.run_dir.join("net.d")
    }

    pub fn conflist_path(&self) -> PathBuf {
        self.conf_dir().join(FILE_NAME)
    }

    /// This node's conflist: `bridge` + `host-local`, then `linen` with the
    /// VTEPs of `state`'s topology.
    pub fn conflist(&self, state: &LabState) -> Value {
        let mut ipam = self.pods.host_local_ipam();
        ipam["dataDir"] = json!(self.ipam_dir());
        ipam["routes"] = self.pods.default_routes();
        let vteps: Vec<String> = vtep_ips(state, self)
            .iter()
            .map(ToString::to_string)
            .collect();
        // The plugin's fields through its own wire format.
        let linen = PluginConf {
            seed: SeedFields {
                is_master: Some(self.role == Role::Hub),
                ovs_bridge: Some(OVS_BRIDGE.to_owned()),
                vtep_ips: Some(vteps),
                controller: self
                    .controller
                    .then(|| Controllers::One(crate::ovs::controller_target())),
            },
            ovsdb_socket: Some(format!("unix:{}", self.ovsdb_socket.display())),
            datapath_type: Some("netdev".to_owned()),
            host_port_dir: Some(self.host_port_dir().display().to_string()),
            ..Default::default()
        }
        .to_json();
        let conf = json!({
            "cniVersion": CNI_VERSION,
            "name": NETWORK_NAME,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": LINUX_BRIDGE,
                    "isGateway": true,
                    "hairpinMode": true,
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
        conf
    }

    /// Writes [`Node::conflist`] to [`Node::conflist_path`] atomically.
    /// Idempotent.
    pub fn write_conflist(&self, state: &LabState) -> Result<PathBuf> {
        let path = self.conflist_path();
        let err = |source| Error::Write {
            node: self.name.clone(),
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(self.conf_dir()).map_err(err)?;
        let text = serde_json::to_string_pretty(&self.conflist(state))
            .expect("a JSON value always serializes");
        let tmp = self.conf_dir().join(format!(".{FILE_NAME}.tmp"));
        std::fs::write(&tmp, text + "\n").map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        Ok(path)
    }
}

/// The `linen` plugin object of a conflist, if it has one.
pub fn linen_plugin(conflist: &Value) -> Option<&Value> {
    conflist["plugins"]
        .as_array()?
        .iter()
        .find(|p| p["type"] == "linen")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ClusterSpec, Topology};
    use std::path::Path;

    fn state(topology: Topology, nodes: usize) -> LabState {
        ClusterSpec {
            topology,
            dir: Some("/run/linen-lab/c".into()),
            ..ClusterSpec::new("c", nodes)
        }
        .plan()
    }

    fn vteps(conflist: &Value) -> Vec<&str> {
        linen_plugin(conflist).unwrap()["vtepIPs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect()
    }

    #[test]
    fn vteps_follow_the_topology() {
        let all = ["10.245.2.1", "10.245.2.2", "10.245.2.3"];
        let cases: [(Topology, usize, &[&str], bool); 4] = [
            (Topology::Mesh, 0, &all, false),
            (Topology::Mesh, 2, &all, false),
            (Topology::Hub, 0, &["10.245.2.2", "10.245.2.3"], true),
            (Topology::Hub, 1, &["10.245.2.1"], false),
        ];
        for (topology, i, want, master) in cases {
            let s = state(topology, 3);
            let conf = s.nodes[i].conflist(&s);
            assert_eq!(vteps(&conf), want, "{topology:?} node {i}");
            assert_eq!(linen_plugin(&conf).unwrap()["isMaster"], master);
        }
    }

    #[test]
    fn conflist_chains_bridge_and_linen_inside_the_lab() {
        let s = state(Topology::Mesh, 2);
        let node = &s.nodes[1];
        let conf = node.conflist(&s);
        assert_eq!(conf["cniVersion"], "1.0.0");
        assert_eq!(conf["name"], NETWORK_NAME);
        let bridge = &conf["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "kbr0");
        assert_eq!(bridge["isGateway"], true);
        let ipam = &bridge["ipam"];
        assert_eq!(ipam["type"], "host-local");
        assert_eq!(ipam["ranges"][0][0]["gateway"], "10.244.2.1");
        let data_dir = Path::new(ipam["dataDir"].as_str().unwrap());
        assert!(
            data_dir.starts_with(&node.run_dir),
            "{}",
            data_dir.display()
        );
        let linen = linen_plugin(&conf).unwrap();
        assert_eq!(linen["ovsBridge"], "br0");
        assert_eq!(linen["datapathType"], "netdev");
        assert_eq!(linen["ovsdbSocket"], "unix:/run/linen-lab/c/n2/db.sock");
        // The runtime side accepts it.
        let bytes = serde_json::to_vec(&conf).unwrap();
        let list = cni::runtime::NetworkConfigList::from_slice(&bytes).unwrap();
        assert_eq!(list.plugins.len(), 3);
        // hostPort: linen guards the ports, portmap (last) forwards them; hairpin on the
        // bridge so a pod reaches itself through its node.
        assert_eq!(bridge["hairpinMode"], true);
        assert!(list.plugins[1].capabilities["portMappings"]);
        assert_eq!(linen["hostPortDir"], "/run/linen-lab/c/n2/hostports");
        assert_eq!(conf["plugins"][2]["type"], "portmap");
        assert_eq!(conf["plugins"][2]["snat"], true);
        assert!(list.plugins[2].capabilities["portMappings"]);
    }

    #[test]
    fn write_is_atomic_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let s = ClusterSpec {
            dir: Some(dir.path().join("w")),
            ..ClusterSpec::new("w", 2)
        }
        .plan();
        let node = &s.nodes[0];
        let path = node.write_conflist(&s).unwrap();
        node.write_conflist(&s).unwrap();
        let read: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(read, node.conflist(&s));
        let names: Vec<_> = std::fs::read_dir(node.conf_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE_NAME]);
    }
}
