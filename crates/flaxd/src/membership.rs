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
    /// The node's slice of the cluster's pod network, when known.
    pub pod_cidr: Option<IpNet>,
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
/// `{"vtep": "192.0.2.1", "podCIDR": "10.244.3.0/24"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberRecord {
    pub vtep: IpAddr,
    #[serde(rename = "podCIDR", default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<IpNet>,
}

/// Why a member record was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("not a member record ({{\"vtep\": IP, \"podCIDR\": CIDR}}): {0}")]
    Syntax(#[source] serde_json::Error),
    #[error("{vtep} cannot be a VTEP address ({why})")]
    UnusableVtep { vtep: IpAddr, why: &'static str },
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
        Ok(Member {
            vtep,
            pod_cidr: self.pod_cidr,
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl From<&Member> for MemberRecord {
    fn from(m: &Member) -> Self {
        MemberRecord {
            vtep: m.vtep,
            pod_cidr: m.pod_cidr,
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
            assert_eq!(m.pod_cidr, cidr.map(|c| c.parse().unwrap()), "{json}");
        }
        let bad = [
            "",
            "not json",
            "{}",
            "[]",
            r#"{"vtep":"nope"}"#,
            r#"{"vtep":"192.0.2.1","podCIDR":"10.244.3.0"}"#,
            r#"{"vtep":"192.0.2.1","extra":1}"#,
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
        let m = Member {
            vtep: "192.0.2.7".parse().unwrap(),
            pod_cidr: Some("10.244.7.0/24".parse().unwrap()),
        };
        let json = MemberRecord::from(&m).to_json();
        assert_eq!(json, r#"{"vtep":"192.0.2.7","podCIDR":"10.244.7.0/24"}"#);
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
