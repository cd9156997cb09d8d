//! Reading each node's flaxd tunnels straight from its OVSDB (a raw `select`, ~0.2 ms),
//! polled every few milliseconds until a condition holds on every node.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ovsdb::{Client, Condition, Operation};

use crate::bed::Bed;

const POLL: Duration = Duration::from_millis(5);

/// One node's flaxd tunnels that ovs-vswitchd has in its data path: remote -> ofport.
#[derive(Debug, Default)]
pub struct Tunnels(BTreeMap<IpAddr, i64>);

impl Tunnels {
    pub fn has(&self, ip: IpAddr) -> bool {
        self.0.contains_key(&ip)
    }

    /// A tunnel to every address of `all` but `me`.
    pub fn has_all(&self, all: &[IpAddr], me: IpAddr) -> bool {
        all.iter().filter(|ip| **ip != me).all(|ip| self.has(*ip))
    }

    pub fn count(&self) -> usize {
        self.0.len()
    }
}

pub struct Watch {
    clients: Vec<Client>,
}

impl Watch {
    pub async fn connect(bed: &Bed) -> Result<Watch> {
        let mut clients = Vec::new();
        for n in bed.cluster.nodes() {
            let addr = format!("unix:{}", n.ovsdb_socket.display());
            clients.push(
                Client::connect(&addr)
                    .await
                    .with_context(|| format!("connect to {addr}"))?,
            );
        }
        Ok(Watch { clients })
    }

    async fn tunnels(&self, i: usize) -> Result<Tunnels> {
        let op = Operation::select("Interface", vec![Condition::eq("type", "vxlan")]).columns([
            "options",
            "ofport",
            "external_ids",
        ]);
        let res = self.clients[i]
            .transact("Open_vSwitch", vec![op])
            .await
            .context("select tunnels")?;
        let mut out = BTreeMap::new();
        for row in res.into_iter().flat_map(|r| r.rows.unwrap_or_default()) {
            let ids = row.get("external_ids").and_then(|d| d.as_string_map());
            if ids
                .as_ref()
                .and_then(|m| m.get(linen::model::SOURCE_KEY))
                .map(String::as_str)
                != Some("flaxd")
            {
                continue;
            }
            let ofport = row.get("ofport").and_then(|d| d.as_integer()).unwrap_or(-1);
            let remote = row
                .get("options")
                .and_then(|d| d.as_string_map())
                .and_then(|m| m.get("remote_ip")?.parse::<IpAddr>().ok());
            if let Some(ip) = remote
                && ofport > 0
            {
                out.insert(ip, ofport);
            }
        }
        Ok(Tunnels(out))
    }

    /// Polls every node until `ok(node index, its tunnels)` holds for all of them at once.
    pub async fn wait(
        &self,
        timeout: Duration,
        ok: impl Fn(usize, &Tunnels) -> bool,
    ) -> Result<Duration> {
        let started = Instant::now();
        loop {
            crate::stop::check()?;
            let mut all = true;
            let mut seen = Vec::new();
            for i in 0..self.clients.len() {
                let t = self.tunnels(i).await?;
                all &= ok(i, &t);
                seen.push(t.count());
                if !all {
                    break;
                }
            }
            if all {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!("not converged within {timeout:?} (tunnels per node: {seen:?})");
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
