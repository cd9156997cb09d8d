//! The few netlink operations Linen needs, over `rtnetlink`, in the host namespace or in a
//! pod's namespace.
//!
//! `setns` changes the namespace of one thread only, so a pod-side connection is made by
//! opening the netlink socket on a short-lived helper thread that has entered the pod's
//! namespace: a socket stays bound to the namespace it was created in, so the tokio
//! runtime can drive it from any thread afterwards, and no runtime thread ever changes
//! namespace.

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::{RouteAttribute, RouteMessage, RouteMetric};
use rtnetlink::{Handle, LinkUnspec};

/// Why a netlink step failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("cannot enter network namespace {path}: {reason}")]
    Netns { path: PathBuf, reason: String },
    #[error("netlink: {what} failed")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

pub type Result<T, E = LinkError> = std::result::Result<T, E>;

/// A link as Linen needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The `IFLA_INFO_KIND` (bridge, veth, tun, ...), when the kernel reports one.
    pub kind: Option<String>,
    /// The index of the link this one is a port of.
    pub master: Option<u32>,
    pub mtu: u32,
    pub up: bool,
}

impl Link {
    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some("bridge")
    }
}

/// A netlink connection bound to one network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// A connection in the calling thread's namespace (the node's). Needs a tokio runtime.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(LinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// A connection inside the namespace at `netns` (a pod's), made on a helper thread.
    pub fn connect_in(netns: &Path) -> Result<Self> {
        let file = File::open(netns).map_err(|e| LinkError::Netns {
            path: netns.to_owned(),
            reason: e.to_string(),
        })?;
        let runtime = tokio::runtime::Handle::current();
        let made = std::thread::scope(|s| {
            s.spawn(|| {
                let _guard = runtime.enter();
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    LinkError::Netns {
                        path: netns.to_owned(),
                        reason: e.to_string(),
                    }
                })?;
                // The helper thread ends right after; its namespace goes with it.
                rtnetlink::new_connection().map_err(LinkError::Socket)
            })
            .join()
        });
        let (conn, handle, _) = made.map_err(|_| LinkError::Netns {
            path: netns.to_owned(),
            reason: "helper thread failed".into(),
        })??;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The link named `name`, or `None` when there is none.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut req = self.handle.link().get().match_name(name).execute();
        match req.try_next().await {
            Ok(Some(msg)) => Ok(Some(to_link(&msg))),
            Ok(None) => Ok(None),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(source) => Err(LinkError::Request {
                what: format!("get link {name}"),
                source,
            }),
        }
    }

    /// The link with index `index`, or `None`.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut req = self.handle.link().get().match_index(index).execute();
        match req.try_next().await {
            Ok(msg) => Ok(msg.as_ref().map(to_link)),
            Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
            Err(source) => Err(LinkError::Request {
                what: format!("get link #{index}"),
                source,
            }),
        }
    }

    /// Makes `link` a port of `master` and brings it up. Idempotent.
    pub async fn enslave_and_up(&self, link: &Link, master: &Link) -> Result<()> {
        let msg = LinkUnspec::new_with_index(link.index)
            .controller(master.index)
            .up()
            .build();
        self.set(
            msg,
            format!("attach {} to {} and bring it up", link.name, master.name),
        )
        .await
    }

    /// Sets the MTU of `link`.
    pub async fn set_mtu(&self, link: &Link, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(link.index).mtu(mtu).build();
        self.set(msg, format!("set MTU {mtu} on {}", link.name))
            .await
    }

    async fn set(&self, msg: LinkMessage, what: String) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|source| LinkError::Request { what, source })
    }

    /// Every address configured in this namespace.
    pub async fn local_addresses(&self) -> Result<Vec<IpAddr>> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| LinkError::Request {
                what: "list addresses".into(),
                source,
            })?;
        Ok(msgs
            .iter()
            .flat_map(|m| m.attributes.iter())
            .filter_map(|a| match a {
                AddressAttribute::Address(ip) | AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            })
            .collect())
    }

    /// The MTU of the path to `dst`: the route's own MTU metric if set, else the MTU of the
    /// link the route leaves through. `None` when there is no route.
    pub async fn path_mtu(&self, dst: IpAddr) -> Result<Option<u32>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if dst.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        msg.attributes.push(RouteAttribute::Destination(dst.into()));
        let found = self.handle.route().get(msg).execute().try_next().await;
        let route = match found {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(e) if is_errno(&e, libc::ENETUNREACH) || is_errno(&e, libc::EHOSTUNREACH) => {
                return Ok(None);
            }
            Err(source) => {
                return Err(LinkError::Request {
                    what: format!("route to {dst}"),
                    source,
                });
            }
        };
        let mut oif = None;
        for attr in &route.attributes {
            match attr {
                RouteAttribute::Metrics(metrics) => {
                    if let Some(mtu) = metrics.iter().find_map(|m| match m {
                        RouteMetric::Mtu(mtu) if *mtu > 0 => Some(*mtu),
                        _ => None,
                    }) {
                        return Ok(Some(mtu));
                    }
                }
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        match oif {
            Some(i) => Ok(self.link_by_index(i).await?.map(|l| l.mtu)),
            None => Ok(None),
        }
    }
}

fn to_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        master: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.iter().find_map(|i| match i {
                    LinkInfo::Kind(k) => Some(kind_name(k)),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    link
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Tun => "tun".into(),
        other => other.to_string(),
    }
}

fn is_errno(err: &rtnetlink::Error, errno: i32) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}
