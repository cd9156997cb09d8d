//! flaxd on every node of an etcd lab: started inside the node's namespace
//! with the node's own OVSDB socket, its underlay address as VTEP and the
//! lab's etcd; it registers the node under a lease, keeps the node's tunnels
//! in step with the others and writes the node's conflist. Log in
//! `<run dir>/flaxd.log`, pid recorded in the lab state and proven (comm
//! `flaxd`, command line naming the run directory) before every signal.
//!
//! Pod addresses: the lab's plan stays the source of truth (node N's pods in
//! `10.244.N.0/24`, as with static membership), passed as `--pod-cidr`;
//! flaxd records it in etcd with the same compare-and-swap as an allocation
//! (and would refuse it if another node held it), then writes the conflist
//! from it. Pods are wired with that flaxd-written conflist, once it appears;
//! its gateway is checked against the plan.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use thiserror::Error;

use crate::conflist::{LINUX_BRIDGE, NETWORK_NAME, OVS_BRIDGE};
use crate::etcd::{self, Etcd};
use crate::node::{Node, Role};
use crate::pod::{self, BIN_DIR_ENV};
use crate::process::{self, Proof};
use crate::state::LabState;
use crate::wait::{self, Timeout};

pub const PROGRAM: &str = "flaxd";
/// `/metrics` and `/healthz`, on the node's underlay address.
pub const METRICS_PORT: u16 = 9109;
/// flaxd renews its lease once on SIGTERM (bounded at 2 s) and exits.
const TERM_GRACE: Duration = Duration::from_secs(8);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "the flaxd binary is not in {}; build it with `cargo build -p flaxd` (or `--release`) and set {BIN_DIR_ENV} to the directory holding it, or use `--membership static`",
        .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound { searched: Vec<PathBuf> },
    #[error("flaxd of node {node}")]
    Process {
        node: String,
        #[source]
        source: Box<process::Error>,
    },
    #[error("`flaxd --leave` for node {node} failed ({status}): {stderr}")]
    Leave {
        node: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("cannot run `flaxd --leave` for node {node}")]
    LeaveSpawn {
        node: String,
        #[source]
        source: std::io::Error,
    },
    #[error("flaxd of node {node} wrote no conflist at {path} (see {log})")]
    NoConflist {
        node: String,
        path: PathBuf,
        log: PathBuf,
        #[source]
        source: Timeout,
    },
    #[error(
        "flaxd of node {node} wrote a conflist with gateway {found}, not the lab's {planned} ({path})"
    )]
    PodRange {
        node: String,
        found: String,
        planned: String,
        path: PathBuf,
    },
    #[error("the overlay did not converge:\n{lagging}")]
    NotConverged {
        lagging: String,
        #[source]
        source: Timeout,
    },
    #[error("flaxd {pid} of {node} was killed but does not exit")]
    Lingering {
        node: String,
        pid: i32,
        #[source]
        source: Timeout,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What `/healthz` said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// 503 (or another status) and flaxd's reason.
    Unhealthy(String),
    /// Nothing answered.
    Unreachable(String),
}

/// The flaxd binary: in `$LINEN_BIN_DIR`, else next to the running
/// executable, else one level up (test binaries live in `target/*/deps`) —
/// the same search as for the `linen` plugin.
pub fn binary() -> Result<PathBuf> {
    let (env_dir, exe_dir) = pod::bin_dir_hints();
    find_binary(env_dir, exe_dir)
}

/// Pure part of [`binary`].
pub fn find_binary(env_dir: Option<PathBuf>, exe_dir: Option<PathBuf>) -> Result<PathBuf> {
    let candidates = pod::build_dirs(env_dir, exe_dir);
    candidates
        .iter()
        .map(|d| d.join(PROGRAM))
        .find(|p| p.is_file())
        .ok_or(Error::NotFound {
            searched: candidates,
        })
}

impl Node {
    pub fn flaxd_log(&self) -> PathBuf {
        self.run_dir.join("flaxd.log")
    }

    /// This node's etcd client certificate (common name: the node's name)
    /// and key.
    pub fn etcd_client_files(&self) -> crate::pki::CertFiles {
        crate::pki::CertFiles {
            cert: self.run_dir.join("etcd-client.pem"),
            key: self.run_dir.join("etcd-client-key.pem"),
        }
    }

    /// Where flaxd serves `/metrics` and `/healthz`.
    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.underlay_ip.addr()), METRICS_PORT)
    }

    pub(crate) fn flaxd_proof(&self) -> Proof<'_> {
        Proof {
            comm: PROGRAM,
            dir: &self.run_dir,
        }
    }

    /// The recorded flaxd pid, if it still is this node's flaxd.
    pub fn flaxd_running(&self) -> Option<i32> {
        self.flaxd_proof().alive(self.flaxd_pid)
    }

    /// `GET /healthz` of this node's flaxd, from inside the node.
    pub fn flaxd_health(&self) -> Health {
        match self
            .netns
            .http_get(self.metrics_addr(), "/healthz", PROBE_TIMEOUT)
        {
            Ok((200, _)) => Health::Healthy,
            Ok((code, body)) => Health::Unhealthy(format!("{code}: {}", body.trim())),
            Err(e) => Health::Unreachable(e.to_string()),
        }
    }
}

/// flaxd's command line for `node` (pure; see the module doc).
pub fn args(node: &Node, etcd: &Etcd) -> Vec<String> {
    let mut args: Vec<String> = [
        "--source=etcd".to_owned(),
        format!("--etcd-endpoints={}", etcd.endpoint()),
        format!("--etcd-prefix={}", etcd::PREFIX),
        format!("--etcd-lease-ttl={}", etcd.lease_ttl),
        format!("--etcd-ca-cert={}", etcd.pki().ca_cert().display()),
        format!("--etcd-cert={}", node.etcd_client_files().cert.display()),
        format!("--etcd-key={}", node.etcd_client_files().key.display()),
        format!("--node-name={}", node.name),
        format!("--vtep={}", node.vtep()),
        format!("--underlay-mtu={}", node.underlay_mtu),
        format!("--ovsdb=unix:{}", node.ovsdb_socket.display()),
        format!("--bridge={OVS_BRIDGE}"),
        "--datapath=netdev".to_owned(),
        format!("--cluster-cidr={}", node.pods.cluster_cidrs().join(",")),
        format!("--pod-cidr={}", node.pods.node_cidrs().join(",")),
        format!("--conflist={}", node.conflist_path().display()),
        format!("--network-name={NETWORK_NAME}"),
        format!("--linux-bridge={LINUX_BRIDGE}"),
        format!("--ipam-data-dir={}", node.ipam_dir().display()),
        format!("--host-port-dir={}", node.host_port_dir().display()),
        format!("--metrics-addr={}", node.metrics_addr()),
    ]
    .into();
    if node.role == Role::Hub {
        args.push("--hub".to_owned());
    }
    if node.controller {
        args.push(format!("--controller={}", crate::ovs::controller_target()));
    }
    args
}

/// Starts `node`'s flaxd inside its namespace; returns its pid (the caller
/// records it). A new flaxd adopts the node's record and lease if they are
/// still there (a restart within the lease TTL): peers see nothing.
pub fn start(bin: &Path, node: &Node, etcd: &Etcd) -> Result<i32> {
    let mut cmd = node.netns.command(&bin.to_string_lossy());
    cmd.args(args(node, etcd));
    cmd.env("FLAXD_LOG", "info");
    let pid = process::spawn(&mut cmd, &node.flaxd_log()).map_err(|source| Error::Process {
        node: node.name.clone(),
        source: Box::new(source),
    })?;
    tracing::info!(node = %node.name, pid, "flaxd started");
    Ok(pid)
}

/// How to stop a flaxd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// SIGTERM: flaxd exits and leaves the node a member until its lease
    /// expires, for the next flaxd to adopt (SIGKILL if it does not exit in
    /// time). Leaving is [`leave`].
    Clean,
    /// SIGKILL, as a crash would: the lease expires after its TTL.
    Crash,
}

/// Stops `node`'s flaxd, and any flaxd of the node a crash left unrecorded.
/// Idempotent.
pub fn stop(node: &Node, mode: StopMode) -> Result<()> {
    stop_in(&node.name, &node.run_dir, node.flaxd_pid, mode)
}

/// [`stop`] for the node whose run directory is `run_dir` (also without a
/// state that lists it).
pub fn stop_in(node: &str, run_dir: &Path, pid: Option<i32>, mode: StopMode) -> Result<()> {
    let proof = Proof {
        comm: PROGRAM,
        dir: run_dir,
    };
    let signal = match mode {
        StopMode::Clean => Signal::SIGTERM,
        StopMode::Crash => Signal::SIGKILL,
    };
    let mut pids = proof.find_all();
    if let Some(p) = pid.filter(|p| !pids.contains(p)) {
        pids.push(p);
    }
    for pid in pids {
        process::stop(Some(pid), proof, signal, TERM_GRACE).map_err(|source| Error::Process {
            node: node.to_owned(),
            source: Box::new(source),
        })?;
    }
    Ok(())
}

/// The explicit departure of `node`: `flaxd --leave --release-subnet` inside
/// the node with its own flags revokes its lease and deletes its record, so
/// every peer drops it at once, and releases its pod subnet (the lab deletes
/// the node's pods with it). Run it once the node's flaxd is stopped (a
/// running flaxd registers its node again).
pub fn leave(bin: &Path, node: &Node, etcd: &Etcd) -> Result<()> {
    let mut cmd = node.netns.command(&bin.to_string_lossy());
    cmd.args(args(node, etcd))
        .args(["--leave", "--release-subnet"]);
    cmd.env("FLAXD_LOG", "info");
    let out = cmd.output().map_err(|source| Error::LeaveSpawn {
        node: node.name.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Leave {
            node: node.name.clone(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    tracing::info!(node = %node.name, "left the cluster (lease revoked, record deleted)");
    Ok(())
}

/// The last `lines` lines of `node`'s flaxd log, for error messages (the
/// log itself goes with the lab).
pub fn log_tail(node: &Node, lines: usize) -> String {
    let text = std::fs::read_to_string(node.flaxd_log()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The conflist flaxd wrote for `node`, if it is there and parses.
pub fn read_conflist(node: &Node) -> Option<Value> {
    let text = std::fs::read(node.conflist_path()).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Waits up to `limit` for `node`'s flaxd to write its conflist (it does once
/// its pod subnet is recorded in etcd), and checks it hands out the lab's
/// planned range.
pub fn await_conflist(node: &Node, limit: Duration) -> Result<Value> {
    let conf = wait::until(format!("flaxd's conflist of {}", node.name), limit, || {
        read_conflist(node)
    })
    .map_err(|source| Error::NoConflist {
        node: node.name.clone(),
        path: node.conflist_path(),
        log: node.flaxd_log(),
        source,
    })?;
    let found = conf["plugins"][0]["ipam"]["ranges"][0][0]["gateway"]
        .as_str()
        .unwrap_or_default();
    let planned = node.pods.first_gateway();
    if found != planned {
        return Err(Error::PodRange {
            node: node.name.clone(),
            found: found.to_owned(),
            planned,
            path: node.conflist_path(),
        });
    }
    Ok(conf)
}

/// The tunnels flaxd gives `node`: one to every other node of the lab (a hub
/// layout only changes which are protected).
pub fn expected_remotes(state: &LabState, node: &Node) -> Vec<IpAddr> {
    state
        .nodes
        .iter()
        .filter(|n| n.index != node.index)
        .map(Node::vtep)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ClusterSpec, Membership, Topology};

    #[test]
    fn args_point_at_the_nodes_own_everything() {
        let state = ClusterSpec {
            topology: Topology::Hub,
            membership: Membership::Etcd,
            dir: Some("/run/linen-lab/f".into()),
            ..ClusterSpec::new("f", 3)
        }
        .plan();
        let etcd = state.etcd.as_ref().unwrap();
        let hub = args(&state.nodes[0], etcd);
        let spoke = args(&state.nodes[2], etcd);
        for want in [
            "--source=etcd",
            "--etcd-endpoints=https://10.245.2.254:2379",
            "--etcd-ca-cert=/run/linen-lab/f/etcd/pki/ca.pem",
            "--etcd-cert=/run/linen-lab/f/n3/etcd-client.pem",
            "--etcd-key=/run/linen-lab/f/n3/etcd-client-key.pem",
            "--etcd-lease-ttl=3",
            "--node-name=f-n3",
            "--vtep=10.245.2.3",
            "--ovsdb=unix:/run/linen-lab/f/n3/db.sock",
            "--datapath=netdev",
            "--pod-cidr=10.244.3.0/24",
            "--conflist=/run/linen-lab/f/n3/net.d/10-linen.conflist",
            "--host-port-dir=/run/linen-lab/f/n3/hostports",
            "--network-name=linen-lab",
            "--ipam-data-dir=/run/linen-lab/f/n3/ipam",
            "--metrics-addr=10.245.2.3:9109",
        ] {
            assert!(spoke.iter().any(|a| a == want), "{want} in {spoke:?}");
        }
        assert!(hub.iter().any(|a| a == "--hub"));
        assert!(!spoke.iter().any(|a| a == "--hub"));
        let remotes: Vec<String> = expected_remotes(&state, &state.nodes[1])
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(remotes, ["10.245.2.1", "10.245.2.3"]);
    }

    #[test]
    fn binary_search() {
        let root = tempfile::tempdir().unwrap();
        let release = root.path().join("release");
        let deps = release.join("deps");
        std::fs::create_dir_all(&deps).unwrap();
        let err = find_binary(None, Some(deps.clone()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cargo build -p flaxd") && err.contains("--membership static"),
            "{err}"
        );
        std::fs::write(release.join("flaxd"), "").unwrap();
        assert_eq!(
            find_binary(None, Some(deps.clone())).unwrap(),
            release.join("flaxd")
        );
        assert!(find_binary(Some(deps), Some(release.clone())).is_err());
    }
}
