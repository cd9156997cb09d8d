//! Pod subnet allocation, the pure part: which slices of the cluster CIDR exist, which one
//! a node should try first, and how a slice is named in an etcd key. The etcd source makes
//! the choice stick with a transaction (see [`crate::etcd`]).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SubnetError {
    #[error("cannot cut /{len} subnets out of {cluster}")]
    BadLength { cluster: IpNet, len: u8 },
    #[error("every /{len} subnet of {cluster} is allocated ({taken} of them)")]
    Exhausted {
        cluster: IpNet,
        len: u8,
        taken: usize,
    },
}

/// The `/len` slices of `cluster`, addressed by index without materialising them (an IPv6
/// cluster CIDR has more than anyone could list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slices {
    cluster: IpNet,
    len: u8,
}

impl Slices {
    pub fn new(cluster: IpNet, len: u8) -> Result<Self, SubnetError> {
        let cluster = cluster.trunc();
        // At most 2^64 slices so that an index fits a u64, and each slice must hold a gateway
        // and at least one pod besides its network (and, in IPv4, broadcast) address.
        let ok = len >= cluster.prefix_len()
            && len - cluster.prefix_len() <= 64
            && len + 2 <= cluster.max_prefix_len();
        if !ok {
            return Err(SubnetError::BadLength { cluster, len });
        }
        Ok(Slices { cluster, len })
    }

    pub fn count(&self) -> u128 {
        1u128 << (self.len - self.cluster.prefix_len())
    }

    /// The slice at `index` (taken modulo [`Slices::count`]).
    pub fn nth(&self, index: u128) -> IpNet {
        let index = index % self.count();
        let host_bits = u32::from(self.cluster.max_prefix_len() - self.len);
        match self.cluster {
            IpNet::V4(c) => {
                let base = u32::from(c.network());
                let addr = base | (index as u32).checked_shl(host_bits).unwrap_or(0);
                IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr), self.len).expect("valid length"))
            }
            IpNet::V6(c) => {
                let base = u128::from(c.network());
                let addr = base | index.checked_shl(host_bits).unwrap_or(0);
                IpNet::V6(Ipv6Net::new(Ipv6Addr::from(addr), self.len).expect("valid length"))
            }
        }
    }

    /// Whether `net` is one of the slices.
    pub fn contains(&self, net: &IpNet) -> bool {
        net.prefix_len() == self.len && self.cluster.contains(net) && net.trunc() == *net
    }

    /// The first slice that overlaps none of `taken`, searching from a point derived from
    /// `node` (so that nodes starting together mostly try different slices) and wrapping
    /// around. A taken network larger than a slice (a fixed `--pod-cidr` of another length)
    /// rules out every slice inside it.
    pub fn pick(&self, node: &str, taken: &BTreeSet<IpNet>) -> Result<IpNet, SubnetError> {
        let start = u128::from(linen::naming::fnv1a64(node.as_bytes())) % self.count();
        // Only slices overlapping `taken` can be in the way: one more step always finds a
        // free one, if there is one.
        let blocked = taken
            .iter()
            .map(|t| match self.len.checked_sub(t.prefix_len()) {
                Some(d) if d > 0 => 1u128.checked_shl(u32::from(d)).unwrap_or(u128::MAX),
                _ => 1,
            })
            .fold(0u128, u128::saturating_add);
        let steps = blocked.saturating_add(1).min(self.count());
        (0..steps)
            .map(|i| self.nth(start + i))
            .find(|s| !taken.iter().any(|t| overlaps(s, t)))
            .ok_or(SubnetError::Exhausted {
                cluster: self.cluster,
                len: self.len,
                taken: taken.len(),
            })
    }
}

/// Whether two networks share an address (never across address families).
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The etcd key under which `net` is allocated: `<prefix>/subnets/10.244.3.0-24`.
pub fn subnet_key(prefix: &str, net: &IpNet) -> String {
    format!(
        "{}{}-{}",
        subnets_prefix(prefix),
        net.network(),
        net.prefix_len()
    )
}

/// The key prefix of every allocation.
pub fn subnets_prefix(prefix: &str) -> String {
    format!("{}/subnets/", prefix.trim_end_matches('/'))
}

/// The subnet named by an allocation key, if it is one.
pub fn parse_subnet_key(prefix: &str, key: &str) -> Option<IpNet> {
    let rest = key.strip_prefix(&subnets_prefix(prefix))?;
    let (addr, len) = rest.rsplit_once('-')?;
    let addr: IpAddr = addr.parse().ok()?;
    IpNet::new(addr, len.parse().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn slices_are_cut_and_counted() {
        let s = Slices::new(net("10.244.0.0/16"), 24).unwrap();
        assert_eq!(s.count(), 256);
        assert_eq!(s.nth(0), net("10.244.0.0/24"));
        assert_eq!(s.nth(3), net("10.244.3.0/24"));
        assert_eq!(s.nth(255), net("10.244.255.0/24"));
        assert_eq!(s.nth(256), net("10.244.0.0/24"), "wraps");
        assert!(s.contains(&net("10.244.9.0/24")));
        for no in ["10.245.9.0/24", "10.244.9.0/25", "10.244.9.1/24"] {
            assert!(!s.contains(&net(no)), "{no}");
        }
        // A host address in the cluster CIDR is truncated.
        let s = Slices::new(net("10.244.1.1/16"), 24).unwrap();
        assert_eq!(s.nth(1), net("10.244.1.0/24"));
        let v6 = Slices::new(net("fd00:10::/48"), 64).unwrap();
        assert_eq!(v6.count(), 65536);
        assert_eq!(v6.nth(0x12), net("fd00:10:0:12::/64"));
        let huge = Slices::new(net("fd00::/32"), 96).unwrap();
        assert_eq!(huge.count(), 1 << 64);
    }

    #[test]
    fn bad_lengths() {
        for (cluster, len) in [
            ("10.244.0.0/16", 15),
            ("10.244.0.0/16", 31),
            ("10.244.0.0/16", 32),
            ("fd00::/16", 96),
            ("fd00::/64", 127),
        ] {
            assert!(
                matches!(
                    Slices::new(net(cluster), len),
                    Err(SubnetError::BadLength { .. })
                ),
                "{cluster} /{len}"
            );
        }
        assert!(Slices::new(net("10.244.0.0/16"), 30).is_ok());
        assert!(Slices::new(net("10.244.0.0/24"), 24).is_ok(), "one slice");
    }

    #[test]
    fn pick_skips_taken_and_wraps() {
        let s = Slices::new(net("10.244.0.0/22"), 24).unwrap();
        let first = s.pick("node-a", &BTreeSet::new()).unwrap();
        assert!(s.contains(&first));
        assert_eq!(s.pick("node-a", &BTreeSet::new()).unwrap(), first, "stable");
        let mut taken = BTreeSet::from([first]);
        let second = s.pick("node-a", &taken).unwrap();
        assert_ne!(second, first);
        taken.insert(second);
        let third = s.pick("node-a", &taken).unwrap();
        taken.insert(third);
        let fourth = s.pick("node-a", &taken).unwrap();
        taken.insert(fourth);
        assert_eq!(taken.len(), 4, "all four slices, each once");
        assert_eq!(
            s.pick("node-a", &taken),
            Err(SubnetError::Exhausted {
                cluster: net("10.244.0.0/22"),
                len: 24,
                taken: 4
            })
        );
        // Slices outside the cluster CIDR do not count.
        let foreign = BTreeSet::from([net("10.9.0.0/24")]);
        assert!(s.pick("node-b", &foreign).is_ok());
    }

    #[test]
    fn pick_avoids_overlapping_networks_of_other_lengths() {
        let s = Slices::new(net("10.244.0.0/22"), 24).unwrap();
        // A fixed /23 holds two slices, a fixed /25 part of a third: one slice is left.
        let taken = BTreeSet::from([net("10.244.0.0/23"), net("10.244.2.128/25")]);
        for node in ["a", "b", "c", "d", "e"] {
            assert_eq!(
                s.pick(node, &taken).unwrap(),
                net("10.244.3.0/24"),
                "{node}"
            );
        }
        let full = BTreeSet::from([net("10.244.0.0/22")]);
        assert!(matches!(
            s.pick("a", &full),
            Err(SubnetError::Exhausted { .. })
        ));
    }

    #[test]
    fn overlap_is_containment_either_way() {
        for (a, b, want) in [
            ("10.244.1.0/24", "10.244.1.0/24", true),
            ("10.244.1.0/24", "10.244.1.128/25", true),
            ("10.244.0.0/16", "10.244.9.0/24", true),
            ("10.244.1.0/24", "10.244.2.0/24", false),
            ("10.244.1.0/24", "fd00::/8", false),
        ] {
            assert_eq!(overlaps(&net(a), &net(b)), want, "{a} {b}");
            assert_eq!(overlaps(&net(b), &net(a)), want, "{b} {a}");
        }
    }

    #[test]
    fn different_nodes_mostly_start_apart() {
        let s = Slices::new(net("10.244.0.0/16"), 24).unwrap();
        let picks: BTreeSet<IpNet> = (0..20)
            .map(|i| s.pick(&format!("node-{i}"), &BTreeSet::new()).unwrap())
            .collect();
        assert!(picks.len() > 10, "{picks:?}");
    }

    #[test]
    fn keys_round_trip() {
        for (prefix, cidr, key) in [
            ("/linen", "10.244.3.0/24", "/linen/subnets/10.244.3.0-24"),
            (
                "/linen/",
                "fd00:10:0:12::/64",
                "/linen/subnets/fd00:10:0:12::-64",
            ),
        ] {
            let n = net(cidr);
            assert_eq!(subnet_key(prefix, &n), key);
            assert_eq!(parse_subnet_key(prefix, key), Some(n));
        }
        for bad in [
            "/linen/nodes/x",
            "/linen/subnets/",
            "/linen/subnets/10.244.3.0",
            "/linen/subnets/10.244.3.0-99",
            "/linen/subnets/x-24",
        ] {
            assert_eq!(parse_subnet_key("/linen", bad), None, "{bad}");
        }
    }
}
