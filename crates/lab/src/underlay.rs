//! The lab's underlay: a namespace `<lab>-ul` holding a Linux bridge, and per
//! node a veth pair from that bridge to `eth0` in the node's namespace. The
//! host's own namespace is never touched: both ends are created with
//! `ip -n <lab>-ul`, and the peer is born directly in the node namespace.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cmd::{self, CmdError};
use crate::netns::{self, Netns};

/// The bridge inside the underlay namespace; names there cannot collide with
/// another lab's, each lab has its own namespace.
pub const BRIDGE: &str = "br-ul";
/// The node-side end of a node's uplink.
pub const NODE_UPLINK: &str = "eth0";

#[derive(Debug, Error)]
pub enum Error {
    #[error("create underlay namespace")]
    Netns(#[from] netns::Error),
    #[error("turn off transmit checksum offload on {link} in underlay {underlay}")]
    Offload {
        link: String,
        underlay: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{step} {object} in underlay {underlay}")]
    Link {
        step: &'static str,
        object: String,
        underlay: String,
        #[source]
        source: CmdError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A locally administered unicast MAC derived from `ip`: `02:00:` and its
/// four octets.
pub fn host_mac(ip: std::net::Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Underlay {
    pub netns: Netns,
    pub bridge: String,
    pub mtu: u32,
}

impl Underlay {
    /// A handle; creates nothing.
    pub fn new(netns: Netns, mtu: u32) -> Self {
        Self {
            netns,
            bridge: BRIDGE.to_owned(),
            mtu,
        }
    }

    /// Creates the namespace and its bridge, up, unless they exist. Idempotent.
    pub fn ensure(&self) -> Result<()> {
        Netns::ensure(self.netns.name())?;
        let mtu = self.mtu.to_string();
        if !self.link_exists(&self.bridge) {
            self.ip(
                "create bridge",
                &self.bridge,
                &["link", "add", &self.bridge, "mtu", &mtu, "type", "bridge"],
            )?;
        }
        self.ip(
            "bring up",
            &self.bridge,
            &["link", "set", &self.bridge, "up"],
        )?;
        self.ip("bring up", "lo", &["link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Connects `node` to the bridge: a veth `port` on the bridge here, its
    /// peer `eth0` in `node`, both at the underlay MTU. The node end is left
    /// down; the node brings it up once OVS owns it. Idempotent on `port`.
    pub fn attach(&self, node: &Netns, port: &str) -> Result<()> {
        let mtu = self.mtu.to_string();
        if !self.link_exists(port) {
            self.ip(
                "create veth",
                port,
                &[
                    "link",
                    "add",
                    port,
                    "mtu",
                    &mtu,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    NODE_UPLINK,
                    "mtu",
                    &mtu,
                    "netns",
                    node.name(),
                ],
            )?;
        }
        self.ip(
            "attach to bridge",
            port,
            &["link", "set", port, "master", &self.bridge, "up"],
        )?;
        Ok(())
    }

    /// Gives the bridge `addr` (the lab's etcd listens on it). Idempotent.
    ///
    /// Two things make the bridge a usable TCP endpoint for the nodes:
    /// - a fixed MAC address: a Linux bridge otherwise takes the lowest MAC
    ///   of its ports, which changes as nodes join, so a node that resolved
    ///   the address before would send to a port's MAC for the lifetime of
    ///   its neighbour entry (seen: one node's flaxd never reaching etcd);
    /// - transmit checksums computed in software (see
    ///   [`Netns::disable_tx_checksum`]): else the nodes' userspace datapath
    ///   forwards partial checksums and their kernels drop etcd's TCP.
    pub fn add_address(&self, addr: &ipnet::Ipv4Net) -> Result<()> {
        let mac = host_mac(addr.addr());
        self.ip(
            "set the MAC address of",
            &self.bridge,
            &["link", "set", "dev", &self.bridge, "address", &mac],
        )?;
        self.netns
            .disable_tx_checksum(&self.bridge)
            .map_err(|source| Error::Offload {
                link: self.bridge.clone(),
                underlay: self.netns.name().to_owned(),
                source,
            })?;
        let addr = addr.to_string();
        self.ip(
            "add address to",
            &self.bridge,
            &["addr", "replace", &addr, "dev", &self.bridge],
        )
    }

    /// Deletes the namespace and with it the bridge and every veth end in it
    /// (which removes the peers in the nodes). Missing is success.
    pub fn delete(&self) -> Result<()> {
        Ok(self.netns.delete()?)
    }

    fn link_exists(&self, link: &str) -> bool {
        cmd::succeeds(&mut self.netns.ip(["link", "show", "dev", link]))
    }

    fn ip(&self, step: &'static str, object: &str, args: &[&str]) -> Result<()> {
        cmd::run(&mut self.netns.ip(args)).map_err(|source| Error::Link {
            step,
            object: object.to_owned(),
            underlay: self.netns.name().to_owned(),
            source,
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_mac_is_local_unicast_and_names_the_address() {
        assert_eq!(
            host_mac("10.245.2.254".parse().unwrap()),
            "02:00:0a:f5:02:fe"
        );
    }
}
