//! Changing a running lab: pods come and go through CNI ADD and DEL, nodes
//! join and leave. Every change is recorded in the state file before it is
//! made (a crash leaves enough for `down` to clean up) and again after.
//!
//! A node joining or leaving changes the other nodes' tunnels:
//! - with etcd membership, by itself: the joining node's flaxd registers it
//!   in etcd and every other flaxd adds a tunnel to it; a leaving node's
//!   flaxd is stopped with SIGTERM (which alone keeps the node a member: a
//!   restart is not a departure), then `flaxd --leave` revokes its lease and
//!   deletes its record, and every other flaxd drops its tunnel. The lab only waits for it ([`Cluster::await_overlay`]).
//! - with static membership, the other nodes' conflists (`vtepIPs`) are
//!   rewritten and their overlay re-applied at once through
//!   [`overlay::reapply`] (the plugin's own `Ovs::ensure`, from the rewritten
//!   conflist) rather than waiting for each node's next pod ADD.

use std::collections::BTreeMap;

use crate::cluster::{Cluster, Error};
use cni::runtime::{Exec, NetworkConfigList};

use crate::node::{Node, Role};
use crate::pod::{self, Pod};
use crate::spec::{Membership, Topology};
use crate::state::LabState;
use crate::{Result, error_chain, flaxd, overlay, state};

impl Cluster {
    /// Adds the spec's `pods_per_node` pods to every node.
    pub fn add_planned_pods(&mut self) -> Result<Vec<Pod>> {
        let count = self.state.pods_per_node;
        let plan: Vec<(u8, u16)> = self.state.nodes.iter().map(|n| (n.index, count)).collect();
        self.add_pods(&plan)
    }

    /// Adds one pod to the node named `node` (`<lab>-n<i>`, `n<i>` or `<i>`).
    pub fn add_pod(&mut self, node: &str) -> Result<Pod> {
        self.add_pod_with_ports(node, &[])
    }

    /// [`Cluster::add_pod`] for a pod asking for `host_ports` (passed to the chain as
    /// `runtimeConfig.portMappings`, as kubelet's runtime does for `hostPort`).
    pub fn add_pod_with_ports(
        &mut self,
        node: &str,
        host_ports: &[pod::PortMapping],
    ) -> Result<Pod> {
        let index = self.known_node(node)?.index;
        let mut added = self.add_pods_with(&[(index, 1)], host_ports)?;
        Ok(added.remove(0))
    }

    /// Adds `count` pods to each listed node: nodes in parallel, the pods of
    /// one node one after another. Pods whose ADD failed are undone and
    /// dropped from the state; the first failure is returned after all ran.
    pub fn add_pods(&mut self, plan: &[(u8, u16)]) -> Result<Vec<Pod>> {
        self.add_pods_with(plan, &[])
    }

    fn add_pods_with(
        &mut self,
        plan: &[(u8, u16)],
        host_ports: &[pod::PortMapping],
    ) -> Result<Vec<Pod>> {
        let mut planned: Vec<Pod> = Vec::new();
        for &(node, count) in plan {
            let first = pod::next_index(&self.state, node);
            for i in 0..count {
                let mut p = Pod::plan(&self.state.name, node, first + i);
                p.host_ports = host_ports.to_vec();
                self.state.pods.push(p.clone());
                planned.push(p);
            }
        }
        if planned.is_empty() {
            return Ok(Vec::new());
        }
        self.save()?;
        let state = &self.state;
        let nodes: Vec<&Node> = state
            .nodes
            .iter()
            .filter(|n| planned.iter().any(|p| p.node == n.index))
            .collect();
        // Before any namespace exists: a missing plugin fails every pod alike.
        let runtimes: Result<Vec<_>> = nodes.iter().map(|n| NodeRuntime::of(state, n)).collect();
        let runtimes = match runtimes {
            Ok(r) => r,
            Err(e) => {
                self.state.pods.retain(|p| !planned.contains(p));
                self.save()?;
                return Err(e);
            }
        };
        let results: Vec<(String, Result<Pod>)> = std::thread::scope(|s| {
            let workers: Vec<_> = nodes
                .iter()
                .zip(&runtimes)
                .map(|(node, runtime)| {
                    let mine: Vec<&Pod> = planned.iter().filter(|p| p.node == node.index).collect();
                    s.spawn(move || wire_node_pods(runtime, node, &mine))
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("pod worker panicked"))
                .collect()
        });
        let mut first_err = None;
        let mut added = Vec::new();
        for (name, result) in results {
            let slot = self.state.pods.iter().position(|p| p.name == name);
            match (result, slot) {
                (Ok(p), Some(i)) => {
                    self.state.pods[i] = p.clone();
                    added.push(p);
                }
                (Err(e), Some(i)) => {
                    self.state.pods.remove(i);
                    first_err.get_or_insert(e);
                }
                (_, None) => unreachable!("planned pods are in the state"),
            }
        }
        self.save()?;
        match first_err {
            Some(e) => Err(e),
            None => Ok(added),
        }
    }

    /// Runs CNI DEL for the pod named `name` (`<lab>-n<i>-p<j>` or
    /// `n<i>-p<j>`), deletes its namespace and forgets it.
    pub fn del_pod(&mut self, name: &str) -> Result<()> {
        let pod = self
            .state
            .pod(name)
            .cloned()
            .ok_or_else(|| Error::UnknownPod {
                lab: self.state.name.clone(),
                pod: name.to_owned(),
                known: self.state.pods.iter().map(Pod::short_name).collect(),
            })?;
        let node = self.known_node(&format!("n{}", pod.node))?.clone();
        let result = unwire_pods(&self.state, &node, std::slice::from_ref(&pod));
        if !pod.netns.exists() {
            self.state.pods.retain(|p| p.name != pod.name);
            self.save()?;
        }
        result
    }

    /// A new node joins: the next free index, a peer in a mesh or a spoke of
    /// the hub. Its OVS (and flaxd) is started and the underlay checked; the
    /// other nodes gain a tunnel to it (see the module doc) before this
    /// returns. Returns the new node.
    pub fn add_node(&mut self) -> Result<Node> {
        let index = self.state.nodes.iter().map(|n| n.index).max().unwrap_or(0);
        if index >= crate::spec::max_nodes(self.state.membership) {
            return Err(Error::NodeCount {
                nodes: usize::from(index) + 1,
                max: crate::spec::max_nodes(self.state.membership),
            }
            .into());
        }
        let index = index + 1;
        let role = match self.state.topology {
            Topology::Mesh => Role::Peer,
            Topology::Hub => Role::Spoke,
        };
        let dual = self
            .state
            .nodes
            .first()
            .is_some_and(|n| n.pods.v6.is_some());
        let v6_underlay = self
            .state
            .nodes
            .first()
            .is_some_and(|n| n.underlay_ip6.is_some());
        let node = Node {
            // Like the first node's: the lab was brought up with or without controllers,
            // single- or dual-stack.
            controller: self.state.nodes.first().is_some_and(|n| n.controller),
            pods: match self.state.nodes.first().map(|n| &n.pods) {
                Some(first) if first.v6.is_some() && !first.v4 => {
                    crate::node::PodRange::ipv6_only(index)
                }
                _ if dual => crate::node::PodRange::dual(index),
                _ => crate::node::PodRange::for_node(index),
            },
            underlay_ip6: v6_underlay.then(|| Node::underlay_ip6_for(index)),
            ..Node::plan(
                &self.state.name,
                index,
                role,
                &self.state.dir,
                self.state.underlay.mtu,
            )
        };
        self.state.nodes.push(node.clone());
        self.save()?;
        self.start_node(self.state.nodes.len() - 1)?;
        self.verify_underlay()?;
        self.follow_membership()?;
        tracing::info!(node = %node.name, "node joined");
        Ok(self.state.nodes.last().cloned().unwrap_or(node))
    }

    /// Node `name` leaves: its pods are deleted (CNI DEL), its flaxd stopped
    /// with SIGTERM and `flaxd --leave` run (lease revoked, record deleted),
    /// its OVS stopped, its namespace and
    /// directory removed; the other nodes' tunnels to it are gone before
    /// this returns (see the module doc). The hub and the last node cannot
    /// leave.
    pub fn del_node(&mut self, name: &str) -> Result<()> {
        let node = self.known_node(name)?.clone();
        if node.role == Role::Hub {
            return Err(Error::DeleteHub { node: node.name }.into());
        }
        if self.state.nodes.len() == 1 {
            return Err(Error::DeleteLastNode { node: node.name }.into());
        }
        let pods: Vec<Pod> = self.state.pods_on(node.index).cloned().collect();
        if let Err(e) = unwire_pods(&self.state, &node, &pods) {
            tracing::warn!(node = %node.name, error = %error_chain(&e), "pod cleanup");
        }
        flaxd::stop(&node, flaxd::StopMode::Clean)?;
        if let Some(etcd) = &self.state.etcd {
            flaxd::leave(&flaxd::binary()?, &node, etcd)?;
            crate::etcd_auth::revoke_node(etcd, &self.state.underlay, &node.name)?;
        }
        node.ovs().stop()?;
        // Deleting the namespace removes its uplink's veth pair too.
        node.netns.delete()?;
        state::remove_lab_dir(&node.run_dir)?;
        self.state.pods.retain(|p| p.node != node.index);
        self.state.nodes.retain(|n| n.index != node.index);
        self.save()?;
        self.follow_membership()?;
        tracing::info!(node = %node.name, "node left");
        Ok(())
    }

    /// After a node joined or left: with static membership rewrite the
    /// conflists and re-apply; with etcd wait for the flaxds to follow.
    fn follow_membership(&self) -> Result<()> {
        match self.state.membership {
            Membership::Static => self.reapply().map(drop),
            Membership::Etcd => self.await_overlay(),
        }
    }

    /// Rewrites every node's conflist from the state and makes each existing
    /// overlay match it. Returns the number of OVSDB changes per node.
    /// With etcd membership flaxd owns conflists and tunnels: does nothing.
    pub fn reapply(&self) -> Result<BTreeMap<String, usize>> {
        let mut changes = BTreeMap::new();
        if self.state.membership == Membership::Etcd {
            return Ok(changes);
        }
        for node in &self.state.nodes {
            node.write_conflist(&self.state)?;
            let n = overlay::reapply(node, &node.conflist(&self.state))?;
            changes.insert(node.name.clone(), n);
        }
        Ok(changes)
    }

    pub(crate) fn known_node(&self, name: &str) -> Result<&Node> {
        self.state.node(name).ok_or_else(|| {
            Error::UnknownNode {
                lab: self.state.name.clone(),
                node: name.to_owned(),
                known: self.state.nodes.iter().map(|n| n.name.clone()).collect(),
            }
            .into()
        })
    }

    pub(crate) fn save(&self) -> Result<()> {
        if let Some(lock) = &self.lock {
            lock.write(&self.state)?;
        }
        Ok(())
    }
}

/// ADDs `pods` of `node` one after another; each result is named by pod.
/// Who wires a node's pods: the lab's own CNI runtime, or the node's containerd over CRI.
enum NodeRuntime {
    Cni(Exec, NetworkConfigList),
    Cri(crate::cri::Cri),
}

impl NodeRuntime {
    fn of(state: &LabState, node: &Node) -> Result<Self> {
        Ok(match state.runtime {
            crate::spec::Runtime::Cni => {
                let (exec, list) = pod::runtime(state, node)?;
                NodeRuntime::Cni(exec, list)
            }
            crate::spec::Runtime::Containerd => {
                // containerd reads flaxd's conflist: wait for it as a CNI ADD would.
                flaxd::await_conflist(node, pod::CONFLIST_WAIT)?;
                NodeRuntime::Cri(crate::cri::start(node)?)
            }
        })
    }
}

fn wire_node_pods(runtime: &NodeRuntime, node: &Node, pods: &[&Pod]) -> Vec<(String, Result<Pod>)> {
    pods.iter()
        .map(|p| {
            let r = match runtime {
                NodeRuntime::Cni(exec, list) => {
                    pod::attach(exec, list, node, p).map_err(Into::into)
                }
                NodeRuntime::Cri(cri) => crate::cri::attach(cri, node, p).map_err(Into::into),
            };
            (p.name.clone(), r)
        })
        .collect()
}

/// DELs `pods` of `node` (only deletes their namespaces when the plugins
/// cannot run) and deletes their namespaces. Returns the first failure after
/// trying all.
pub(crate) fn unwire_pods(state: &LabState, node: &Node, pods: &[Pod]) -> Result<()> {
    let (cri_pods, pods): (Vec<&Pod>, Vec<&Pod>) = pods.iter().partition(|p| p.sandbox.is_some());
    let mut first: Option<crate::Error> = None;
    for p in cri_pods {
        if let Err(e) = crate::cri::detach(node, p) {
            tracing::warn!(pod = %p.name, error = %error_chain(&e), "CRI pod cleanup");
            first.get_or_insert(e.into());
        }
    }
    let runtime = if node.netns.exists() && !pods.is_empty() {
        pod::runtime_within(state, node, std::time::Duration::ZERO)
            .inspect_err(|e| {
                tracing::warn!(node = %node.name, error = %error_chain(e), "cannot run CNI DEL; deleting pod namespaces only");
            })
            .ok()
    } else {
        None
    };
    for p in pods {
        if let Err(e) = pod::detach(runtime.as_ref().map(|(e, l)| (e, l)), node, p) {
            tracing::warn!(pod = %p.name, error = %error_chain(&e), "pod cleanup");
            first.get_or_insert(e.into());
        }
    }
    first.map_or(Ok(()), Err)
}
