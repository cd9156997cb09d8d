//! A lab cluster: the underlay, N nodes each with its own OVS and `br-phy`,
//! verified by real pings; torn down by `down`, by `Drop`, or by the next `up`
//! after a crash.

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::cmd;
use crate::manage::{is_running, remove_leftover_namespaces, teardown};
use crate::netns::Netns;
use crate::node::Node;
use crate::ovs::Ovs;
use crate::spec::{ClusterSpec, MAX_NAME_LEN, Membership, validate_name};
use crate::state::{self, Claim, LabDir, LabState, Opened, Owner};
use crate::underlay::Underlay;
use crate::wait::{self, Timeout};
use crate::{Result, error_chain, flaxd, pod, preflight};

#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "invalid lab name {name:?}: {reason} (use 1-{MAX_NAME_LEN} of a-z, 0-9, '-', starting with a letter)"
    )]
    InvalidName { name: String, reason: &'static str },
    #[error("a lab has 1 to {max} nodes, not {nodes}")]
    NodeCount { nodes: usize, max: u8 },
    #[error(
        "--runtime containerd needs etcd membership: flaxd writes the conflist containerd's CRI reads"
    )]
    RuntimeNeedsEtcd,
    #[error("the etcd lease TTL must be 1 to 3600 seconds, not {ttl}")]
    LeaseTtl { ttl: u32 },
    #[error("underlay MTU {mtu} leaves no room for VXLAN pods (use 1280-9000)")]
    Mtu { mtu: u32 },
    #[error(
        "lab {name} is already running (state in {}); run `linen-lab down --name {name}` first",
        .dir.display()
    )]
    AlreadyRunning { name: String, dir: PathBuf },
    #[error(
        "lab {name} is in use by another process{}: its up, down or test is in progress (state in {})",
        .owner.map(|pid| format!(" (pid {pid})")).unwrap_or_default(), .dir.display()
    )]
    Busy {
        name: String,
        dir: PathBuf,
        owner: Option<u32>,
    },
    #[error(
        "{} exists but is not the directory of lab {name}; remove it or choose another --dir",
        .dir.display()
    )]
    NotALabDir { name: String, dir: PathBuf },
    #[error(
        "network namespace {netns} exists with processes {pids:?} but {} has no record of it; is lab {name} running with another --dir?",
        .dir.display()
    )]
    ForeignNamespace {
        name: String,
        netns: String,
        pids: Vec<i32>,
        dir: PathBuf,
    },
    #[error(
        "lab {name} is not running (no state in {}); start it with `linen-lab up --name {name}`",
        .dir.display()
    )]
    NotRunning { name: String, dir: PathBuf },
    #[error(
        "lab {name} was left behind by process {pid}, which is gone; run `linen-lab down --name {name}` to clean it up"
    )]
    Crashed { name: String, pid: u32 },
    #[error("lab {lab} has no node {node} (nodes: {})", .known.join(", "))]
    UnknownNode {
        lab: String,
        node: String,
        known: Vec<String>,
    },
    #[error("lab {lab} has no pod {pod} (pods: {})", if .known.is_empty() { "none".to_owned() } else { .known.join(", ") })]
    UnknownPod {
        lab: String,
        pod: String,
        known: Vec<String>,
    },
    #[error(
        "node {node} is the hub: every spoke's tunnel ends there; delete the spokes first, or `down` the lab"
    )]
    DeleteHub { node: String },
    #[error(
        "lab {lab} runs no flaxd: it was brought up with `--membership static` (use `--membership etcd`)"
    )]
    NoFlaxd { lab: String },
    #[error("node {node} is the lab's last node; use `linen-lab down` to remove the lab")]
    DeleteLastNode { node: String },
    #[error("node {from} cannot reach {to} ({ip}) over the underlay")]
    Unreachable {
        from: String,
        to: String,
        ip: String,
        #[source]
        source: Timeout,
    },
}

const PING_TIMEOUT: Duration = Duration::from_secs(15);

/// A running lab owned by this value: dropping it tears the lab down, unless
/// it was `detach`ed.
#[derive(Debug)]
pub struct Cluster {
    pub(crate) state: LabState,
    pub(crate) lock: Option<LabDir>,
    /// Opened from another process's detached lab: dropping only unlocks.
    pub(crate) keep_on_drop: bool,
}

impl Cluster {
    /// Builds the lab: [`Cluster::up_nodes`], then `spec.pods_per_node` pods
    /// on every node through the real CNI chain. On failure everything
    /// created so far is torn down.
    pub fn up(spec: ClusterSpec) -> Result<Cluster> {
        if spec.pods_per_node > 0 {
            // Before anything is created: a missing plugin is a usage error.
            spec.validate()?;
            preflight::check_for(spec.membership)?;
            pod::plugin_dirs()?;
        }
        let mut cluster = Self::up_nodes(spec)?;
        cluster.add_planned_pods()?;
        Ok(cluster)
    }

    /// Builds the nodes only: preflight, claims its directory (cleaning up a
    /// crashed lab of the same name first), creates underlay and nodes,
    /// starts OVS, sets up `br-phy`, writes each node's conflist and checks
    /// every node pings every other. [`Cluster::add_planned_pods`] adds the
    /// pods of the spec. On failure everything created so far is torn down.
    pub fn up_nodes(spec: ClusterSpec) -> Result<Cluster> {
        spec.validate()?;
        preflight::check_for(spec.membership)?;
        if spec.membership == Membership::Etcd {
            flaxd::binary()?;
        }
        let planned = spec.plan();
        let dir = planned.dir.clone();
        // Two rounds: a stale lab found in the first is removed, then claimed.
        for _ in 0..2 {
            let stale = match state::claim(&dir, &planned)? {
                Claim::Fresh(lock) => return Self::build(planned, lock),
                Claim::Busy(state) => {
                    return Err(Error::Busy {
                        name: spec.name,
                        owner: state.and_then(|s| match s.owner {
                            Owner::Process { pid } => Some(pid),
                            Owner::Detached => None,
                        }),
                        dir,
                    }
                    .into());
                }
                Claim::Existing(lock, state) => (lock, state),
            };
            match stale {
                (lock, Some(state)) if state.name == spec.name => {
                    if state.owner == Owner::Detached && is_running(&state) {
                        return Err(Error::AlreadyRunning {
                            name: spec.name,
                            dir,
                        }
                        .into());
                    }
                    tracing::warn!(lab = %spec.name, dir = %dir.display(), "cleaning up a crashed lab");
                    teardown(&spec.name, &dir, Some(&state))?;
                    drop(lock);
                }
                (lock, None) if state::is_empty_dir(&dir) => {
                    std::fs::remove_dir(&dir).ok();
                    drop(lock);
                }
                (_, _) => {
                    return Err(Error::NotALabDir {
                        name: spec.name,
                        dir,
                    }
                    .into());
                }
            }
        }
        Err(Error::Busy {
            name: spec.name,
            owner: None,
            dir,
        }
        .into())
    }

    fn build(state: LabState, lock: LabDir) -> Result<Cluster> {
        tracing::info!(lab = %state.name, nodes = state.nodes.len(), dir = %lock.path().display(), "bringing up");
        // From here on, dropping `cluster` (an early return) tears down.
        let mut cluster = Cluster {
            state,
            lock: Some(lock),
            keep_on_drop: false,
        };
        remove_leftover_namespaces(&cluster.state.name, &cluster.state.dir)?;
        cluster.state.underlay.ensure()?;
        if let Some(mut etcd) = cluster.state.etcd.clone() {
            let (name, underlay) = (cluster.state.name.clone(), cluster.state.underlay.clone());
            etcd.start(&name, &underlay, |started| {
                cluster.state.etcd = Some(started.clone());
                cluster.save()
            })?;
        }
        for pos in 0..cluster.state.nodes.len() {
            cluster.start_node(pos)?;
        }
        cluster.verify_underlay()?;
        cluster.await_overlay()?;
        tracing::info!(lab = %cluster.state.name, "lab up");
        Ok(cluster)
    }

    /// Creates the node at position `pos` of the state (the underlay
    /// exists): its namespace and uplink, its OVS, `br-phy`; then, with
    /// static membership, its conflist, or with etcd its flaxd (pid recorded
    /// at once), which writes the conflist itself.
    pub(crate) fn start_node(&mut self, pos: usize) -> Result<()> {
        let node = self.state.nodes[pos].clone();
        Netns::ensure(node.netns.name())?;
        self.state
            .underlay
            .attach(&node.netns, &node.underlay_port)?;
        let ovs = Ovs::start(node.netns.clone(), &node.run_dir)?;
        if node.controller {
            ovs.start_controller()?;
        }
        node.provision(&self.state.name)?;
        match &self.state.etcd {
            None => {
                node.write_conflist(&self.state)?;
            }
            Some(etcd) => {
                crate::etcd_auth::grant_node(
                    etcd,
                    &self.state.underlay,
                    &node.name,
                    &node.etcd_client_files(),
                )?;
                let pid = flaxd::start(&flaxd::binary()?, &node, etcd)?;
                self.state.nodes[pos].flaxd_pid = Some(pid);
                self.save()?;
            }
        }
        tracing::info!(node = %node.name, ip = %node.underlay_ip, "node up");
        Ok(())
    }

    /// Locks the running lab `name` in `dir`, left running by another
    /// process (`linen-lab up`, `demo --keep`), to change it: add or delete
    /// pods and nodes. Dropping the value only unlocks; `down` tears down.
    pub fn open(name: &str, dir: &Path) -> Result<Cluster> {
        validate_name(name)?;
        let not_running = || Error::NotRunning {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
        };
        let lock = match state::open(dir)? {
            Opened::Missing => return Err(not_running().into()),
            Opened::Busy => {
                let owner = state::read_state(dir)
                    .ok()
                    .flatten()
                    .and_then(|s| match s.owner {
                        Owner::Process { pid } => Some(pid),
                        Owner::Detached => None,
                    });
                return Err(Error::Busy {
                    name: name.to_owned(),
                    dir: dir.to_path_buf(),
                    owner,
                }
                .into());
            }
            Opened::Locked(lock) => lock,
        };
        let state = state::read_state(dir)?.ok_or_else(not_running)?;
        if state.name != name {
            return Err(Error::NotALabDir {
                name: name.to_owned(),
                dir: dir.to_path_buf(),
            }
            .into());
        }
        if let Owner::Process { pid } = state.owner {
            return Err(Error::Crashed {
                name: name.to_owned(),
                pid,
            }
            .into());
        }
        Ok(Cluster {
            state,
            lock: Some(lock),
            keep_on_drop: true,
        })
    }

    /// Every node pings every other node's underlay address, each pair
    /// retried within a bounded time.
    pub fn verify_underlay(&self) -> Result<()> {
        for from in &self.state.nodes {
            for to in self.state.nodes.iter().filter(|n| n.index != from.index) {
                let ip = to.vtep().to_string();
                let what = format!("{} to ping {}", from.name, to.name);
                let mut ping = || {
                    let mut cmd = from.netns.command("ping");
                    cmd.args(["-c1", "-W1", &ip]);
                    cmd::succeeds(&mut cmd).then_some(())
                };
                wait::until(what, PING_TIMEOUT, &mut ping).map_err(|source| {
                    Error::Unreachable {
                        from: from.name.clone(),
                        to: to.name.clone(),
                        ip: ip.clone(),
                        source,
                    }
                })?;
            }
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    pub fn state(&self) -> &LabState {
        &self.state
    }

    pub fn nodes(&self) -> &[Node] {
        &self.state.nodes
    }

    /// The node named `<lab>-n<i>`, or `n<i>`, or `<i>`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.state.node(name)
    }

    pub fn underlay(&self) -> &Underlay {
        &self.state.underlay
    }

    /// Leaves the lab running after this value is gone (the CLI's `up`); it
    /// stays until `down`.
    pub fn detach(mut self) -> Result<LabState> {
        self.state.owner = Owner::Detached;
        if let Some(lock) = &self.lock {
            lock.write(&self.state)?;
        }
        self.lock = None;
        Ok(self.state.clone())
    }

    /// Stops every process, deletes every namespace and link, removes the
    /// directory. Idempotent: a second call does nothing.
    pub fn down(&mut self) -> Result<()> {
        let Some(lock) = self.lock.take() else {
            return Ok(());
        };
        teardown(&self.state.name, &self.state.dir, Some(&self.state))?;
        drop(lock);
        tracing::info!(lab = %self.state.name, "lab down");
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.keep_on_drop {
            return;
        }
        if let Err(e) = self.down() {
            tracing::error!(lab = %self.state.name, error = %error_chain(&e), "teardown failed");
        }
    }
}
