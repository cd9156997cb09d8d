//! The tunnel port naming rule, in one place for every binary (the plugin and flaxd).
//!
//! A tunnel port is named after its remote VTEP so that a human reading `ovs-vsctl show`
//! recognises it. The name is only a label: the remote address lives in `external_ids`
//! (see [`crate::model`]) and is never parsed back from a name.
//!
//! - The seed's form, `vxif` + the dotted IPv4 address with `.` replaced by `_`
//!   (`vxif10_245_2_2`), when it fits Linux's 15-byte interface name limit.
//! - Otherwise `vx` + the address's 32 bits in hex (`vx0af5c80a`): collision-free for IPv4.
//! - IPv6: `vx6` + 12 hex digits of a stable 64-bit FNV-1a hash of the 16 address bytes.
//!   Collisions are possible in principle (1 in 2^48 per pair); a collision is detected at
//!   apply time because the existing port's `external_ids` names a different remote.

use std::net::IpAddr;

/// Linux's interface name limit (IFNAMSIZ - 1). OVS ports of type vxlan do not create a
/// kernel link in the userspace datapath, but they do in the system datapath, so the rule
/// honours the limit everywhere.
pub const MAX_IFNAME_LEN: usize = 15;

/// The OVS port (and interface) name for the tunnel to `remote`. Deterministic: every node
/// and every binary computes the same name for the same remote address.
pub fn tunnel_port_name(remote: IpAddr) -> String {
    match remote {
        IpAddr::V4(v4) => {
            let seed_form = format!("vxif{}", v4.to_string().replace('.', "_"));
            if seed_form.len() <= MAX_IFNAME_LEN {
                seed_form
            } else {
                format!("vx{:08x}", u32::from(v4))
            }
        }
        IpAddr::V6(v6) => format!("vx6{:012x}", fnv1a64(&v6.octets()) & 0xffff_ffff_ffff),
    }
}

/// Whether `name` is a valid Linux interface name, by the kernel's own rule
/// (`dev_valid_name`), on bytes: 1 to 15 bytes, not `.` or `..`, and no `/`, `:`, NUL or
/// byte the kernel counts as whitespace (`\t \n \v \f \r`, space and 0xA0: so `brà`,
/// whose UTF-8 ends in 0xA0, is refused). For names Linen looks up or passes on (the
/// CNI spec's CNI_IFNAME rule is the same); names Linen creates follow [`is_creatable_ifname`].
pub fn is_valid_ifname(name: &str) -> bool {
    // One rule for the workspace, kept where CNI_IFNAME is checked.
    cni::conf::is_valid_ifname(name)
}

/// Whether Linen may create an interface (an OVS bridge, whose internal port is a kernel
/// link of the same name) called `name`: a valid name ([`is_valid_ifname`]) made only of
/// ASCII letters, digits, `-`, `_` and `.`. Stricter than the kernel on purpose: `%` makes
/// the kernel treat the name as a template (`br%d` becomes `br0`, a link Linen did not
/// ask for), and bytes outside this set (quotes, backslashes, non-ASCII) are accepted by
/// the kernel but not by every tool that handles interface names.
pub fn is_creatable_ifname(name: &str) -> bool {
    is_valid_ifname(name)
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// 64-bit FNV-1a: a stable hash for names and digests (not for security).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn seed_form_when_it_fits() {
        let cases = [
            ("10.245.2.2", "vxif10_245_2_2"),
            ("1.2.3.4", "vxif1_2_3_4"),
            ("10.0.0.100", "vxif10_0_0_100"),
            ("10.245.2.10", "vxif10_245_2_10"),
            ("10.245.20.100", "vx0af51464"),
            ("192.168.100.20", "vxc0a86414"),
            ("255.255.255.255", "vxffffffff"),
        ];
        for (ip, want) in cases {
            let name = tunnel_port_name(ip.parse().unwrap());
            assert_eq!(name, want, "{ip}");
            assert!(is_valid_ifname(&name), "{name}");
        }
    }

    #[test]
    fn ipv6_names_are_short_stable_and_distinct() {
        let a = tunnel_port_name("fd00::1".parse().unwrap());
        let b = tunnel_port_name("fd00::2".parse().unwrap());
        assert_eq!(a, tunnel_port_name("fd00::1".parse().unwrap()));
        assert_ne!(a, b);
        assert!(a.starts_with("vx6") && a.len() == MAX_IFNAME_LEN, "{a}");
    }

    #[test]
    fn all_ipv4_names_in_a_large_range_are_unique_and_valid() {
        let mut seen = HashSet::new();
        for i in 0..=u16::MAX {
            let ip = IpAddr::from([10, 245, (i >> 8) as u8, i as u8]);
            let name = tunnel_port_name(ip);
            assert!(is_valid_ifname(&name), "{name}");
            assert!(seen.insert(name.clone()), "duplicate {name}");
        }
    }

    #[test]
    fn ifname_rule() {
        for ok in [
            "br0",
            "a",
            "vxif10_245_2_2",
            "abcdefghijklmno",
            "é",
            "a%b",
            "..\\..",
        ] {
            assert!(is_valid_ifname(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "abcdefghijklmnop",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "a\nb",
            "a\0b",
            // 'à' is 0xC3 0xA0 in UTF-8, and the kernel counts 0xA0 as whitespace.
            "brà",
            // Bytes, not chars: 8 two-byte chars are 16 bytes.
            "éééééééé",
        ] {
            assert!(!is_valid_ifname(bad), "{bad:?}");
        }
    }

    #[test]
    fn creatable_names_are_a_portable_subset() {
        for ok in ["br0", "linen-br", "br_1.2", "abcdefghijklmno"] {
            assert!(is_creatable_ifname(ok), "{ok}");
        }
        for bad in [
            "br%d", "%s%n", "..\\..", "é", "a\"b", "a'b", "brà", "", "..", "a/b",
        ] {
            assert!(!is_creatable_ifname(bad), "{bad:?}");
        }
    }
}
