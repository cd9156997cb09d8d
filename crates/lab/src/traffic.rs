//! A TCP transfer with iperf3 between two namespaces: a one-off server
//! (`-1`) bound to the server's address, a client for a few seconds, the
//! rate parsed from the client's JSON report.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::Duration;

use thiserror::Error;

use crate::cmd::{self, CmdError};
use crate::netns::Netns;
use crate::node::Node;
use crate::pod::Pod;
use crate::state::LabState;
use crate::wait::{self, Timeout};

pub const PORT: u16 = 5201;
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum Error {
    #[error(
        "iperf3 is not installed; install it with `./scripts/install-deps.sh` (or `apt-get install iperf3`)"
    )]
    Missing,
    #[error("start the iperf3 server in {netns}")]
    Server {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the iperf3 server in {netns} never listened on {ip}:{PORT}")]
    NotListening {
        netns: String,
        ip: Ipv4Addr,
        #[source]
        source: Timeout,
    },
    #[error("iperf3 client in {netns} to {ip}")]
    Client {
        netns: String,
        ip: Ipv4Addr,
        #[source]
        source: CmdError,
    },
    #[error("pod {pod} has no address (its ADD did not finish)")]
    NoAddress { pod: String },
    #[error("iperf3 report from {netns} has no received rate: {report}")]
    Report { netns: String, report: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A finished transfer.
#[derive(Clone, Debug, PartialEq)]
pub struct Throughput {
    /// Received by the server, in Mbit/s.
    pub mbps: f64,
    pub seconds: f64,
    pub retransmits: Option<u64>,
}

/// A transfer between two named ends.
#[derive(Clone, Debug, PartialEq)]
pub struct Transfer {
    pub client: String,
    pub server: String,
    pub server_ip: Ipv4Addr,
    pub throughput: Throughput,
}

/// A client and a server pod on different nodes: the first wired pod of the
/// first node, and the first wired pod of the last node that has one.
pub fn cross_node_pods(state: &LabState) -> Option<(&Pod, &Pod)> {
    let client = state.wired_pods().next()?;
    let server = state
        .wired_pods()
        .filter(|p| p.node != client.node)
        .last()?;
    let first = state.wired_pods().find(|p| p.node == server.node)?;
    Some((client, first))
}

/// A TCP transfer from pod `client` to pod `server` over the overlay.
pub fn between_pods(client: &Pod, server: &Pod, seconds: u32) -> Result<Transfer> {
    let ip = server.ip.ok_or_else(|| Error::NoAddress {
        pod: server.name.clone(),
    })?;
    let throughput = tcp(&server.netns, ip.addr(), &client.netns, seconds)?;
    Ok(Transfer {
        client: client.name.clone(),
        server: server.name.clone(),
        server_ip: ip.addr(),
        throughput,
    })
}

/// The same between two nodes' underlay addresses, for comparison.
pub fn between_nodes(client: &Node, server: &Node, seconds: u32) -> Result<Transfer> {
    let ip = server.underlay_ip.addr();
    let throughput = tcp(&server.netns, ip, &client.netns, seconds)?;
    Ok(Transfer {
        client: client.name.clone(),
        server: server.name.clone(),
        server_ip: ip,
        throughput,
    })
}

/// The server, killed and reaped on drop if it is still running.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a TCP transfer of `seconds` from `client` to a server in `server`
/// listening on `ip` (an address of `server`).
pub fn tcp(server: &Netns, ip: Ipv4Addr, client: &Netns, seconds: u32) -> Result<Throughput> {
    if !cmd::succeeds(&mut cmd::command("iperf3", ["--version"])) {
        return Err(Error::Missing);
    }
    let addr = ip.to_string();
    let port = PORT.to_string();
    let mut command = server.command("iperf3");
    command
        .args(["-s", "-1", "-B", &addr, "-p", &port])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // The server lives only for this call, which runs on this thread: if this process is
    // killed before `Server`'s drop runs, the kernel kills the server too, instead of it
    // waiting for a client forever in the namespace.
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is
    // async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let child = command.spawn().map_err(|source| Error::Server {
        netns: server.name().to_owned(),
        source,
    })?;
    let _server = Server(child);
    let sport = format!("sport = :{PORT}");
    wait::until("iperf3 to listen", LISTEN_TIMEOUT, || {
        let out = cmd::run(server.command("ss").args(["-Hltn", &sport])).ok()?;
        out.contains(&addr).then_some(())
    })
    .map_err(|source| Error::NotListening {
        netns: server.name().to_owned(),
        ip,
        source,
    })?;
    let report = cmd::run(client.command("iperf3").args([
        "-c",
        &addr,
        "-p",
        &port,
        "-t",
        &seconds.to_string(),
        "-J",
    ]))
    .map_err(|source| Error::Client {
        netns: client.name().to_owned(),
        ip,
        source,
    })?;
    parse_report(&report).ok_or_else(|| Error::Report {
        netns: client.name().to_owned(),
        report: report.chars().take(500).collect(),
    })
}

/// The client's `iperf3 -J` report: `end.sum_received` is what the server
/// got, the honest number.
pub fn parse_report(json: &str) -> Option<Throughput> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let received = &v["end"]["sum_received"];
    Some(Throughput {
        mbps: received["bits_per_second"].as_f64()? / 1e6,
        seconds: received["seconds"].as_f64().unwrap_or_default(),
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_received_rate() {
        let report = r#"{"start":{},"end":{
            "sum_sent":{"seconds":3.0,"bytes":1,"bits_per_second":400000000.0,"retransmits":7},
            "sum_received":{"seconds":3.01,"bytes":1,"bits_per_second":377500000.0}}}"#;
        let t = parse_report(report).unwrap();
        assert!((t.mbps - 377.5).abs() < 1e-9);
        assert!((t.seconds - 3.01).abs() < 1e-9);
        assert_eq!(t.retransmits, Some(7));
        assert_eq!(parse_report(r#"{"error":"unable to connect"}"#), None);
        assert_eq!(parse_report("not json"), None);
    }
}
