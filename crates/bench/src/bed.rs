//! The test bed: a lab of real nodes (one OVS each, netdev datapath) with a unique name
//! under a temporary directory, the conflists the benchmarks run, and the node-level
//! operations they need (direct plugin calls, making a node cold, snapshots for leaks).
//! Dropping the bed tears the lab down (namespaces, OVS daemons, links) and removes the
//! directory, on success and on failure alike.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cni::Version;
use cni::runtime::{Exec, NetworkConfigList};
use linen_lab::{Cluster, ClusterSpec, NetnsGuard, Node};
use rand::Rng;
use serde_json::{Value, json};

use crate::machine::{self, SYSTEM_CNI_DIR};
use crate::proc::{self, Run};

pub const NETWORK: &str = "linen-bench";
pub const VERSION: Version = Version::V1_0_0;
pub const LINUX_BRIDGE: &str = "kbr0";
pub const OVS_BRIDGE: &str = "br0";
pub const POD_IFNAME: &str = "eth0";
/// Bound on waiting for ovs-vswitchd to remove a bridge's link.
const GONE_TIMEOUT: Duration = Duration::from_secs(30);

/// The binaries under test.
#[derive(Clone, Debug)]
pub struct Bins {
    /// Holds `linen` (and `flaxd` when built).
    pub dir: PathBuf,
    pub linen: PathBuf,
    pub bridge: PathBuf,
    pub flaxd: Option<PathBuf>,
}

impl Bins {
    pub fn find() -> Result<Bins> {
        let dir = machine::bin_dir()?;
        let bridge = Path::new(SYSTEM_CNI_DIR).join("bridge");
        if !bridge.is_file() || !Path::new(SYSTEM_CNI_DIR).join("host-local").is_file() {
            bail!(
                "the reference CNI plugins are missing from {SYSTEM_CNI_DIR}: run ./scripts/install-deps.sh"
            );
        }
        Ok(Bins {
            linen: dir.join("linen"),
            flaxd: machine::flaxd_bin(&dir),
            dir,
            bridge,
        })
    }

    /// CNI_PATH: ours first, then the reference plugins.
    pub fn cni_path(&self) -> String {
        format!("{}:{SYSTEM_CNI_DIR}", self.dir.display())
    }
}

pub struct Bed {
    /// First field: dropped (torn down) before `root` is removed.
    pub cluster: Cluster,
    pub bins: Bins,
    pub root: tempfile::TempDir,
    next_pod: AtomicU32,
}

/// `<prefix>` + 6 random characters: a lab name no other run or test uses.
pub fn unique_name(prefix: &str) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..6)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

impl Bed {
    /// Brings up `nodes` lab nodes (OVS with `br-phy`, underlay verified by ping).
    pub fn up(nodes: usize, bins: Bins) -> Result<Bed> {
        let name = unique_name("lb");
        let root = tempfile::Builder::new()
            .prefix("linen-bench-")
            .tempdir()
            .context("create the bench's temporary directory")?;
        let spec = ClusterSpec {
            dir: Some(root.path().join(&name)),
            pods_per_node: 0,
            ..ClusterSpec::new(&name, nodes)
        };
        let cluster = Cluster::up_nodes(spec)
            .map_err(|e| anyhow!("lab {name} up: {}", linen_lab::error_chain(&e)))?;
        Ok(Bed {
            cluster,
            bins,
            root,
            next_pod: AtomicU32::new(1),
        })
    }

    pub fn node(&self, i: usize) -> NodeCtx<'_> {
        NodeCtx {
            bed: self,
            node: &self.cluster.nodes()[i],
        }
    }

    /// Every node's underlay address: a mesh conflist (linen skips its own).
    pub fn vteps(&self) -> Vec<IpAddr> {
        self.cluster
            .nodes()
            .iter()
            .map(|n| IpAddr::V4(n.underlay_ip.addr()))
            .collect()
    }
}

/// A pod: a network namespace `<node>-p<k>` (inside the lab's naming, so a crash is
/// cleaned up by the lab's teardown too), deleted on drop.
pub struct PodNs {
    pub name: String,
    pub path: PathBuf,
    pub container_id: String,
    _guard: NetnsGuard,
}

impl PodNs {
    pub fn rt(&self) -> cni::runtime::RuntimeConf {
        cni::runtime::RuntimeConf {
            container_id: self.container_id.clone(),
            netns: self.path.clone(),
            ifname: POD_IFNAME.into(),
            ..Default::default()
        }
    }
}

/// One lab node seen by the benchmarks.
#[derive(Clone, Copy)]
pub struct NodeCtx<'a> {
    pub bed: &'a Bed,
    pub node: &'a Node,
}

impl NodeCtx<'_> {
    pub fn netns(&self) -> &Path {
        &self.node.netns_path
    }

    pub fn underlay_ip(&self) -> Ipv4Addr {
        self.node.underlay_ip.addr()
    }

    /// host-local's reservations for this node live here.
    pub fn ipam_dir(&self) -> PathBuf {
        self.bed
            .root
            .path()
            .join(format!("ipam-{}", self.node.index))
    }

    pub fn exec(&self) -> Exec {
        Exec::new(
            vec![self.bed.bins.dir.clone(), PathBuf::from(SYSTEM_CNI_DIR)],
            self.bed
                .root
                .path()
                .join(format!("cache-{}", self.node.index)),
        )
        .in_netns(self.netns())
    }

    pub fn bridge_conf(&self) -> Value {
        let mut ipam = self.node.pods.host_local_ipam();
        ipam["dataDir"] = json!(self.ipam_dir().display().to_string());
        json!({"type": "bridge", "bridge": LINUX_BRIDGE, "isGateway": true, "ipam": ipam})
    }

    pub fn linen_conf(&self, vteps: &[IpAddr]) -> Value {
        linen::config::PluginConf {
            seed: linen::config::SeedFields {
                ovs_bridge: Some(OVS_BRIDGE.to_owned()),
                vtep_ips: Some(vteps.iter().map(ToString::to_string).collect()),
                ..Default::default()
            },
            datapath_type: Some("netdev".to_owned()),
            ovsdb_socket: Some(format!("unix:{}", self.node.ovsdb_socket.display())),
            ..Default::default()
        }
        .to_json()
    }

    /// bridge + host-local + linen, as a node's conflist.
    pub fn chain(&self, vteps: &[IpAddr]) -> Result<NetworkConfigList> {
        conflist(vec![self.bridge_conf(), self.linen_conf(vteps)])
    }

    /// A fresh pod namespace on this node.
    pub fn pod(&self) -> Result<PodNs> {
        let k = self.bed.next_pod.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-p{k}", self.node.name);
        let guard = NetnsGuard::ensure(&name)
            .map_err(|e| anyhow!("pod netns {name}: {}", linen_lab::error_chain(&e)))?;
        Ok(PodNs {
            path: guard.path(),
            container_id: format!("bench-{name}"),
            name,
            _guard: guard,
        })
    }

    /// Runs one plugin binary directly inside this node's namespace, as a runtime would.
    pub fn invoke(&self, plugin: &Path, command: &str, pod: &PodNs, stdin: &[u8]) -> Result<Run> {
        let mut cmd = Command::new(plugin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.container_id)
            .env("CNI_NETNS", &pod.path)
            .env("CNI_IFNAME", POD_IFNAME)
            .env("CNI_PATH", self.bed.bins.cni_path());
        proc::run(&mut cmd, Some(self.netns()), stdin)
    }

    /// `ovs-vsctl` against this node's database (harness work only, never timed).
    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        let db = format!("--db=unix:{}", self.node.ovsdb_socket.display());
        let mut all = vec![db.as_str(), "--timeout=30"];
        all.extend_from_slice(args);
        proc::ok("ovs-vsctl", &all, None)
    }

    /// True if a link of this name exists in the node's namespace.
    pub fn has_link(&self, name: &str) -> bool {
        let mut cmd = Command::new("ip");
        cmd.args(["link", "show", "dev", name]);
        proc::run(&mut cmd, Some(self.netns()), b"").is_ok_and(|r| r.ok())
    }

    /// Puts the node back to "no overlay yet": deletes the OVS bridge (with its tunnels)
    /// and, with `linux_bridge`, the pods' Linux bridge; returns once the kernel links are
    /// gone so the next ADD really starts cold.
    pub fn make_cold(&self, linux_bridge: bool) -> Result<()> {
        self.vsctl(&["--if-exists", "del-br", OVS_BRIDGE])?;
        if linux_bridge && self.has_link(LINUX_BRIDGE) {
            proc::ok("ip", &["link", "del", LINUX_BRIDGE], Some(self.netns()))?;
        }
        let started = Instant::now();
        while self.has_link(OVS_BRIDGE) || (linux_bridge && self.has_link(LINUX_BRIDGE)) {
            crate::stop::check()?;
            if started.elapsed() > GONE_TIMEOUT {
                bail!(
                    "{}: {OVS_BRIDGE} still has a link after del-br",
                    self.node.name
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Links of the node namespace as `name kind`, sorted.
    pub fn links(&self) -> Result<Vec<String>> {
        let text = proc::ok("ip", &["-d", "-j", "link", "show"], Some(self.netns()))?;
        let v: Value = serde_json::from_str(&text).context("ip -j link")?;
        let mut out: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                format!(
                    "{} {}",
                    l["ifname"].as_str().unwrap_or("?"),
                    l["linkinfo"]["info_kind"].as_str().unwrap_or("-")
                )
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// host-local's reservation files (one per address in use), sorted.
    pub fn reservations(&self) -> Result<Vec<String>> {
        let dir = self.ipam_dir().join(NETWORK);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("list {}", dir.display())),
        };
        let mut out = Vec::new();
        for e in entries {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.parse::<IpAddr>().is_ok() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Rows of the OVS tables a pod could leave behind: (Bridge, Port, Interface) counts.
    pub fn ovs_rows(&self) -> Result<[usize; 3]> {
        let mut out = [0; 3];
        for (i, table) in ["Bridge", "Port", "Interface"].iter().enumerate() {
            let text = self.vsctl(&["--format=json", "--columns=_uuid", "list", table])?;
            let v: Value = serde_json::from_str(&text).context("ovs-vsctl json")?;
            out[i] = v["data"].as_array().map_or(0, Vec::len);
        }
        Ok(out)
    }
}

/// A conflist in [`VERSION`] named [`NETWORK`].
pub fn conflist(plugins: Vec<Value>) -> Result<NetworkConfigList> {
    let v = json!({"cniVersion": VERSION.as_str(), "name": NETWORK, "plugins": plugins});
    NetworkConfigList::from_slice(v.to_string().as_bytes()).context("bench conflist")
}

/// A plugin's stdin as libcni builds it: its configuration with `cniVersion`, `name` and
/// (when chained) `prevResult`.
pub fn request(conf: &Value, prev: Option<&cni::types::Result>) -> Vec<u8> {
    let mut v = conf.clone();
    v["cniVersion"] = json!(VERSION.as_str());
    v["name"] = json!(NETWORK);
    if let Some(p) = prev {
        v["prevResult"] = p.to_value(VERSION);
    }
    v.to_string().into_bytes()
}
