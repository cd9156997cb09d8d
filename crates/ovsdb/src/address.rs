//! OVSDB server addresses, in the `ovs-vsctl --db` syntax.

use std::net::{IpAddr, SocketAddr};

use crate::error::{Error, Result};

/// Where an OVSDB server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(std::path::PathBuf),
    Tcp(SocketAddr),
}

impl Address {
    /// Parses `unix:PATH`, `tcp:IP:PORT` or `tcp:[IPv6]:PORT` (the `ovs-vsctl --db` syntax).
    pub fn parse(addr: &str) -> Result<Address> {
        let bad = |reason| Error::Address {
            addr: addr.to_string(),
            reason,
        };
        if let Some(path) = addr.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            return Ok(Address::Unix(path.into()));
        }
        let Some(rest) = addr.strip_prefix("tcp:") else {
            return Err(bad("expected unix:PATH or tcp:IP:PORT"));
        };
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("missing port"))?;
        let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
        let host = match host.strip_prefix('[') {
            Some(h) => h.strip_suffix(']').ok_or_else(|| bad("unclosed '['"))?,
            None if host.contains(':') => return Err(bad("IPv6 addresses need [brackets]")),
            None => host,
        };
        let ip: IpAddr = host.parse().map_err(|_| bad("bad IP address"))?;
        Ok(Address::Tcp(SocketAddr::new(ip, port)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        let ok = [
            ("unix:/run/db.sock", Address::Unix("/run/db.sock".into())),
            (
                "tcp:127.0.0.1:6640",
                Address::Tcp("127.0.0.1:6640".parse().expect("sa")),
            ),
            (
                "tcp:[::1]:6640",
                Address::Tcp("[::1]:6640".parse().expect("sa")),
            ),
        ];
        for (s, want) in ok {
            assert_eq!(Address::parse(s).expect(s), want, "{s}");
        }
        for bad in [
            "",
            "unix:",
            "ssl:1.2.3.4:1",
            "tcp:1.2.3.4",
            "tcp:::1:6640",
            "tcp:[::1:6640",
            "tcp:host:1",
            "tcp:1.2.3.4:99999",
        ] {
            assert!(
                matches!(Address::parse(bad), Err(Error::Address { .. })),
                "{bad}"
            );
        }
    }
}
