//! The lab's etcd (Debian's `/usr/bin/etcd`, 3.4): one member inside the
//! underlay namespace `<lab>-ul`, serving clients on the underlay bridge's
//! address `10.245.2.254:2379`, so every node reaches it over the underlay and
//! nothing listens outside the lab's namespaces. Data and log live in
//! `<lab dir>/etcd`; the pid is recorded in the lab state, and proven (comm
//! `etcd`, command line naming that directory) before every signal.
//!
//! Secure as a deployment should be: clients speak TLS and must show a
//! certificate of the lab's own CA ([`crate::pki`]; `--client-cert-auth`),
//! whose common name is their etcd user; etcd's auth is on, with one role per
//! node ([`crate::etcd_auth`]). An unauthenticated client is refused. Its
//! health is probed on a plaintext metrics listener on the underlay
//! namespace's loopback, which serves `/health` and `/metrics` only.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::node::UNDERLAY_SUBNET;
use crate::process::{self, Proof};
use crate::underlay::Underlay;
use crate::wait::{self, Timeout};

/// The program, as found in `PATH` (Debian: `etcd-server`).
pub const PROGRAM: &str = "etcd";
/// The key prefix flaxd uses (its default).
pub const PREFIX: &str = "/linen";
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
/// `/health` (and `/metrics`), plaintext, on the underlay namespace's loopback.
const METRICS_PORT: u16 = 2381;
const START_TIMEOUT: Duration = Duration::from_secs(20);
const TERM_GRACE: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum Error {
    #[error("put etcd's address {address} on the underlay bridge")]
    Address {
        address: Ipv4Net,
        #[source]
        source: Box<crate::underlay::Error>,
    },
    #[error("create etcd's directory {dir}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd")]
    Process(#[source] Box<process::Error>),
    #[error("etcd access control: {step}")]
    Auth {
        step: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("the lab's etcd certificates")]
    Pki(#[from] crate::pki::Error),
    #[error("etcd did not become healthy (see {log})")]
    NotReady {
        log: PathBuf,
        #[source]
        source: Timeout,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The lab's etcd as recorded in its state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Etcd {
    /// Its address (and prefix) on the underlay bridge.
    pub address: Ipv4Net,
    /// `<lab dir>/etcd`: data directory and log.
    pub dir: PathBuf,
    /// flaxd's lease TTL, seconds: how long a crashed node stays a member.
    pub lease_ttl: u32,
    /// Recorded as soon as it is started.
    pub pid: Option<i32>,
}

impl Etcd {
    /// The plan for the lab in `lab_dir`; starts nothing.
    pub fn plan(lab_dir: &Path, lease_ttl: u32) -> Self {
        let last = Ipv4Addr::from(u32::from(UNDERLAY_SUBNET.broadcast()) - 1);
        Etcd {
            address: Ipv4Net::new(last, UNDERLAY_SUBNET.prefix_len()).expect("a /24"),
            dir: lab_dir.join("etcd"),
            lease_ttl,
            pid: None,
        }
    }

    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.address.addr(), CLIENT_PORT))
    }

    /// `https://10.245.2.254:2379`, what flaxd is given.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.client_addr())
    }

    /// The lab's CA, etcd's server certificate and the lab's `root` client
    /// certificate.
    pub fn pki(&self) -> crate::pki::Pki {
        crate::pki::Pki::new(self.dir.join("pki"))
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    fn proof(&self) -> Proof<'_> {
        Proof {
            comm: PROGRAM,
            dir: &self.dir,
        }
    }

    /// The recorded pid, if it still is this lab's etcd.
    pub fn running_pid(&self) -> Option<i32> {
        self.proof().alive(self.pid)
    }

    /// Every etcd process of this lab, recorded or not (after a crash of `up`).
    pub fn all_pids(&self) -> Vec<i32> {
        self.proof().find_all()
    }

    /// The command line, inside the underlay namespace. One member, so
    /// elections take a heartbeat or two: short intervals make it ready fast.
    fn command(&self, lab: &str, underlay: &Underlay) -> std::process::Command {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{PEER_PORT}");
        let pki = self.pki();
        let mut cmd = underlay.netns.command(PROGRAM);
        cmd.args(["--name", lab])
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg("--client-cert-auth")
            .arg(format!("--trusted-ca-file={}", pki.ca_cert().display()))
            .arg(format!("--cert-file={}", pki.server().cert.display()))
            .arg(format!("--key-file={}", pki.server().key.display()))
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{METRICS_PORT}"
            ))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={lab}={peer}"))
            .arg(format!("--initial-cluster-token={lab}"))
            .args([
                "--initial-cluster-state=new",
                "--heartbeat-interval=50",
                "--election-timeout=500",
                "--logger=zap",
                "--log-outputs=stderr",
            ]);
        cmd
    }

    /// Puts the address on the underlay bridge and starts etcd; `record`
    /// is called with the pid at once (the caller saves it in the state).
    /// Returns once etcd reports itself healthy.
    pub fn start(
        &mut self,
        lab: &str,
        underlay: &Underlay,
        record: impl FnOnce(&Etcd) -> crate::Result<()>,
    ) -> crate::Result<()> {
        underlay
            .add_address(&self.address)
            .map_err(|source| Error::Address {
                address: self.address,
                source: Box::new(source),
            })?;
        std::fs::create_dir_all(&self.dir).map_err(|source| Error::Dir {
            dir: self.dir.clone(),
            source,
        })?;
        let pki = self.pki();
        pki.create(&[
            std::net::IpAddr::V4(self.address.addr()),
            std::net::IpAddr::V4(Ipv4Addr::LOCALHOST),
        ])
        .map_err(Error::Pki)?;
        pki.issue_client(crate::etcd_auth::ROOT, &pki.client(crate::etcd_auth::ROOT))
            .map_err(Error::Pki)?;
        let pid = process::spawn(&mut self.command(lab, underlay), &self.log_file())
            .map_err(|e| Error::Process(Box::new(e)))?;
        self.pid = Some(pid);
        record(self)?;
        let log = self.log_file();
        wait::until("etcd to be healthy", START_TIMEOUT, || {
            self.healthy(underlay).then_some(())
        })
        .map_err(|source| Error::NotReady { log, source })?;
        crate::etcd_auth::enable(self, underlay)?;
        tracing::info!(pid, endpoint = %self.endpoint(), "etcd up (TLS, client certificates, auth on)");
        Ok(())
    }

    /// True when etcd answers `GET /health` with `"health":"true"` (on its
    /// metrics listener: the client port wants a client certificate).
    pub fn healthy(&self, underlay: &Underlay) -> bool {
        let metrics = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, METRICS_PORT));
        underlay
            .netns
            .http_get(metrics, "/health", PROBE_TIMEOUT)
            .is_ok_and(|(status, body)| status == 200 && body.contains(r#""health":"true""#))
    }

    /// Stops it (SIGTERM, then SIGKILL), and any other etcd of this lab a
    /// crash left unrecorded. Idempotent.
    pub fn stop(&self) -> Result<()> {
        let mut pids = self.all_pids();
        if let Some(p) = self.pid.filter(|p| !pids.contains(p)) {
            pids.push(p);
        }
        for pid in pids {
            process::stop(Some(pid), self.proof(), Signal::SIGTERM, TERM_GRACE)
                .map_err(|e| Error::Process(Box::new(e)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_addresses() {
        let e = Etcd::plan(Path::new("/run/linen-lab/a"), 3);
        assert_eq!(e.address.to_string(), "10.245.2.254/24");
        assert_eq!(e.endpoint(), "https://10.245.2.254:2379");
        assert_eq!(e.dir, PathBuf::from("/run/linen-lab/a/etcd"));
        assert_eq!(
            e.log_file(),
            PathBuf::from("/run/linen-lab/a/etcd/etcd.log")
        );
        assert!(UNDERLAY_SUBNET.contains(&e.address.addr()));
    }

    #[test]
    fn command_stays_in_the_underlay_namespace() {
        let e = Etcd::plan(Path::new("/run/linen-lab/a"), 3);
        let ul = Underlay::new(crate::netns::Netns::new("a-ul"), 1500);
        let line = crate::cmd::describe(&e.command("a", &ul));
        assert!(
            line.starts_with("ip netns exec a-ul etcd --name a"),
            "{line}"
        );
        assert!(
            line.contains("--data-dir /run/linen-lab/a/etcd/data"),
            "{line}"
        );
        assert!(
            line.contains("--listen-client-urls=https://10.245.2.254:2379"),
            "{line}"
        );
        for want in [
            "--client-cert-auth",
            "--trusted-ca-file=/run/linen-lab/a/etcd/pki/ca.pem",
            "--cert-file=/run/linen-lab/a/etcd/pki/server.pem",
            "--key-file=/run/linen-lab/a/etcd/pki/server-key.pem",
        ] {
            assert!(line.contains(want), "{want} in {line}");
        }
        assert!(
            line.contains("--listen-peer-urls=http://127.0.0.1:2380"),
            "{line}"
        );
    }
}
