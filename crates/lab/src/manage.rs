//! Operating on a lab from any process, by name and directory: status, and
//! taking it apart (by its owner's `Cluster::down` or `Drop`, by
//! `linen-lab down`, or before a new `up` after a crash). Teardown tolerates
//! things already gone.

use std::path::{Path, PathBuf};

use crate::cluster::Error;
use crate::etcd::Etcd;
use crate::flaxd::{self, Health, StopMode};
use crate::members::unwire_pods;
use crate::netns::{self, Netns};
use crate::node::Node;
use crate::overlay::{self, Tunnel};
use crate::ovs::{Daemon, Ovs};
use crate::pod::Pod;
use crate::spec::{is_lab_netns, underlay_netns, validate_name};
use crate::state::{self, LabState, Opened, Owner};
use crate::{Result, error_chain};

/// Tears down the lab `name` whose directory is `dir`, whoever started it.
/// Idempotent: a lab that is not there is success. Fails if a live process
/// owns the lab.
pub fn down(name: &str, dir: &Path) -> Result<()> {
    validate_name(name)?;
    match state::open(dir)? {
        Opened::Busy => {
            let owner = state::read_state(dir)
                .ok()
                .flatten()
                .and_then(|s| match s.owner {
                    Owner::Process { pid } => Some(pid),
                    Owner::Detached => None,
                });
            Err(Error::Busy {
                name: name.to_owned(),
                dir: dir.to_path_buf(),
                owner,
            }
            .into())
        }
        Opened::Missing => teardown(name, dir, None),
        Opened::Locked(lock) => {
            let state = state::read_state(dir)?;
            match &state {
                Some(s) if s.name != name => {
                    return Err(Error::NotALabDir {
                        name: name.to_owned(),
                        dir: dir.to_path_buf(),
                    }
                    .into());
                }
                None if !state::is_empty_dir(dir) => {
                    return Err(Error::NotALabDir {
                        name: name.to_owned(),
                        dir: dir.to_path_buf(),
                    }
                    .into());
                }
                _ => {}
            }
            teardown(name, dir, state.as_ref())?;
            drop(lock);
            Ok(())
        }
    }
}

/// Tears down the lab in `dir` that this process runs (it holds the lab's lock, so
/// [`down`] would find the lab busy): for `linen-lab` interrupted by a signal while
/// `demo` or `up` has the lab. The same teardown as [`down`]: everything recorded, plus
/// the namespaces, daemons and directory found by name when the state is not written yet.
pub fn abort(name: &str, dir: &Path) -> Result<()> {
    validate_name(name)?;
    let state = state::read_state(dir)
        .ok()
        .flatten()
        .filter(|s| s.name == name);
    teardown(name, dir, state.as_ref())
}

/// The recorded state of the lab in `dir`, if there is one.
pub fn load(dir: &Path) -> Result<Option<LabState>> {
    Ok(state::read_state(dir)?)
}

/// A node as it is now.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    pub node: Node,
    pub netns_exists: bool,
    pub ovsdb_server: Option<i32>,
    pub ovs_vswitchd: Option<i32>,
    /// With etcd membership: flaxd's pid if it runs, and its `/healthz`.
    pub flaxd: Option<FlaxdStatus>,
    /// With `up --controller`: whether the bridge is connected to the node's controller
    /// (`Some(false)` also when it cannot be read).
    pub controller_connected: Option<bool>,
    pub tunnels: Tunnels,
}

/// A node's flaxd as it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlaxdStatus {
    pub pid: Option<i32>,
    pub health: Health,
}

/// The lab's etcd as it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdStatus {
    pub endpoint: String,
    pub pid: Option<i32>,
    pub healthy: bool,
    pub lease_ttl: u32,
}

/// The lab's etcd, if it has one, with its liveness and `/health`.
pub fn etcd_status(state: &LabState) -> Option<EtcdStatus> {
    state.etcd.as_ref().map(|e| {
        let pid = e.running_pid();
        EtcdStatus {
            endpoint: e.endpoint(),
            pid,
            healthy: pid.is_some() && e.healthy(&state.underlay),
            lease_ttl: e.lease_ttl,
        }
    })
}

/// Linen's tunnels on a node, as its OVSDB says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tunnels {
    /// ovsdb-server is not running.
    NoOvsdb,
    /// No overlay bridge yet: the node's first pod ADD creates it.
    NoBridge,
    Ports(Vec<Tunnel>),
    /// OVSDB did not answer as expected; the error, for display.
    Unreadable(String),
}

impl Tunnels {
    fn read(node: &Node, ovsdb_alive: bool) -> Self {
        if !ovsdb_alive {
            return Tunnels::NoOvsdb;
        }
        match overlay::tunnels(node) {
            Ok(Some(ports)) => Tunnels::Ports(ports),
            Ok(None) => Tunnels::NoBridge,
            Err(e) => Tunnels::Unreadable(error_chain(&e)),
        }
    }
}

/// The lab in `dir` as recorded, with what is alive now; `None` if there is
/// no lab there.
pub fn status(dir: &Path) -> Result<Option<(LabState, Vec<NodeStatus>)>> {
    let Some(state) = state::read_state(dir)? else {
        return Ok(None);
    };
    let nodes = state
        .nodes
        .iter()
        .map(|n| {
            let ovs = n.ovs();
            let ovsdb_server = ovs.pid(Daemon::OvsdbServer);
            let flaxd = state.etcd.as_ref().map(|_| {
                let pid = n.flaxd_running();
                FlaxdStatus {
                    pid,
                    health: match pid {
                        Some(_) => n.flaxd_health(),
                        None => Health::Unreachable("not running".into()),
                    },
                }
            });
            NodeStatus {
                node: n.clone(),
                netns_exists: n.netns.exists(),
                ovsdb_server,
                ovs_vswitchd: ovs.pid(Daemon::Vswitchd),
                flaxd,
                controller_connected: n
                    .controller
                    .then(|| ovsdb_server.is_some() && controller_connected(&ovs)),
                tunnels: Tunnels::read(n, ovsdb_server.is_some()),
            }
        })
        .collect();
    Ok(Some((state, nodes)))
}

/// True if ovs-vswitchd reports a Controller row of the node connected.
pub fn controller_connected(ovs: &crate::Ovs) -> bool {
    crate::cmd::run(
        ovs.vsctl()
            .args(["--bare", "--columns=is_connected", "list", "Controller"]),
    )
    .is_ok_and(|out| out.lines().any(|l| l.trim() == "true"))
}

/// True if every namespace exists and every node's OVS daemons are alive.
pub fn is_running(state: &LabState) -> bool {
    state.underlay.netns.exists()
        && state.nodes.iter().all(|n| {
            let ovs = n.ovs();
            n.netns.exists() && Daemon::ALL.iter().all(|d| ovs.pid(*d).is_some())
        })
}

/// Stops OVS on every node found in the state or the directory, deletes the
/// lab's namespaces, removes the directory. Keeps going past failures and
/// reports the first.
pub(crate) fn teardown(name: &str, dir: &Path, state: Option<&LabState>) -> Result<()> {
    let mut first: Option<crate::Error> = None;
    let mut note = |r: Result<()>| {
        if let Err(e) = r {
            tracing::warn!(lab = name, error = %error_chain(&e), "teardown step failed");
            first.get_or_insert(e);
        }
    };
    // What runs in the pods' namespaces (a ping, an iperf3 an interrupted demo left) is
    // the lab's: killed first, since the pods' DEL below also deletes their namespaces.
    if let Some(state) = state {
        for pod in &state.pods {
            note(pod.netns.kill_all().map_err(Into::into));
        }
    }
    // CNI DEL for every pod while its node and OVS still run (best effort:
    // deleting the namespaces below removes what a failed DEL left).
    if let Some(state) = state {
        std::thread::scope(|s| {
            for node in &state.nodes {
                let pods: Vec<Pod> = state.pods_on(node.index).cloned().collect();
                if !pods.is_empty() {
                    s.spawn(move || {
                        if let Err(e) = unwire_pods(state, node, &pods) {
                            tracing::warn!(node = %node.name, error = %error_chain(&e), "pod DEL during teardown");
                        }
                    });
                }
            }
        });
    }
    // flaxd before etcd, so that none of them sees etcd go (in parallel: each
    // renews its lease one last time, bounded); then etcd; then OVS.
    let nodes = run_dirs(name, dir, state);
    // A node's containerd (`--runtime containerd`) first: its sandboxes are removed through
    // CRI (the chain's DEL) while flaxd and OVS still run, then it and its pods' cgroups go.
    for (netns, run_dir) in &nodes {
        let cri = crate::cri::Layout::in_run_dir(netns.name(), run_dir);
        if cri.dir.exists() {
            note(crate::cri::stop_in(&cri).map_err(Into::into));
        }
    }
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let stops: Vec<_> = nodes
            .iter()
            .map(|(netns, run_dir)| {
                let pid = state
                    .and_then(|s| s.nodes.iter().find(|n| n.run_dir == *run_dir))
                    .and_then(|n| n.flaxd_pid);
                s.spawn(move || {
                    flaxd::stop_in(netns.name(), run_dir, pid, StopMode::Clean).map_err(Into::into)
                })
            })
            .collect();
        stops
            .into_iter()
            .map(|t| t.join().expect("flaxd stop panicked"))
            .collect()
    });
    results.into_iter().for_each(&mut note);
    let etcd = state
        .and_then(|s| s.etcd.clone())
        .unwrap_or_else(|| Etcd::plan(dir, 0));
    note(etcd.stop().map_err(Into::into));
    for (netns, run_dir) in nodes {
        note(Ovs::new(netns, run_dir).stop().map_err(Into::into));
    }
    let mut owned: Vec<Netns> = state
        .map(|s| {
            let pods = s.pods.iter().map(|p| p.netns.clone());
            pods.chain(s.nodes.iter().map(|n| n.netns.clone()))
                .collect()
        })
        .unwrap_or_default();
    owned.push(Netns::new(underlay_netns(name)));
    // Namespaces of ours the state does not list (a lost state file) go too,
    // unless something still runs in them.
    let listed = netns::list().unwrap_or_else(|e| {
        note(Err(e.into()));
        Vec::new()
    });
    for leftover in listed.into_iter().filter(|n| is_lab_netns(name, n)) {
        let ns = Netns::new(leftover);
        if owned.contains(&ns) {
            continue;
        }
        match ns.pids() {
            Ok(pids) if pids.is_empty() => owned.insert(0, ns),
            Ok(pids) => tracing::warn!(netns = ns.name(), ?pids, "left alone: processes run in it"),
            Err(e) => note(Err(e.into())),
        }
    }
    // Pods, then nodes, then the underlay; each deletion also removes its veth pair.
    // What still runs in a namespace of ours (a ping, an iperf3 server, a daemon an
    // interrupted command started) is ours: killed first, or it would keep the
    // namespace alive, unnamed, after the deletion.
    for ns in &owned {
        note(ns.kill_all().map_err(Into::into));
        note(ns.delete().map_err(Into::into));
    }
    note(state::remove_lab_dir(dir).map_err(Into::into));
    first.map_or(Ok(()), Err)
}

/// Node run directories: from the state, plus any `n<i>` directory present.
fn run_dirs(name: &str, dir: &Path, state: Option<&LabState>) -> Vec<(Netns, PathBuf)> {
    let mut found: Vec<(Netns, PathBuf)> = state
        .map(|s| {
            s.nodes
                .iter()
                .map(|n| (n.netns.clone(), n.run_dir.clone()))
                .collect()
        })
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let netns = format!("{name}-{file}");
            if is_lab_netns(name, &netns) && !found.iter().any(|(_, d)| *d == entry.path()) {
                found.push((Netns::new(netns), entry.path()));
            }
        }
    }
    found
}

/// Before building in a fresh directory: namespaces with this lab's names
/// are remains of a crash whose directory is gone, unless processes run in
/// them (then another directory may hold a live lab of the same name).
pub(crate) fn remove_leftover_namespaces(name: &str, dir: &Path) -> Result<()> {
    for leftover in netns::list()?.into_iter().filter(|n| is_lab_netns(name, n)) {
        let ns = Netns::new(leftover);
        let pids = ns.pids()?;
        if !pids.is_empty() {
            return Err(Error::ForeignNamespace {
                name: name.to_owned(),
                netns: ns.name().to_owned(),
                pids,
                dir: dir.to_path_buf(),
            }
            .into());
        }
        tracing::warn!(netns = ns.name(), "removing a leftover namespace");
        ns.delete()?;
    }
    Ok(())
}
