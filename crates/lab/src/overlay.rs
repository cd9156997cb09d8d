//! Linen's side of a node as OVSDB shows it, read and (re)applied through
//! `linen::ovs` over the node's own OVSDB socket: the tunnel ports, and the
//! explicit re-apply the lab runs after membership changes.
//!
//! Why a re-apply at all (static membership only; with etcd, flaxd does it):
//! Linen reads `vtepIPs` from the conflist only when a pod is added. After
//! `add-node` or `del-node` rewrites the conflists, existing nodes would keep
//! their old tunnels until their next pod ADD. So the lab makes the bridge
//! and tunnels what the new conflist says with the very same `Ovs::ensure`
//! the plugin's ADD uses, from the same configuration object.

use std::collections::BTreeSet;
use std::net::IpAddr;

use linen::config::{ConfigError, LinenConfig};
use linen::model::{BridgeSpec, Source, TunnelSpec};
use linen::ovs::{Ovs, OvsError};
use serde_json::Value;
use thiserror::Error;

use crate::conflist;
use crate::node::Node;

#[derive(Debug, Error)]
pub enum Error {
    #[error("start an async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("read Linen's tunnels on node {node}")]
    Read {
        node: String,
        #[source]
        source: Box<OvsError>,
    },
    #[error("the conflist of node {node} has no valid linen plugin")]
    Config {
        node: String,
        #[source]
        source: Option<ConfigError>,
    },
    #[error("re-apply Linen's overlay on node {node}")]
    Apply {
        node: String,
        #[source]
        source: Box<OvsError>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One of Linen's tunnel ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tunnel {
    pub port: String,
    /// The Port row's uuid: unchanged as long as nobody re-creates the port.
    pub uuid: String,
    pub remote: IpAddr,
    pub protected: bool,
    /// Who manages it (`linen-source`): the plugin's `vtepIPs` or flaxd.
    pub source: Option<Source>,
}

fn block_on<T>(fut: impl Future<Output = T>) -> Result<T> {
    linen::ovs::block_on(fut).map_err(Error::Runtime)
}

/// Linen's tunnels on `node`'s overlay bridge; `None` while the bridge does
/// not exist (the first pod ADD creates it).
pub fn tunnels(node: &Node) -> Result<Option<Vec<Tunnel>>> {
    let read = |source| Error::Read {
        node: node.name.clone(),
        source: Box::new(source),
    };
    let url = node.ovs().db_url();
    let observed = block_on(async {
        let ovs = Ovs::connect(&url).await?;
        ovs.observe(conflist::OVS_BRIDGE).await
    })?
    .map_err(read)?;
    Ok(observed.0.map(|bridge| {
        bridge
            .owned_tunnels()
            .into_iter()
            .map(|(remote, port)| Tunnel {
                port: port.name.clone(),
                uuid: port.uuid.clone(),
                remote,
                protected: port.protected,
                source: port.source(),
            })
            .collect()
    }))
}

/// The remotes of flaxd's tunnels on `node`; `None` when OVSDB cannot be
/// read or flaxd has not created the bridge yet.
pub fn flaxd_remotes(node: &Node) -> Option<BTreeSet<IpAddr>> {
    let tunnels = tunnels(node).ok()??;
    Some(
        tunnels
            .into_iter()
            .filter(|t| t.source == Some(Source::Flaxd))
            .map(|t| t.remote)
            .collect(),
    )
}

/// What the plugin's ADD would ensure for `conflist` on `node`: the bridge
/// and one tunnel per VTEP other than the node's own address.
pub fn desired(node: &Node, conflist: &Value) -> Result<(BridgeSpec, Vec<TunnelSpec>)> {
    let config_err = |source| Error::Config {
        node: node.name.clone(),
        source,
    };
    let plugin = conflist::linen_plugin(conflist).ok_or_else(|| config_err(None))?;
    let cfg = LinenConfig::from_json(plugin).map_err(|e| config_err(Some(e)))?;
    let own = node.vtep();
    Ok((cfg.bridge_spec(), cfg.tunnels(&[own])))
}

/// Makes `node`'s overlay what `conflist` says, as its next ADD would:
/// adds missing tunnels, removes those no longer listed. Does nothing on a
/// node without the overlay bridge (no pod yet: its first ADD builds it).
/// Returns the number of OVSDB changes made. Idempotent.
pub fn reapply(node: &Node, conflist: &Value) -> Result<usize> {
    let (bridge, tunnels) = desired(node, conflist)?;
    let url = node.ovs().db_url();
    let apply = |source| Error::Apply {
        node: node.name.clone(),
        source: Box::new(source),
    };
    block_on(async {
        let ovs = Ovs::connect(&url).await?;
        if ovs.observe(&bridge.name).await?.0.is_none() {
            return Ok(0);
        }
        let ensured = ovs
            .ensure(&bridge, &tunnels, Some(Source::CniConfig))
            .await?;
        Ok(ensured.applied.len())
    })?
    .map_err(apply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ClusterSpec, Topology};

    #[test]
    fn desired_tunnels_follow_the_conflist() {
        let state = ClusterSpec {
            topology: Topology::Hub,
            ..ClusterSpec::new("o", 3)
        }
        .plan();
        let hub = &state.nodes[0];
        let (bridge, tunnels) = desired(hub, &hub.conflist(&state)).unwrap();
        assert_eq!(bridge.name, "br0");
        assert_eq!(bridge.datapath.as_ovs(), "netdev");
        let got: Vec<(String, bool)> = tunnels
            .iter()
            .map(|t| (t.remote.to_string(), t.protected))
            .collect();
        assert_eq!(
            got,
            [("10.245.2.2".into(), false), ("10.245.2.3".into(), false)]
        );
        let spoke = &state.nodes[2];
        let (_, tunnels) = desired(spoke, &spoke.conflist(&state)).unwrap();
        assert_eq!(tunnels.len(), 1);
        assert!(tunnels[0].protected);

        let mesh = ClusterSpec::new("o", 3).plan();
        let node = &mesh.nodes[1];
        let (_, tunnels) = desired(node, &node.conflist(&mesh)).unwrap();
        let remotes: Vec<String> = tunnels.iter().map(|t| t.remote.to_string()).collect();
        assert_eq!(remotes, ["10.245.2.1", "10.245.2.3"]);
        assert!(tunnels.iter().all(|t| t.protected));

        let err = desired(node, &serde_json::json!({"plugins": []})).unwrap_err();
        assert!(matches!(err, Error::Config { source: None, .. }));
    }
}
