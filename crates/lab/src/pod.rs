//! Pods: a network namespace per pod, wired to its node through the real CNI
//! chain (`bridge` + `host-local`, then `linen`), run by the `cni` crate's
//! runtime inside the node's namespace, as a container runtime would.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cni::runtime::{Exec, NetworkConfigList, RuntimeConf};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cmd::{self, CmdError};
use crate::conflist;
use crate::flaxd;
use crate::netns::{self, Netns};
use crate::node::Node;
use crate::spec::Membership;
use crate::state::LabState;

/// The interface name inside every pod.
pub const POD_IFNAME: &str = "eth0";
/// Set to the directory holding the `linen` binary to pick it explicitly.
pub const BIN_DIR_ENV: &str = "LINEN_BIN_DIR";
/// Where Debian (and then everyone else) puts the reference plugins.
pub const SYSTEM_PLUGIN_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];

#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "the linen CNI plugin binary is not in {}; build it with `cargo build -p linen` (or `cargo build --release -p linen`) and set {BIN_DIR_ENV} to the directory holding it (e.g. target/release)",
        .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    LinenNotFound { searched: Vec<PathBuf> },
    #[error(transparent)]
    Conflist(#[from] conflist::Error),
    #[error(transparent)]
    Flaxd(#[from] flaxd::Error),
    #[error("read the CNI config of node {node}")]
    ParseConflist {
        node: String,
        #[source]
        source: Box<cni::runtime::Error>,
    },
    #[error("create the namespace of pod {pod}")]
    Netns {
        pod: String,
        #[source]
        source: netns::Error,
    },
    #[error("CNI ADD of pod {pod} on node {node}")]
    Add {
        pod: String,
        node: String,
        #[source]
        source: Box<cni::runtime::Error>,
    },
    #[error("CNI DEL of pod {pod} on node {node}")]
    Del {
        pod: String,
        node: String,
        #[source]
        source: Box<cni::runtime::Error>,
    },
    #[error("the CNI result of pod {pod} has no address")]
    NoAddress { pod: String },
    #[error("read the interface of pod {pod}")]
    Inspect {
        pod: String,
        #[source]
        source: CmdError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One pod, as recorded in the lab state. The addresses are filled in by a
/// successful ADD; before that (or after a crash half-way) they are `None`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// `<lab>-n<node>-p<index>`, also its namespace name and container id.
    pub name: String,
    /// The index of its node.
    pub node: u8,
    /// 1-based, per node.
    pub index: u16,
    pub netns: Netns,
    pub container_id: String,
    pub ifname: String,
    pub ip: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    /// Dual-stack pods (`--ip-family dual`): the IPv6 address and gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<std::net::Ipv6Addr>,
    /// hostPorts the pod asks for: passed to the chain as `runtimeConfig.portMappings`
    /// (on ADD and DEL alike, as a container runtime does).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<PortMapping>,
    /// With `--runtime containerd`: the CRI pod sandbox (containerd ran the chain; the
    /// pod's named namespace is bound to the sandbox's, `ip netns attach`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// One hostPort of a pod: `HOST:CONTAINER[/PROTO]` on the command line, e.g. `8080:80/tcp`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

impl PortMapping {
    /// The CNI conventions' form, as the `portmap` plugin reads it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol,
        })
    }
}

impl std::str::FromStr for PortMapping {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ports, protocol) = match s.split_once('/') {
            Some((p, proto)) => (p, proto.to_ascii_lowercase()),
            None => (s, "tcp".to_owned()),
        };
        if protocol != "tcp" && protocol != "udp" {
            return Err(format!("{s:?}: protocol must be tcp or udp"));
        }
        let port = |p: &str| {
            p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                format!("{s:?}: {p:?} is not a port (1-65535); use HOST:CONTAINER[/tcp|udp]")
            })
        };
        let (host, container) = ports
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: use HOST:CONTAINER[/tcp|udp], e.g. 8080:80/tcp"))?;
        Ok(PortMapping {
            host_port: port(host)?,
            container_port: port(container)?,
            protocol,
        })
    }
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

impl Pod {
    /// The plan for pod `index` of node `node`; nothing is created.
    pub fn plan(lab: &str, node: u8, index: u16) -> Self {
        let name = format!("{lab}-n{node}-p{index}");
        Self {
            netns: Netns::new(name.clone()),
            container_id: name.clone(),
            name,
            node,
            index,
            ifname: POD_IFNAME.to_owned(),
            ip: None,
            gateway: None,
            mac: None,
            mtu: None,
            ip6: None,
            gateway6: None,
            host_ports: Vec::new(),
            sandbox: None,
        }
    }

    /// The name without the lab prefix: `n1-p2`.
    pub fn short_name(&self) -> String {
        format!("n{}-p{}", self.node, self.index)
    }

    /// The attachment parameters of this pod.
    pub fn runtime_conf(&self) -> RuntimeConf {
        let mut rt = RuntimeConf {
            container_id: self.container_id.clone(),
            netns: self.netns.path(),
            ifname: self.ifname.clone(),
            ..RuntimeConf::default()
        };
        if !self.host_ports.is_empty() {
            rt.capability_args.insert(
                "portMappings".into(),
                self.host_ports.iter().map(PortMapping::to_json).collect(),
            );
        }
        rt
    }
}

/// The next free pod index on `node` (one past the highest in use).
pub fn next_index(state: &LabState, node: u8) -> u16 {
    state
        .pods
        .iter()
        .filter(|p| p.node == node)
        .map(|p| p.index)
        .max()
        .unwrap_or(0)
        + 1
}

/// The plugin directories (CNI_PATH): the one holding `linen` first, then the
/// system's. `linen` is looked for in `$LINEN_BIN_DIR`, else next to the
/// running executable, else one level up (test binaries live in
/// `target/<profile>/deps`), else in the system directories.
pub fn plugin_dirs() -> Result<Vec<PathBuf>> {
    let (env_dir, exe_dir) = bin_dir_hints();
    find_plugin_dirs(env_dir, exe_dir)
}

/// `$LINEN_BIN_DIR` and the running executable's directory: where this build's binaries
/// (`linen`, `flaxd`) are looked for.
pub fn bin_dir_hints() -> (Option<PathBuf>, Option<PathBuf>) {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    (std::env::var_os(BIN_DIR_ENV).map(PathBuf::from), exe_dir)
}

/// The directories that may hold this build's binaries, in order: `env_dir` alone when
/// set (an explicit choice is the only one: never fall back to another build), else
/// `exe_dir` and its parent (test binaries live in `target/<profile>/deps`).
pub fn build_dirs(env_dir: Option<PathBuf>, exe_dir: Option<PathBuf>) -> Vec<PathBuf> {
    match env_dir {
        Some(dir) => vec![dir],
        None => exe_dir
            .iter()
            .flat_map(|d| [Some(d.clone()), d.parent().map(Path::to_path_buf)])
            .flatten()
            .collect(),
    }
}

/// Pure part of [`plugin_dirs`].
pub fn find_plugin_dirs(
    env_dir: Option<PathBuf>,
    exe_dir: Option<PathBuf>,
) -> Result<Vec<PathBuf>> {
    let system: Vec<PathBuf> = SYSTEM_PLUGIN_DIRS.iter().map(PathBuf::from).collect();
    let explicit = env_dir.is_some();
    let mut candidates = build_dirs(env_dir, exe_dir);
    if !explicit {
        candidates.extend(system.iter().cloned());
    }
    let found = candidates.iter().find(|d| d.join("linen").is_file());
    match found {
        Some(dir) => {
            let mut dirs = vec![dir.clone()];
            dirs.extend(system.into_iter().filter(|s| s != dir));
            Ok(dirs)
        }
        None => Err(Error::LinenNotFound {
            searched: candidates,
        }),
    }
}

/// How long a pod ADD waits for flaxd's conflist on a node that just started.
pub const CONFLIST_WAIT: Duration = Duration::from_secs(30);

/// The runtime and the parsed conflist for pods of `node`: plugins run in the
/// node's namespace, results are cached in its run directory. With static
/// membership the conflist is (re)written from `state` first; with etcd it is
/// the one flaxd wrote, waited for up to [`CONFLIST_WAIT`].
pub fn runtime(state: &LabState, node: &Node) -> Result<(Exec, NetworkConfigList)> {
    runtime_within(state, node, CONFLIST_WAIT)
}

/// [`runtime`], waiting at most `wait` for flaxd's conflist (zero: only what
/// is there now, as for a DEL).
pub fn runtime_within(
    state: &LabState,
    node: &Node,
    wait: Duration,
) -> Result<(Exec, NetworkConfigList)> {
    let dirs = plugin_dirs()?;
    let conf = match state.membership {
        Membership::Static => {
            node.write_conflist(state)?;
            node.conflist(state)
        }
        Membership::Etcd => flaxd::await_conflist(node, wait)?,
    };
    let bytes = serde_json::to_vec(&conf).expect("a JSON value serializes");
    let list = NetworkConfigList::from_slice(&bytes).map_err(|source| Error::ParseConflist {
        node: node.name.clone(),
        source: Box::new(source),
    })?;
    let exec = Exec::new(dirs, node.cni_cache_dir()).in_netns(&node.netns_path);
    Ok((exec, list))
}

/// Creates the pod's namespace and runs CNI ADD for it; returns the pod with
/// its address, MAC and MTU. On failure runs DEL and deletes the namespace,
/// so nothing of the pod is left.
pub fn attach(exec: &Exec, list: &NetworkConfigList, node: &Node, pod: &Pod) -> Result<Pod> {
    Netns::ensure(pod.netns.name()).map_err(|source| Error::Netns {
        pod: pod.name.clone(),
        source,
    })?;
    let rt = pod.runtime_conf();
    let added = exec
        .add_network_list(list, &rt)
        .map_err(|source| Error::Add {
            pod: pod.name.clone(),
            node: node.name.clone(),
            source: Box::new(source),
        })
        .and_then(|result| describe(pod, &result));
    match added {
        Ok(wired) => {
            tracing::info!(pod = %pod.name, ip = ?wired.ip, mtu = ?wired.mtu, "pod up");
            Ok(wired)
        }
        Err(e) => {
            tracing::warn!(pod = %pod.name, error = %crate::error_chain(&e), "ADD failed; undoing");
            if let Err(del) = exec.del_network_list(list, &rt) {
                tracing::warn!(pod = %pod.name, error = %del, "DEL after failed ADD");
            }
            let _ = pod.netns.delete();
            Err(e)
        }
    }
}

/// Runs CNI DEL for the pod (if its node still exists) and deletes its
/// namespace. Keeps going past a failed DEL (reported after the namespace is
/// gone). Idempotent.
pub fn detach(exec: Option<(&Exec, &NetworkConfigList)>, node: &Node, pod: &Pod) -> Result<()> {
    let del = match exec {
        Some((exec, list)) if node.netns.exists() => exec
            .del_network_list(list, &pod.runtime_conf())
            .map_err(|source| Error::Del {
                pod: pod.name.clone(),
                node: node.name.clone(),
                source: Box::new(source),
            }),
        _ => Ok(()),
    };
    pod.netns.delete().map_err(|source| Error::Netns {
        pod: pod.name.clone(),
        source,
    })?;
    del
}

/// The pod as the ADD result and its namespace describe it: the address from
/// the result, MAC and MTU from the kernel (linen may have lowered the MTU).
fn describe(pod: &Pod, result: &cni::types::Result) -> Result<Pod> {
    let v4 = result.ips.iter().find_map(|c| match c.address {
        IpNet::V4(net) => Some((net, c.gateway)),
        IpNet::V6(_) => None,
    });
    let v6 = result
        .ips
        .iter()
        .find_map(|c| match (c.address, c.gateway) {
            (IpNet::V6(net), gw) => Some((
                net,
                gw.and_then(|g| match g {
                    std::net::IpAddr::V6(g) => Some(g),
                    std::net::IpAddr::V4(_) => None,
                }),
            )),
            _ => None,
        });
    // An IPv4 address, an IPv6 one, or both (`--ip-family ipv4|ipv6|dual`).
    if v4.is_none() && v6.is_none() {
        return Err(Error::NoAddress {
            pod: pod.name.clone(),
        });
    }
    let out = cmd::run(&mut pod.netns.ip(["-j", "link", "show", "dev", &pod.ifname])).map_err(
        |source| Error::Inspect {
            pod: pod.name.clone(),
            source,
        },
    )?;
    let (mac, mtu) = parse_link(&out);
    Ok(Pod {
        ip: v4.map(|(net, _)| net),
        gateway: v4.and_then(|(_, gw)| gw).and_then(|g| match g {
            std::net::IpAddr::V4(g) => Some(g),
            std::net::IpAddr::V6(_) => None,
        }),
        mac,
        mtu,
        ip6: v6.map(|(net, _)| net),
        gateway6: v6.and_then(|(_, gw)| gw),
        ..pod.clone()
    })
}

/// MAC and MTU from `ip -j link show dev X` (or `ip -j addr show dev X`).
pub(crate) fn parse_link(json: &str) -> (Option<String>, Option<u32>) {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let link = &v[0];
    (
        link["address"].as_str().map(str::to_owned),
        link["mtu"].as_u64().and_then(|m| u32::try_from(m).ok()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_names() {
        let p = Pod::plan("demo", 2, 3);
        assert_eq!(p.name, "demo-n2-p3");
        assert_eq!(p.netns.name(), "demo-n2-p3");
        assert_eq!(p.container_id, "demo-n2-p3");
        assert_eq!(p.short_name(), "n2-p3");
        assert_eq!(
            p.runtime_conf().netns,
            PathBuf::from("/var/run/netns/demo-n2-p3")
        );
        assert!(crate::spec::is_lab_netns("demo", p.netns.name()));
    }

    #[test]
    fn host_ports_parse_and_reach_the_runtime_config() {
        let m: PortMapping = "8080:80/tcp".parse().unwrap();
        assert_eq!(
            m,
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into()
            }
        );
        assert_eq!(
            "53:5353/UDP".parse::<PortMapping>().unwrap().protocol,
            "udp"
        );
        assert_eq!(
            "81:80".parse::<PortMapping>().unwrap().to_string(),
            "81:80/tcp"
        );
        for bad in ["80", "0:80", "80:70000", "x:80", "80:80/icmp", ""] {
            assert!(bad.parse::<PortMapping>().is_err(), "{bad}");
        }
        let mut p = Pod::plan("demo", 1, 1);
        assert!(p.runtime_conf().capability_args.is_empty());
        p.host_ports.push(m);
        assert_eq!(
            p.runtime_conf().capability_args["portMappings"],
            serde_json::json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
        );
    }

    #[test]
    fn plugin_dir_search() {
        let root = tempfile::tempdir().unwrap();
        let release = root.path().join("release");
        let deps = release.join("deps");
        std::fs::create_dir_all(&deps).unwrap();
        let none = find_plugin_dirs(None, Some(deps.clone()));
        let err = none.unwrap_err().to_string();
        assert!(
            err.contains("cargo build -p linen") && err.contains(BIN_DIR_ENV),
            "{err}"
        );

        std::fs::write(release.join("linen"), "").unwrap();
        let dirs = find_plugin_dirs(None, Some(deps.clone())).unwrap();
        assert_eq!(dirs[0], release);
        assert_eq!(
            &dirs[1..],
            [PathBuf::from("/usr/lib/cni"), "/opt/cni/bin".into()]
        );
        let dirs = find_plugin_dirs(None, Some(release.clone())).unwrap();
        assert_eq!(dirs[0], release);
        // An explicit directory without linen is an error, not a fallback.
        assert!(find_plugin_dirs(Some(deps.clone()), Some(release.clone())).is_err());
        assert_eq!(
            find_plugin_dirs(Some(release.clone()), None).unwrap()[0],
            release
        );
    }

    #[test]
    fn parses_ip_link_json() {
        let out = r#"[{"ifindex":2,"ifname":"eth0","mtu":1450,"address":"aa:bb:cc:dd:ee:ff"}]"#;
        assert_eq!(
            parse_link(out),
            (Some("aa:bb:cc:dd:ee:ff".into()), Some(1450))
        );
        assert_eq!(parse_link("garbage"), (None, None));
    }

    #[test]
    fn next_index_is_past_the_highest() {
        let mut state = crate::spec::ClusterSpec::new("x", 2).plan();
        assert_eq!(next_index(&state, 1), 1);
        state.pods.push(Pod::plan("x", 1, 1));
        state.pods.push(Pod::plan("x", 1, 3));
        state.pods.push(Pod::plan("x", 2, 7));
        assert_eq!(next_index(&state, 1), 4);
        assert_eq!(next_index(&state, 2), 8);
    }
}
