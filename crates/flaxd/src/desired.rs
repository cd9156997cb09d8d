//! The pure half of the reconciler: membership in, the tunnels this node wants out.

use std::collections::BTreeMap;
use std::net::IpAddr;

use linen::config::TunnelKey;
use linen::model::{Source, TunnelSpec};

use crate::membership::Membership;

/// Who this node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub name: String,
    pub vtep: IpAddr,
}

/// How this node's tunnels are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelPolicy {
    /// This node relays between the others (hub of a hub-and-spoke layout): its tunnel ports
    /// are left unprotected. Every other node's are protected, so a mesh cannot loop.
    pub hub: bool,
    pub key: TunnelKey,
}

/// One tunnel per other member, sorted by remote address.
///
/// Skipped: this node (by name, and any member claiming this node's VTEP, e.g. a stale
/// record of a renamed node) and unusable VTEPs. Members sharing a VTEP get one tunnel,
/// labelled with the first name in order.
pub fn desired(members: &Membership, me: &NodeIdentity, policy: &TunnelPolicy) -> Vec<TunnelSpec> {
    let mut by_remote: BTreeMap<IpAddr, &str> = BTreeMap::new();
    for (name, m) in members {
        if *name == me.name || m.vtep == me.vtep {
            continue;
        }
        if linen::config::unusable_vtep(m.vtep).is_some() {
            continue;
        }
        by_remote.entry(m.vtep).or_insert(name);
    }
    by_remote
        .into_iter()
        .map(|(remote, name)| TunnelSpec {
            remote,
            key: policy.key,
            protected: !policy.hub,
            source: Source::Flaxd,
            peer: Some(name.to_owned()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Member;

    fn members(list: &[(&str, &str)]) -> Membership {
        list.iter()
            .map(|(n, ip)| {
                (
                    n.to_string(),
                    Member {
                        vtep: ip.parse().unwrap(),
                        pod_cidrs: Vec::new(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn table() {
        let me = NodeIdentity {
            name: "a".into(),
            vtep: "192.0.2.1".parse().unwrap(),
        };
        let mesh = TunnelPolicy {
            hub: false,
            key: TunnelKey::Flow,
        };
        let hub = TunnelPolicy {
            hub: true,
            key: TunnelKey::Vni(42),
        };
        // (members, policy, wanted (remote, peer) pairs)
        type Case = (Membership, TunnelPolicy, Vec<(&'static str, &'static str)>);
        let cases: Vec<Case> = vec![
            (members(&[]), mesh, vec![]),
            (members(&[("a", "192.0.2.1")]), mesh, vec![]),
            (
                members(&[("a", "192.0.2.1"), ("b", "192.0.2.2"), ("c", "192.0.2.3")]),
                mesh,
                vec![("192.0.2.2", "b"), ("192.0.2.3", "c")],
            ),
            // Self is skipped by name even with another address, and by address under
            // another name.
            (
                members(&[
                    ("a", "192.0.2.9"),
                    ("old-a", "192.0.2.1"),
                    ("b", "192.0.2.2"),
                ]),
                mesh,
                vec![("192.0.2.2", "b")],
            ),
            // A shared VTEP gives one tunnel, named after the first member.
            (
                members(&[("c", "192.0.2.3"), ("b", "192.0.2.3")]),
                hub,
                vec![("192.0.2.3", "b")],
            ),
            // Sorted by address, not by name.
            (
                members(&[("z", "192.0.2.2"), ("y", "192.0.2.10"), ("x", "fd00::1")]),
                mesh,
                vec![("192.0.2.2", "z"), ("192.0.2.10", "y"), ("fd00::1", "x")],
            ),
            (
                members(&[("b", "127.0.0.1"), ("c", "0.0.0.0")]),
                mesh,
                vec![],
            ),
        ];
        for (m, policy, want) in cases {
            let got = desired(&m, &me, &policy);
            let pairs: Vec<(IpAddr, &str)> = got
                .iter()
                .map(|t| (t.remote, t.peer.as_deref().unwrap()))
                .collect();
            let want: Vec<(IpAddr, &str)> = want
                .iter()
                .map(|(ip, n)| (ip.parse().unwrap(), *n))
                .collect();
            assert_eq!(pairs, want, "{m:?}");
            for t in &got {
                assert_eq!(t.source, Source::Flaxd);
                assert_eq!(t.protected, !policy.hub);
                assert_eq!(t.key, policy.key);
            }
        }
    }

    #[test]
    fn a_thousand_members() {
        let me = NodeIdentity {
            name: "n0".into(),
            vtep: "10.1.0.0".parse().unwrap(),
        };
        let m: Membership = (0..1000u32)
            .map(|i| {
                let ip = std::net::Ipv4Addr::from(0x0a01_0000 + i);
                (
                    format!("n{i}"),
                    Member {
                        vtep: ip.into(),
                        pod_cidrs: Vec::new(),
                    },
                )
            })
            .collect();
        let policy = TunnelPolicy {
            hub: false,
            key: TunnelKey::Flow,
        };
        let got = desired(&m, &me, &policy);
        assert_eq!(got.len(), 999);
        let names: std::collections::BTreeSet<_> = got.iter().map(TunnelSpec::name).collect();
        assert_eq!(names.len(), 999, "names are unique");
    }
}
