//! Facts about this host that the configuration may leave out: the VTEP address of an
//! interface, and the underlay MTU.

use std::net::IpAddr;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot list the host's interface addresses")]
    List(#[source] nix::Error),
    #[error("interface {0} has no usable IPv4 or IPv6 address")]
    NoAddress(String),
    #[error("no interface holds address {0}")]
    NoInterface(IpAddr),
    #[error("cannot read the MTU of interface {iface}")]
    Mtu {
        iface: String,
        #[source]
        source: std::io::Error,
    },
}

fn addresses() -> Result<Vec<(String, IpAddr)>, HostError> {
    let list = nix::ifaddrs::getifaddrs().map_err(HostError::List)?;
    Ok(list
        .filter_map(|a| {
            let sa = a.address?;
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else {
                IpAddr::V6(sa.as_sockaddr_in6()?.ip())
            };
            Some((a.interface_name, ip))
        })
        .collect())
}

/// The first usable address of `iface`, IPv4 before IPv6 (link-local IPv6 never).
pub fn interface_address(iface: &str) -> Result<IpAddr, HostError> {
    let mut ips: Vec<IpAddr> = addresses()?
        .into_iter()
        .filter(|(name, ip)| {
            name == iface
                && linen::config::unusable_vtep(*ip).is_none()
                && !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
        })
        .map(|(_, ip)| ip)
        .collect();
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips.first()
        .copied()
        .ok_or_else(|| HostError::NoAddress(iface.to_owned()))
}

/// The interface that holds `ip`.
pub fn interface_of(ip: IpAddr) -> Result<String, HostError> {
    addresses()?
        .into_iter()
        .find(|(_, a)| *a == ip)
        .map(|(name, _)| name)
        .ok_or(HostError::NoInterface(ip))
}

/// The MTU of `iface`, from sysfs.
pub fn interface_mtu(iface: &str) -> Result<u32, HostError> {
    let err = |source| HostError::Mtu {
        iface: iface.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(Path::new("/sys/class/net").join(iface).join("mtu"))
        .map_err(err)?;
    text.trim()
        .parse()
        .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_facts() {
        assert!(interface_mtu("lo").unwrap() >= 1500);
        assert_eq!(interface_of("127.0.0.1".parse().unwrap()).unwrap(), "lo");
        // Loopback addresses are no VTEPs.
        assert!(matches!(
            interface_address("lo"),
            Err(HostError::NoAddress(_))
        ));
        assert!(interface_mtu("no-such-if0").is_err());
    }
}
