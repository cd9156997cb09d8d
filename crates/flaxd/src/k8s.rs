//! The Kubernetes membership source: a watcher on Node objects. A node's VTEP is its
//! address of a configurable type (default `InternalIP`); its pod subnet is `spec.podCIDR`
//! (or the first of `spec.podCIDRs`). Kept thin: the watcher does list + watch + re-list,
//! this module only turns Nodes into [`Member`]s.

use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use tokio_util::sync::CancellationToken;

pub use k8s_openapi;
pub use kube;

use crate::backoff::Backoff;
use crate::membership::{Member, Membership, Publisher};

/// The default node address type used as the VTEP.
pub const DEFAULT_ADDRESS_TYPE: &str = "InternalIP";

/// The member a Node stands for, if it has a usable address of `address_type`.
pub fn node_member(node: &Node, address_type: &str) -> Option<Member> {
    let vtep: IpAddr = node
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == address_type)
        .find_map(|a| a.address.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .filter(|ip| linen::config::unusable_vtep(*ip).is_none())?;
    let spec = node.spec.as_ref();
    // `podCIDRs` (every family, dual-stack) else `podCIDR`; a list that is not one subnet
    // per family is ignored, as an unparsable one is.
    let listed: Vec<&str> = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(all) if !all.is_empty() => all.iter().map(String::as_str).collect(),
        _ => spec
            .and_then(|s| s.pod_cidr.as_deref())
            .into_iter()
            .collect(),
    };
    let parsed: Option<Vec<ipnet::IpNet>> = listed.iter().map(|c| c.parse().ok()).collect();
    let pod_cidrs = parsed
        .and_then(|p| crate::membership::pod_cidrs(&p))
        .unwrap_or_default();
    Some(Member { vtep, pod_cidrs })
}

pub struct KubeSource {
    client: kube::Client,
    address_type: String,
}

impl KubeSource {
    /// `client` from `kube::Config::infer()` (in-cluster or kubeconfig) in production.
    pub fn new(client: kube::Client, address_type: impl Into<String>) -> Self {
        KubeSource {
            client,
            address_type: address_type.into(),
        }
    }

    /// Publishes the cluster's Nodes until `shutdown`. Errors of the watch are logged and
    /// retried with backoff (the watcher re-lists as needed).
    pub async fn run(self, publisher: Publisher, shutdown: CancellationToken) {
        let api: Api<Node> = Api::all(self.client.clone());
        let stream = watcher::watcher(api, watcher::Config::default());
        let mut stream = std::pin::pin!(stream);
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut members = Membership::new();
        let mut listing = Membership::new();
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => ev,
            };
            let publish = match ev {
                None => return,
                Some(Err(e)) => {
                    publisher.set_connected(false);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %linen::error::chain(&e), retry_in = ?delay, "Kubernetes Node watch failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
                Some(Ok(Event::Init)) => {
                    listing.clear();
                    false
                }
                Some(Ok(Event::InitApply(node))) => {
                    self.apply(&mut listing, &node);
                    false
                }
                Some(Ok(Event::InitDone)) => {
                    members = std::mem::take(&mut listing);
                    true
                }
                Some(Ok(Event::Apply(node))) => {
                    self.apply(&mut members, &node);
                    true
                }
                Some(Ok(Event::Delete(node))) => {
                    if let Some(name) = node.metadata.name.as_ref()
                        && members.remove(name).is_some()
                    {
                        tracing::info!(node = name, "node deleted");
                    }
                    true
                }
            };
            backoff.reset();
            if publish {
                publisher.publish(members.clone());
            }
        }
    }

    fn apply(&self, members: &mut Membership, node: &Node) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        match node_member(node, &self.address_type) {
            Some(m) => {
                if members.insert(name.clone(), m.clone()).as_ref() != Some(&m) {
                    tracing::info!(node = name, vtep = %m.vtep, pod_cidrs = ?m.pod_cidrs, "node joined or changed");
                }
            }
            None => {
                tracing::debug!(
                    node = name,
                    address_type = self.address_type,
                    "node has no usable address of this type; skipped"
                );
                members.remove(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn nodes_become_members() {
        let cases = [
            (
                json!({"metadata": {"name": "a"},
                       "spec": {"podCIDR": "10.244.1.0/24"},
                       "status": {"addresses": [{"type": "Hostname", "address": "a"},
                                                {"type": "InternalIP", "address": "192.0.2.1"}]}}),
                "InternalIP",
                Some(("192.0.2.1", Some("10.244.1.0/24"))),
            ),
            (
                json!({"metadata": {"name": "a"},
                       "spec": {"podCIDRs": ["10.244.2.0/24", "fd00::/64"]},
                       "status": {"addresses": [{"type": "ExternalIP", "address": "198.51.100.1"},
                                                {"type": "InternalIP", "address": "192.0.2.1"}]}}),
                "ExternalIP",
                Some(("198.51.100.1", Some("10.244.2.0/24,fd00::/64"))),
            ),
            // Two subnets of one family: not a node's pod subnets (none, as unparsable).
            (
                json!({"metadata": {"name": "a"},
                       "spec": {"podCIDRs": ["10.244.2.0/24", "10.244.3.0/24"]},
                       "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}}),
                "InternalIP",
                Some(("192.0.2.1", None)),
            ),
            (
                json!({"metadata": {"name": "a"},
                       "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}}),
                "InternalIP",
                Some(("192.0.2.1", None)),
            ),
            (json!({"metadata": {"name": "a"}}), "InternalIP", None),
            (
                json!({"metadata": {"name": "a"},
                       "status": {"addresses": [{"type": "Hostname", "address": "a"}]}}),
                "InternalIP",
                None,
            ),
            (
                json!({"metadata": {"name": "a"},
                       "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}}),
                "InternalIP",
                None,
            ),
        ];
        for (n, ty, want) in cases {
            let got = node_member(&node(n.clone()), ty);
            let want = want.map(|(ip, cidr)| Member {
                vtep: ip.parse().unwrap(),
                pod_cidrs: cidr
                    .into_iter()
                    .flat_map(|c| c.split(','))
                    .map(|c| c.parse().unwrap())
                    .collect(),
            });
            assert_eq!(got, want, "{n}");
        }
    }
}
