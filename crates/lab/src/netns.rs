//! Named network namespaces, managed with iproute2.
//!
//! Why `ip netns` rather than `unshare` + a bind mount through nix: iproute2
//! already owns the conventions every consumer relies on (`/var/run/netns/NAME`
//! as a bind mount, `/run/netns` made a shared mount once so the mounts
//! propagate, `/sys` remounted by `ip netns exec` so `/sys/class/net` shows the
//! namespace). The CNI runtime, `ip netns exec` and podman via
//! `nsenter --net=PATH` all find the namespace by that path. Reimplementing the
//! mount dance would save one fork per namespace, which the lab does not need.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cmd::{self, CmdError, command};

/// Where `ip netns add` puts the bind mount of a named namespace.
pub const NETNS_DIR: &str = "/var/run/netns";

#[derive(Debug, Error)]
pub enum Error {
    #[error("create network namespace {name}")]
    Add {
        name: String,
        #[source]
        source: CmdError,
    },
    #[error("delete network namespace {name}")]
    Delete {
        name: String,
        #[source]
        source: CmdError,
    },
    #[error("list processes in network namespace {name}")]
    Pids {
        name: String,
        #[source]
        source: CmdError,
    },
    #[error("list network namespaces in {NETNS_DIR}")]
    List(#[source] io::Error),
    #[error("processes {pids:?} in network namespace {name} outlived SIGKILL")]
    Survivors { name: String, pids: Vec<i32> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A named network namespace; a handle, creating it is `ensure`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A handle to the namespace `name`; nothing is created.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    /// Creates the namespace unless it exists. Idempotent.
    pub fn ensure(name: impl Into<String>) -> Result<Self> {
        let ns = Self::new(name);
        if !ns.exists() {
            cmd::run(&mut command("ip", ["netns", "add", &ns.name])).map_err(|source| {
                Error::Add {
                    name: ns.name.clone(),
                    source,
                }
            })?;
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/NAME`, the path CNI runtimes and `nsenter --net` take.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// Deletes the namespace. A missing namespace is success. Interfaces in
    /// it (a veth end with it) go away once no process holds it any more.
    pub fn delete(&self) -> Result<()> {
        if !self.exists() {
            return Ok(());
        }
        match cmd::run(&mut command("ip", ["netns", "del", &self.name])) {
            Ok(_) => Ok(()),
            // Lost a race with another deleter: gone is what was asked for.
            Err(_) if !self.exists() => Ok(()),
            Err(source) => Err(Error::Delete {
                name: self.name.clone(),
                source,
            }),
        }
    }

    /// `ip netns exec NAME PROGRAM`: PROGRAM runs in the namespace with `/sys`
    /// remounted for it, which is how OVS was verified to work here.
    pub fn command(&self, program: &str) -> Command {
        command("ip", ["netns", "exec", &self.name, program])
    }

    /// `nsenter --net=PATH PROGRAM`: enters only the network namespace and
    /// leaves mounts alone (podman fails under `ip netns exec`).
    pub fn nsenter(&self, program: &str) -> Command {
        let net = format!("--net={}", self.path().display());
        command("nsenter", [net.as_str(), program])
    }

    /// `ip -n NAME ...`, for link and address work in the namespace.
    pub fn ip<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = command("ip", ["-n", &self.name]);
        cmd.args(args);
        cmd
    }

    /// `GET path` over HTTP/1.0 to `addr` from inside this namespace; the
    /// status code and body. The socket is made on a short-lived thread that
    /// entered the namespace (`setns` is per thread; no other thread of this
    /// process ever changes namespace). Bounded by `timeout` per step.
    pub fn http_get(
        &self,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> io::Result<(u16, String)> {
        let file = std::fs::File::open(self.path())?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
                stream.set_read_timeout(Some(timeout))?;
                stream.set_write_timeout(Some(timeout))?;
                stream.write_all(request.as_bytes())?;
                let mut reply = String::new();
                stream.read_to_string(&mut reply)?;
                parse_http_reply(&reply)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP reply"))
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("HTTP probe thread panicked")))
        })
    }

    /// Turns transmit checksum offload off on `ifname` in this namespace
    /// (`ethtool -K IF tx off`, as an `SIOCETHTOOL` ioctl: ethtool is not
    /// installed everywhere).
    ///
    /// Why: a TCP segment sent by a kernel stack through a veth carries only
    /// a partial checksum, which the receiving kernel would trust; the OVS
    /// userspace datapath reads it off the veth and hands it on to another
    /// interface, where it arrives with a wrong checksum and is dropped. Pings
    /// pass, TCP does not: the lab's etcd, in the underlay namespace, needs
    /// the bridge there to checksum in software.
    pub fn disable_tx_checksum(&self, ifname: &str) -> io::Result<()> {
        use nix::libc;
        use std::os::fd::AsRawFd;
        #[repr(C)]
        struct EthtoolValue {
            cmd: u32,
            data: u32,
        }
        const SIOCETHTOOL: libc::c_ulong = 0x8946;
        const ETHTOOL_STXCSUM: u32 = 0x17;
        let name = ifname.as_bytes();
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "interface name",
            ));
        }
        let file = std::fs::File::open(self.path())?;
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                // Any socket of the namespace takes the ioctl.
                let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
                let mut value = EthtoolValue {
                    cmd: ETHTOOL_STXCSUM,
                    data: 0,
                };
                // SAFETY: ifreq is plain data (all zeroes is valid); the name
                // fits with its NUL (checked above); ifru_data points at
                // `value`, which outlives the ioctl.
                let rc = unsafe {
                    let mut ifr: libc::ifreq = std::mem::zeroed();
                    for (dst, src) in ifr.ifr_name.iter_mut().zip(name) {
                        *dst = *src as libc::c_char;
                    }
                    ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
                    libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut ifr)
                };
                if rc < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("ethtool thread panicked")))
        })
    }

    /// Ids of the processes whose network namespace this is.
    /// Kills (SIGKILL) every process running in the namespace and waits until none is
    /// left: for a namespace the lab owns, whose processes are all the lab's (pings,
    /// iperf3 servers, a daemon that outlived its stop), so that deleting it frees it
    /// instead of leaving them running in an unnamed namespace. Reaps the ones that are
    /// this process's children.
    pub fn kill_all(&self) -> Result<()> {
        use nix::sys::signal::{Signal, kill};
        use nix::sys::wait::{WaitPidFlag, waitpid};
        use nix::unistd::Pid;
        let me = std::process::id() as i32;
        let mut left = Vec::new();
        let gone = crate::wait::until(
            format!("the processes in {} to die", self.name),
            Duration::from_secs(5),
            || {
                left = match self.pids() {
                    Ok(p) => p.into_iter().filter(|p| *p != me).collect(),
                    Err(e) => return Some(Err(e)),
                };
                for &pid in &left {
                    // ESRCH: it exited since the listing.
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
                }
                left.is_empty().then_some(Ok(()))
            },
        );
        match gone {
            Ok(result) => result,
            Err(_) => Err(Error::Survivors {
                name: self.name.clone(),
                pids: left,
            }),
        }
    }

    pub fn pids(&self) -> Result<Vec<i32>> {
        if !self.exists() {
            return Ok(Vec::new());
        }
        let out =
            cmd::run(&mut command("ip", ["netns", "pids", &self.name])).map_err(|source| {
                Error::Pids {
                    name: self.name.clone(),
                    source,
                }
            })?;
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }
}

/// The status code and body of an HTTP/1.x reply.
fn parse_http_reply(reply: &str) -> Option<(u16, String)> {
    let (head, body) = reply.split_once("\r\n\r\n")?;
    let mut status = head.lines().next()?.split_whitespace();
    if !status.next()?.starts_with("HTTP/") {
        return None;
    }
    Some((status.next()?.parse().ok()?, body.to_owned()))
}

/// Names of all named network namespaces (the entries of `/var/run/netns`).
pub fn list() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::List(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::List)?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Deletes its namespace when dropped; for tests and for rollback.
#[derive(Debug)]
pub struct NetnsGuard(Option<Netns>);

impl NetnsGuard {
    /// Creates (or adopts) the namespace `name` and guards it.
    pub fn ensure(name: impl Into<String>) -> Result<Self> {
        Netns::ensure(name).map(|ns| Self(Some(ns)))
    }
}

impl std::ops::Deref for NetnsGuard {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        self.0
            .as_ref()
            .expect("guard holds its namespace until disarmed")
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Some(ns) = self.0.take()
            && let Err(e) = ns.delete()
        {
            tracing::warn!(netns = ns.name(), error = %crate::error_chain(&e), "cleanup failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_is_under_var_run_netns() {
        assert_eq!(
            Netns::new("lab-n1").path(),
            PathBuf::from("/var/run/netns/lab-n1")
        );
    }

    #[test]
    fn commands_name_the_namespace() {
        let ns = Netns::new("lab-n1");
        assert_eq!(
            cmd::describe(&ns.command("ping")),
            "ip netns exec lab-n1 ping"
        );
        assert_eq!(
            cmd::describe(&ns.ip(["link", "show"])),
            "ip -n lab-n1 link show"
        );
        assert_eq!(
            cmd::describe(&ns.nsenter("podman")),
            "nsenter --net=/var/run/netns/lab-n1 podman"
        );
    }

    #[test]
    fn http_replies() {
        let ok = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nok\n";
        assert_eq!(parse_http_reply(ok), Some((200, "ok\n".into())));
        let bad = "HTTP/1.1 503 Service Unavailable\r\n\r\nnot reconciled yet\n";
        assert_eq!(parse_http_reply(bad).unwrap().0, 503);
        assert_eq!(parse_http_reply("garbage"), None);
        assert_eq!(parse_http_reply("SSH-2.0\r\n\r\n"), None);
    }

    #[test]
    fn serializes_as_its_name() {
        let json = serde_json::to_string(&Netns::new("a-n1")).unwrap();
        assert_eq!(json, "\"a-n1\"");
    }
}
