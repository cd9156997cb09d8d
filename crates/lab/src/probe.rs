//! TCP probes that tell who is talking: a server in a namespace that answers every
//! connection with the source address it saw (so a test proves SNAT, or its absence, from
//! both ends), and the client that asks it. Both run on threads that entered the namespace
//! (`setns` is per thread; no other thread of this process changes namespace). And a host
//! on the lab's underlay that is not a node ([`OutsideHost`]): no route back to the pod
//! network, so only masquerade lets a pod reach it.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ipnet::Ipv4Net;
use thiserror::Error;

use crate::cmd::{self, CmdError};
use crate::netns::{self, Netns};
use crate::node::UNDERLAY_SUBNET;
use crate::state::LabState;
use crate::underlay::NODE_UPLINK;

#[derive(Debug, Error)]
pub enum Error {
    #[error("no free underlay address for an outside host")]
    NoAddress,
    #[error("create the outside host {name}")]
    Netns {
        name: String,
        #[source]
        source: netns::Error,
    },
    #[error("wire the outside host {name} to the underlay")]
    Underlay {
        name: String,
        #[source]
        source: Box<crate::underlay::Error>,
    },
    #[error("{step} for the outside host {name}")]
    Link {
        step: &'static str,
        name: String,
        #[source]
        source: CmdError,
    },
    #[error("turn off transmit checksum offload in the outside host {name}")]
    Offload {
        name: String,
        #[source]
        source: io::Error,
    },
}

fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let file = std::fs::File::open(ns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("probe thread panicked")))
    })
}

/// Connects from inside `ns` to `addr` and returns what the peer sent until it closed
/// (a [`PeerServer`] sends the source address it saw). Bounded by `timeout` per step.
pub fn ask(ns: &Netns, addr: SocketAddr, timeout: Duration) -> io::Result<String> {
    ask_at(&ns.path(), addr, timeout)
}

/// [`ask`] from the network namespace at `ns` (`/proc/PID/ns/net` of a CRI sandbox, say).
pub fn ask_at(ns: &Path, addr: SocketAddr, timeout: Duration) -> io::Result<String> {
    in_netns(ns, || {
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply.trim().to_owned())
    })
}

/// A TCP server in a namespace: answers each connection with the source address it saw,
/// and records it. Stops when dropped.
pub struct PeerServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<IpAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PeerServer {
    /// Listens on `addr` inside `ns` (bound before this returns).
    pub fn start(ns: &Netns, addr: SocketAddr) -> io::Result<Self> {
        Self::start_at(&ns.path(), addr)
    }

    /// [`PeerServer::start`] in the network namespace at `ns`.
    pub fn start_at(ns: &Path, addr: SocketAddr) -> io::Result<Self> {
        let file = std::fs::File::open(ns)?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let bound = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)
                    .and_then(|()| TcpListener::bind(addr))
                    .and_then(|l| l.set_nonblocking(true).map(|()| l));
                let listener = match bound {
                    Ok(l) => {
                        let _ = tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, peer)) => {
                            seen.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(peer.ip());
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.write_all(format!("{}\n", peer.ip()).as_bytes());
                        }
                        // Nothing pending: look again shortly (the stop flag is read here).
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        rx.recv()
            .unwrap_or_else(|_| Err(io::Error::other("server thread died")))?;
        Ok(PeerServer {
            addr,
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// The source addresses seen so far, in order.
    pub fn seen(&self) -> Vec<IpAddr> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A host on the lab's underlay that is not a node: a namespace with one veth to the
/// underlay bridge, an underlay address no node has, and no route to the pod network.
/// Deleted (namespace and veth) when dropped.
pub struct OutsideHost {
    pub netns: Netns,
    pub ip: Ipv4Net,
    /// On an IPv6 underlay (`--underlay ipv6`): `fd00:10:245:2::<same host number>/64` too.
    pub ip6: Option<ipnet::Ipv6Net>,
}

impl OutsideHost {
    /// Creates it in a namespace named `name`, at the highest underlay address that no node
    /// and not the lab's etcd has.
    pub fn create(state: &LabState, name: &str) -> Result<Self, Error> {
        let taken: Vec<Ipv4Addr> = state
            .nodes
            .iter()
            .map(|n| n.underlay_ip.addr())
            .chain(state.etcd.as_ref().map(|e| e.address.addr()))
            .collect();
        let base = u32::from(UNDERLAY_SUBNET.network());
        let ip = (1..=253u32)
            .rev()
            .map(|i| Ipv4Addr::from(base + i))
            .find(|ip| !taken.contains(ip))
            .ok_or(Error::NoAddress)?;
        let ip = Ipv4Net::new(ip, UNDERLAY_SUBNET.prefix_len()).expect("a valid prefix");
        let netns = Netns::ensure(name).map_err(|source| Error::Netns {
            name: name.to_owned(),
            source,
        })?;
        let ip6 = state
            .nodes
            .iter()
            .any(|n| n.underlay_ip6.is_some())
            .then(|| crate::node::Node::underlay_ip6_for(ip.addr().octets()[3]));
        let host = OutsideHost { netns, ip, ip6 };
        host.wire(state)?;
        Ok(host)
    }

    fn wire(&self, state: &LabState) -> Result<(), Error> {
        let name = self.netns.name().to_owned();
        let run = |step: &'static str, c: &mut std::process::Command| {
            cmd::run(c).map(drop).map_err(|source| Error::Link {
                step,
                name: name.clone(),
                source,
            })
        };
        // Wired as a node is: a veth from the underlay bridge to its eth0.
        let port = format!("x{}", self.ip.addr().octets()[3]);
        state
            .underlay
            .attach(&self.netns, &port)
            .map_err(|source| Error::Underlay {
                name: name.clone(),
                source: Box::new(source),
            })?;
        let addr = self.ip.to_string();
        run(
            "address",
            &mut self.netns.ip(["addr", "add", &addr, "dev", NODE_UPLINK]),
        )?;
        if let Some(ip6) = self.ip6 {
            let addr = ip6.to_string();
            run(
                "IPv6 address",
                &mut self
                    .netns
                    .ip(["addr", "add", &addr, "dev", NODE_UPLINK, "nodad"]),
            )?;
        }
        run(
            "bring up",
            &mut self.netns.ip(["link", "set", NODE_UPLINK, "up"]),
        )?;
        run(
            "bring up lo",
            &mut self.netns.ip(["link", "set", "lo", "up"]),
        )?;
        // Its TCP crosses the nodes' userspace datapath (see Netns::disable_tx_checksum).
        self.netns
            .disable_tx_checksum(NODE_UPLINK)
            .map_err(|source| Error::Offload { name, source })
    }
}

impl Drop for OutsideHost {
    fn drop(&mut self) {
        // The veth's underlay end goes with its peer.
        let _ = self.netns.delete();
    }
}
