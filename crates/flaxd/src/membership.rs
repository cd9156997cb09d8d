//! What every membership source publishes: snapshots of the cluster's nodes.
//!
//! Sources (etcd, Kubernetes, a static file) differ in how they learn about nodes, but all of
//! them only ever hand a whole [`Snapshot`] to a [`Publisher`]; the reconciler reads the other
//! end of a `tokio::sync::watch` and never sees a source's own types.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use linen::config::unusable_vtep;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// A node's name, as the source knows it (etcd key, Kubernetes Node name, file entry).
pub type NodeName = String;

/// What the overlay needs to know about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The node's VXLAN tunnel end point (underlay address).
    pub vtep: IpAddr,
    /// The node's slices of the cluster's pod network, at most one per address family
    /// (IPv4 first); empty when not known.
    pub pod_cidrs: Vec<IpNet>,
}

/// Every known node, by name.
pub type Membership = BTreeMap<NodeName, Member>;

/// One state of the cluster as a source sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub members: Membership,
    /// The source has read the complete membership at least once. Until then `members` may be
    /// partial, so nothing may be removed on its account.
    pub synced: bool,
    /// The source is currently connected to its backend (etcd, the API server); a source that
    /// is not keeps publishing its last known membership.
    pub connected: bool,
}

/// The sending end a source writes to. Only publishes real changes, so a burst of identical
/// updates wakes nobody.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: watch::Sender<Snapshot>,
}

impl Publisher {
    /// A publisher and the receiver the reconciler reads.
    pub fn new() -> (Publisher, watch::Receiver<Snapshot>) {
        let (tx, rx) = watch::channel(Snapshot::default());
        (Publisher { tx }, rx)
    }

    /// Replaces the whole membership and marks the source synced and connected.
    pub fn publish(&self, members: Membership) {
        self.tx.send_if_modified(|s| {
            let changed = s.members != members || !s.synced || !s.connected;
            s.members = members;
            s.synced = true;
            s.connected = true;
            changed
        });
    }

    /// Records whether the source is connected to its backend; the membership is kept.
    pub fn set_connected(&self, connected: bool) {
        self.tx.send_if_modified(|s| {
            let changed = s.connected != connected;
            s.connected = connected;
            changed
        });
    }
}

/// The record a node publishes about itself (etcd value, static file entry):
/// `{"vtep": "192.0.2.1", "podCIDR": "10.244.3.0/24"}`; a dual-stack node adds every subnet
/// as Kubernetes' Node spec does: `"podCIDRs": ["10.244.3.0/24", "fd00:10:244:3::/64"]`
/// (`podCIDR` is then the first). A single-stack record is written exactly as before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberRecord {
    pub vtep: IpAddr,
    #[serde(rename = "podCIDR", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<IpNet>,
    #[serde(rename = "podCIDRs", default, skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<IpNet>,
}

/// Why a member record was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not a member record ({{\"vtep\": IP, \"podCIDR\": CIDR}}): {0}")]
    Syntax(#[source] serde_json::Error),
    #[error("{vtep} cannot be a VTEP address ({why})")]
    UnusableVtep { vtep: IpAddr, why: &'static str },
    #[error("pod subnets {0:?}: at most one per address family")]
    PodCidrs(Vec<IpNet>),
    #[error("podCIDR {first} is not the first of podCIDRs {all:?}")]
    PodCidrMismatch { first: IpNet, all: Vec<IpNet> },
}

/// `cidrs` as a node's pod subnets: truncated, IPv4 first, at most one per family (`None`
/// otherwise).
pub fn pod_cidrs(cidrs: &[IpNet]) -> Option<Vec<IpNet>> {
    let mut out: Vec<IpNet> = cidrs.iter().map(IpNet::trunc).collect();
    out.sort_by_key(|n| matches!(n, IpNet::V6(_)));
    let v4 = out.iter().filter(|n| matches!(n, IpNet::V4(_))).count();
    (v4 <= 1 && out.len() - v4 <= 1).then_some(out)
}

impl MemberRecord {
    /// Decodes and validates a record written by any node (so: untrusted input).
    pub fn parse(bytes: &[u8]) -> Result<Member, RecordError> {
        let rec: MemberRecord = serde_json::from_slice(bytes).map_err(RecordError::Syntax)?;
        rec.into_member()
    }

    /// Validates the record's VTEP.
    pub fn into_member(self) -> Result<Member, RecordError> {
        // One address, one spelling (as `vtepIPs`): ::ffff:a.b.c.d is a.b.c.d.
        let vtep = self.vtep.to_canonical();
        if let Some(why) = unusable_vtep(vtep) {
            return Err(RecordError::UnusableVtep { vtep, why });
        }
        let all = if self.pod_cidrs.is_empty() {
            self.pod_cidr.into_iter().collect()
        } else {
            if let Some(first) = self.pod_cidr
                && self.pod_cidrs.first() != Some(&first)
            {
                return Err(RecordError::PodCidrMismatch {
                    first,
                    all: self.pod_cidrs,
                });
            }
            self.pod_cidrs
        };
        let pod_cidrs = pod_cidrs(&all).ok_or(RecordError::PodCidrs(all))?;
        Ok(Member { vtep, pod_cidrs })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl From<&Member> for MemberRecord {
    fn from(m: &Member) -> Self {
        MemberRecord::new(m.vtep, &m.pod_cidrs)
    }
}

impl MemberRecord {
    /// The record of a node at `vtep` with `pod_cidrs` (`podCIDRs` only when dual-stack).
    pub fn new(vtep: IpAddr, pod_cidrs: &[IpNet]) -> Self {
        MemberRecord {
            vtep,
            pod_cidr: pod_cidrs.first().copied(),
            pod_cidrs: if pod_cidrs.len() > 1 {
                pod_cidrs.to_vec()
            } else {
                Vec::new()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_or_are_refused() {
        let ok: [(&str, &str, Option<&str>); 5] = [
            (r#"{"vtep":"192.0.2.1"}"#, "192.0.2.1", None),
            // The same node however it is spelled: one tunnel, not two.
            (r#"{"vtep":"::ffff:192.0.2.1"}"#, "192.0.2.1", None),
            (
                r#"{"vtep":"192.0.2.1","podCIDR":"10.244.3.0/24"}"#,
                "192.0.2.1",
                Some("10.244.3.0/24"),
            ),
            (r#"{"vtep":"fd00::1","podCIDR":null}"#, "fd00::1", None),
            (
                r#" {"podCIDR":"fd10::/64", "vtep":"2001:db8::2"} "#,
                "2001:db8::2",
                Some("fd10::/64"),
            ),
        ];
        for (json, vtep, cidr) in ok {
            let m = MemberRecord::parse(json.as_bytes()).expect(json);
            assert_eq!(m.vtep, vtep.parse::<IpAddr>().unwrap(), "{json}");
            let want: Vec<IpNet> = cidr.into_iter().map(|c| c.parse().unwrap()).collect();
            assert_eq!(m.pod_cidrs, want, "{json}");
        }
        // Dual-stack, as Kubernetes' Node spec writes it; podCIDRs alone; IPv6 listed first.
        let dual: Vec<IpNet> = vec![
            "10.244.3.0/24".parse().unwrap(),
            "fd00:10:244:3::/64".parse().unwrap(),
        ];
        for json in [
            r#"{"vtep":"192.0.2.1","podCIDR":"10.244.3.0/24","podCIDRs":["10.244.3.0/24","fd00:10:244:3::/64"]}"#,
            r#"{"vtep":"192.0.2.1","podCIDRs":["10.244.3.0/24","fd00:10:244:3::/64"]}"#,
            r#"{"vtep":"192.0.2.1","podCIDRs":["fd00:10:244:3::/64","10.244.3.0/24"]}"#,
        ] {
            assert_eq!(
                MemberRecord::parse(json.as_bytes()).unwrap().pod_cidrs,
                dual,
                "{json}"
            );
        }
        let bad = [
            "",
            "not json",
            "{}",
            "[]",
            r#"{"vtep":"nope"}"#,
            r#"{"vtep":"192.0.2.1","podCIDR":"10.244.3.0"}"#,
            r#"{"vtep":"192.0.2.1","extra":1}"#,
            // Two subnets of one family; podCIDR that is not podCIDRs' first.
            r#"{"vtep":"192.0.2.1","podCIDRs":["10.244.3.0/24","10.244.4.0/24"]}"#,
            r#"{"vtep":"192.0.2.1","podCIDR":"10.244.9.0/24","podCIDRs":["10.244.3.0/24","fd00::/64"]}"#,
            r#"{"vtep":1}"#,
            r#"{"vtep":"0.0.0.0"}"#,
            r#"{"vtep":"127.0.0.1"}"#,
            r#"{"vtep":"224.0.0.1"}"#,
            r#"{"vtep":"255.255.255.255"}"#,
            r#"{"vtep":"fe80::1"}"#,
            r#"{"vtep":"::ffff:127.0.0.1"}"#,
            "\u{0}\u{1}",
        ];
        for b in bad {
            assert!(MemberRecord::parse(b.as_bytes()).is_err(), "{b:?}");
        }
    }

    #[test]
    fn records_round_trip() {
        let mut m = Member {
            vtep: "192.0.2.7".parse().unwrap(),
            pod_cidrs: vec!["10.244.7.0/24".parse().unwrap()],
        };
        // Single-stack: byte for byte the record older flaxds write and read.
        let json = MemberRecord::from(&m).to_json();
        assert_eq!(json, r#"{"vtep":"192.0.2.7","podCIDR":"10.244.7.0/24"}"#);
        assert_eq!(MemberRecord::parse(json.as_bytes()).unwrap(), m);
        m.pod_cidrs.push("fd00:10:244:7::/64".parse().unwrap());
        let json = MemberRecord::from(&m).to_json();
        assert_eq!(
            json,
            r#"{"vtep":"192.0.2.7","podCIDR":"10.244.7.0/24","podCIDRs":["10.244.7.0/24","fd00:10:244:7::/64"]}"#
        );
        assert_eq!(MemberRecord::parse(json.as_bytes()).unwrap(), m);
    }

    #[test]
    fn publisher_only_wakes_on_change() {
        let (p, mut rx) = Publisher::new();
        assert!(!rx.borrow_and_update().synced);
        p.publish(Membership::new());
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().synced);
        p.publish(Membership::new());
        p.set_connected(true);
        assert!(!rx.has_changed().unwrap(), "same content, no wake-up");
        p.set_connected(false);
        assert!(rx.has_changed().unwrap());
        let s = rx.borrow_and_update().clone();
        assert!(s.synced && !s.connected);
    }
}
