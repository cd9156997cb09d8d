//! The MTU rule, in one place for every binary: a pod must never get an MTU that a VXLAN
//! tunnel cannot carry over the underlay.
//!
//! VXLAN encapsulation adds an outer IP header, UDP (8), the VXLAN header (8) and the
//! inner Ethernet header (14) that the pod's MTU does not count. So the largest pod MTU
//! is the underlay MTU minus 50 over IPv4 (20-byte outer header) and minus 70 over IPv6
//! (40-byte outer header). A mesh that mixes address families uses the larger overhead.

use std::net::IpAddr;

/// Inner Ethernet (14) + VXLAN (8) + UDP (8).
const VXLAN_BASE_OVERHEAD: u32 = 14 + 8 + 8;
/// Bytes VXLAN adds over an IPv4 underlay.
pub const VXLAN_IPV4_OVERHEAD: u32 = VXLAN_BASE_OVERHEAD + 20;
/// Bytes VXLAN adds over an IPv6 underlay.
pub const VXLAN_IPV6_OVERHEAD: u32 = VXLAN_BASE_OVERHEAD + 40;
/// The smallest MTU an IPv4 interface may have (RFC 791).
pub const MIN_MTU: u32 = 68;

/// The encapsulation overhead for tunnels to `remotes`: the IPv6 figure as soon as one
/// remote is IPv6, otherwise the IPv4 one (also when there are no remotes yet).
pub fn vxlan_overhead<'a>(remotes: impl IntoIterator<Item = &'a IpAddr>) -> u32 {
    if remotes.into_iter().any(IpAddr::is_ipv6) {
        VXLAN_IPV6_OVERHEAD
    } else {
        VXLAN_IPV4_OVERHEAD
    }
}

/// The largest pod MTU that tunnels with `overhead` can carry over an underlay of
/// `underlay_mtu`, or `None` when the underlay is too small to carry any IPv4 packet.
pub fn max_pod_mtu(underlay_mtu: u32, overhead: u32) -> Option<u32> {
    underlay_mtu
        .checked_sub(overhead)
        .filter(|mtu| *mtu >= MIN_MTU)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let cases: [(&[IpAddr], u32, Option<u32>); 7] = [
            (&[], 1500, Some(1450)),
            (&[v4], 1500, Some(1450)),
            (&[v6], 1500, Some(1430)),
            (&[v4, v6], 1500, Some(1430)),
            (&[v4], 9000, Some(8950)),
            (&[v4], 118, Some(68)),
            (&[v4], 117, None),
        ];
        for (remotes, underlay, want) in cases {
            let overhead = vxlan_overhead(remotes);
            assert_eq!(
                max_pod_mtu(underlay, overhead),
                want,
                "{remotes:?} {underlay}"
            );
        }
        assert_eq!(max_pod_mtu(10, VXLAN_IPV4_OVERHEAD), None);
    }
}
