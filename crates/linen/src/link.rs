//! The few netlink operations Linen needs, over `rtnetlink`, in the host namespace or in a
//! pod's namespace.
//!
//! `setns` changes the namespace of the calling thread only. A netlink socket stays bound
//! to the namespace it was created in, so a pod-side connection needs only its socket to
//! be created inside the pod's namespace: [`PodSocket::open`] enters the namespace, opens
//! the socket and returns to the thread's own namespace before it returns. The plugin
//! calls it in its synchronous preamble, before any async runtime exists, so no runtime
//! thread ever changes namespace and no helper thread is needed.

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
    /// The path exists but is not a namespace file (a FIFO, a directory, a regular file).
    #[error("{path} is not a network namespace ({why})")]
    NotANetns { path: PathBuf, why: String },
    #[error("netlink: {what} failed")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

pub type Result<T, E = LinkError> = std::result::Result<T, E>;

/// A route netlink socket created inside a pod's network namespace.
pub struct PodSocket(std::os::fd::OwnedFd);

impl PodSocket {
    /// Enters the namespace at `netns` on the calling thread, opens a NETLINK_ROUTE socket
    /// there and returns to the thread's own namespace. Call it where no async task can
    /// run on this thread in between (it is synchronous throughout).
    pub fn open(netns: &Path) -> Result<Self> {
        use nix::sched::{CloneFlags, setns};
        let fail = |reason: String| LinkError::Netns {
            path: netns.to_owned(),
            reason,
        };
        let own = File::open("/proc/thread-self/ns/net")
            .map_err(|e| fail(format!("cannot open own namespace: {e}")))?;
        // O_NONBLOCK: opening a FIFO (or another device) must not wait for a writer; a
        // namespace file ignores the flag. Then the file system says what it is: only an
        // nsfs file is a namespace, and setns itself refuses a namespace of another type.
        use std::os::unix::fs::OpenOptionsExt;
        let target = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(netns)
            .map_err(|e| fail(e.to_string()))?;
        let not_netns = |why: String| LinkError::NotANetns {
            path: netns.to_owned(),
            why,
        };
        let fs = nix::sys::statfs::fstatfs(&target).map_err(|e| fail(e.to_string()))?;
        if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
            return Err(not_netns(format!(
                "a file on a {:#x} file system, not nsfs",
                fs.filesystem_type().0
            )));
        }
        setns(&target, CloneFlags::CLONE_NEWNET).map_err(|e| match e {
            nix::errno::Errno::EINVAL => not_netns("a namespace of another type".to_owned()),
            e => fail(e.to_string()),
        })?;
        let socket = rtnetlink::sys::Socket::new(rtnetlink::sys::constants::NETLINK_ROUTE);
        // Back home before anything else can happen, whatever the socket call did. If
        // that fails the thread is stranded in the pod's namespace: stop here.
        setns(&own, CloneFlags::CLONE_NEWNET)
            .map_err(|e| fail(format!("cannot return to own namespace: {e}")))?;
        let socket = socket.map_err(LinkError::Socket)?;
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: the raw fd comes from a socket we own and hand over here.
        Ok(PodSocket(unsafe {
            std::os::fd::OwnedFd::from_raw_fd(socket.into_raw_fd())
        }))
    }
}

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
    /// The hardware address, as CNI results write it (`aa:bb:cc:dd:ee:ff`).
    pub mac: Option<String>,
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

    /// A connection over a socket opened in a pod's namespace. Needs a tokio runtime.
    pub fn connect_in(socket: PodSocket) -> Result<Self> {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let fd = socket.0.into_raw_fd();
        // SAFETY: `fd` is a netlink socket we own; ownership moves to the TokioSocket.
        let socket = unsafe { rtnetlink::sys::TokioSocket::from_raw_fd(fd) };
        let (conn, handle, _) = rtnetlink::from_socket(socket);
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
        mac: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::Address(a) if a.len() == 6 => {
                link.mac = Some(
                    a.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                );
            }
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
