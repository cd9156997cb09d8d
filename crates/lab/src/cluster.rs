//! A lab cluster: the underlay, N nodes each with its own OVS and `br-phy`,
//! verified by real pings; torn down by `down`, by `Drop`, or by the next `up`
//! after a crash.

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::cmd;
use crate::manage::{is_running, remove_leftover_namespaces, teardown};
use crate::netns::Netns;
use crate::node::{MAX_NODES, Node};
use crate::ovs::Ovs;
use crate::spec::{ClusterSpec, MAX_NAME_LEN};
use crate::state::{self, Claim, LabDir, LabState, Owner};
use crate::underlay::Underlay;
use crate::wait::{self, Timeout};
use crate::{Result, error_chain, preflight};

#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "invalid lab name {name:?}: {reason} (use 1-{MAX_NAME_LEN} of a-z, 0-9, '-', starting with a letter)"
    )]
    InvalidName { name: String, reason: &'static str },
    #[error("a lab has 1 to {MAX_NODES} nodes, not {nodes}")]
    NodeCount { nodes: usize },
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
    state: LabState,
    lock: Option<LabDir>,
}

impl Cluster {
    /// Builds the lab: preflight, claims its directory (cleaning up a crashed
    /// lab of the same name first), creates underlay and nodes, starts OVS,
    /// sets up `br-phy` and checks every node pings every other. On failure
    /// everything created so far is torn down.
    pub fn up(spec: ClusterSpec) -> Result<Cluster> {
        spec.validate()?;
        preflight::check()?;
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
        let cluster = Cluster {
            state,
            lock: Some(lock),
        };
        let state = &cluster.state;
        remove_leftover_namespaces(&state.name, &state.dir)?;
        state.underlay.ensure()?;
        for node in &state.nodes {
            Netns::ensure(node.netns.name())?;
            state.underlay.attach(&node.netns, &node.underlay_port)?;
            Ovs::start(node.netns.clone(), &node.run_dir)?;
            node.provision(&state.name)?;
            tracing::info!(node = %node.name, ip = %node.underlay_ip, "node up");
        }
        cluster.verify_underlay()?;
        tracing::info!(lab = %state.name, "lab up");
        Ok(cluster)
    }

    /// Every node pings every other node's underlay address, each pair
    /// retried within a bounded time.
    pub fn verify_underlay(&self) -> Result<()> {
        for from in &self.state.nodes {
            for to in self.state.nodes.iter().filter(|n| n.index != from.index) {
                let ip = to.underlay_ip.addr().to_string();
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
        if let Err(e) = self.down() {
            tracing::error!(lab = %self.state.name, error = %error_chain(&e), "teardown failed");
        }
    }
}
