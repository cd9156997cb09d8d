//! The daemons of an etcd lab: waiting for every flaxd to have its tunnels,
//! and operating one node's daemons as an operator or a failure would: flaxd
//! stopped cleanly, killed, started again; ovs-vswitchd crashing and being
//! restarted. The lab never repairs anything afterwards: what comes back is
//! flaxd's and OVS's own doing.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use crate::cluster::{Cluster, Error};
use crate::flaxd::{self, StopMode};
use crate::ovs::Daemon;
use crate::wait;
use crate::{Result, overlay, spec::Membership};

/// flaxd reacts within its debounce (100 ms) of an etcd event; a node that
/// just started also waits for etcd and its first OVSDB transaction.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

impl Cluster {
    /// With etcd membership, waits until every node's flaxd has a tunnel to
    /// every other node and to no one else (bounded); nothing to wait for
    /// with static membership.
    pub fn await_overlay(&self) -> Result<()> {
        if self.state.etcd.is_none() {
            return Ok(());
        }
        let state = &self.state;
        let lagging = || -> Vec<String> {
            state
                .nodes
                .iter()
                .filter_map(|n| {
                    let want: BTreeSet<IpAddr> =
                        flaxd::expected_remotes(state, n).into_iter().collect();
                    let got = overlay::flaxd_remotes(n);
                    (got.as_ref() != Some(&want)).then(|| {
                        format!(
                            "{} has tunnels to {got:?}, wants {want:?}; its flaxd log ends:\n{}",
                            n.name,
                            flaxd::log_tail(n, 5)
                        )
                    })
                })
                .collect()
        };
        let converged = || {
            state.nodes.iter().all(|n| {
                let want: BTreeSet<IpAddr> =
                    flaxd::expected_remotes(state, n).into_iter().collect();
                overlay::flaxd_remotes(n).is_some_and(|got| got == want)
            })
        };
        wait::until("every node's flaxd tunnels", CONVERGE_TIMEOUT, || {
            converged().then_some(())
        })
        .map_err(|source| flaxd::Error::NotConverged {
            lagging: lagging().join("\n"),
            source,
        })?;
        Ok(())
    }

    /// Stops the flaxd of node `name`: [`StopMode::Clean`] (SIGTERM) or
    /// [`StopMode::Crash`] (SIGKILL). Either way the node stays a member
    /// until its lease TTL runs out, and a flaxd started again within the TTL
    /// adopts it: peers never see it leave. Idempotent.
    pub fn stop_flaxd(&mut self, name: &str, mode: StopMode) -> Result<()> {
        let pos = self.etcd_node(name)?;
        flaxd::stop(&self.state.nodes[pos], mode)?;
        self.state.nodes[pos].flaxd_pid = None;
        self.save()
    }

    /// Starts the flaxd of node `name` again; returns its pid (the running
    /// one's if it runs).
    pub fn start_flaxd(&mut self, name: &str) -> Result<i32> {
        let pos = self.etcd_node(name)?;
        let node = &self.state.nodes[pos];
        if let Some(pid) = node.flaxd_running() {
            if !crate::process::dying(pid) {
                return Ok(pid);
            }
            // Killed from outside a moment ago and not gone yet: wait for it to
            // go, then start a new one (else this would return the dying pid
            // and start nothing).
            let proof = node.flaxd_proof();
            wait::until(
                format!("the killed flaxd {pid} of {name} to exit"),
                Duration::from_secs(10),
                || (!proof.holds(pid)).then_some(()),
            )
            .map_err(|source| flaxd::Error::Lingering {
                node: name.to_owned(),
                pid,
                source,
            })?;
        }
        let etcd = self.state.etcd.as_ref().expect("an etcd lab has etcd");
        let pid = flaxd::start(&flaxd::binary()?, node, etcd)?;
        self.state.nodes[pos].flaxd_pid = Some(pid);
        self.save()?;
        Ok(pid)
    }

    /// ovs-vswitchd of node `name` crashes (SIGKILL) and is started again,
    /// as a supervisor would; it rebuilds bridges and ports from OVSDB.
    pub fn restart_vswitchd(&self, name: &str) -> Result<()> {
        let node = self.known_node(name)?;
        let ovs = node.ovs();
        ovs.kill(Daemon::Vswitchd)?;
        ovs.start_vswitchd()?;
        tracing::info!(node = %node.name, "ovs-vswitchd restarted");
        Ok(())
    }

    /// ovsdb-server of node `name` crashes (SIGKILL) and is started again over
    /// the same database file. ovs-vswitchd keeps its datapath meanwhile and
    /// reconnects; so does the node's flaxd.
    pub fn restart_ovsdb_server(&self, name: &str) -> Result<()> {
        let node = self.known_node(name)?;
        let ovs = node.ovs();
        ovs.kill(Daemon::OvsdbServer)?;
        ovs.start_ovsdb_server()?;
        tracing::info!(node = %node.name, "ovsdb-server restarted");
        Ok(())
    }

    fn etcd_node(&self, name: &str) -> Result<usize> {
        let index = self.known_node(name)?.index;
        if self.state.membership != Membership::Etcd {
            return Err(Error::NoFlaxd {
                lab: self.state.name.clone(),
            }
            .into());
        }
        Ok(self
            .state
            .nodes
            .iter()
            .position(|n| n.index == index)
            .expect("a known node is in the state"))
    }
}
