//! One etcd for the convergence section, in node 1's namespace, with its data in the
//! bench's temporary directory; and the writes that stand for nodes joining and leaving,
//! in flaxd's layout (`<prefix>/nodes/<name>` = `{"vtep": IP}`).

use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use etcd_client::{Client, DeleteOptions, Txn, TxnOp};

use super::{ETCD_PORT, ETCD_PREFIX};

pub struct Etcd {
    child: Option<Child>,
    client: Client,
}

impl Etcd {
    /// Starts etcd inside `netns` serving `url` (and loopback), and waits until it answers.
    /// The caller's thread must be in `netns` too: the client connects from there.
    pub async fn start(netns: &Path, data: &Path, url: &str) -> Result<Etcd> {
        let clients = format!("{url},http://127.0.0.1:{ETCD_PORT}");
        let peer = format!("http://127.0.0.1:{}", ETCD_PORT + 10);
        let log = std::fs::File::create(data.with_extension("log"))
            .context("create the etcd log file")?;
        let mut cmd = Command::new("etcd");
        cmd.args([
            "--name",
            "bench",
            "--data-dir",
            &data.display().to_string(),
            "--listen-client-urls",
            &clients,
            "--advertise-client-urls",
            url,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("bench={peer}"),
            // One transaction writes every synthetic member of a step.
            "--max-txn-ops",
            "4096",
            "--log-level",
            "warn",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        crate::proc::enter_netns(&mut cmd, netns)?;
        let child = cmd.spawn().context("spawn etcd")?;
        let mut etcd = Etcd {
            child: Some(child),
            client: Client::connect([format!("http://127.0.0.1:{ETCD_PORT}")], None)
                .await
                .context("etcd client")?,
        };
        let started = Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_secs(2), etcd.client.status()).await {
                Ok(Ok(_)) => break,
                _ if started.elapsed() > Duration::from_secs(30) => {
                    bail!(
                        "etcd did not answer within 30 s (log: {})",
                        data.with_extension("log").display()
                    )
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        Ok(etcd)
    }

    fn key(prefix: &str, i: usize) -> String {
        format!("{ETCD_PREFIX}/nodes/{prefix}-{i:05}")
    }

    /// Writes members `<prefix>-00000`... with these VTEPs in one transaction; returns the
    /// instant the write was sent (convergence includes etcd's commit).
    pub async fn put_members(&mut self, prefix: &str, vteps: &[IpAddr]) -> Result<Instant> {
        let ops: Vec<TxnOp> = vteps
            .iter()
            .enumerate()
            .map(|(i, ip)| TxnOp::put(Self::key(prefix, i), format!("{{\"vtep\":\"{ip}\"}}"), None))
            .collect();
        let sent = Instant::now();
        self.client
            .txn(Txn::new().and_then(ops))
            .await
            .with_context(|| format!("etcd write of {} members", vteps.len()))?;
        Ok(sent)
    }

    /// Deletes every member `<prefix>-*` in one request; returns when it was sent.
    pub async fn delete_members(&mut self, prefix: &str) -> Result<Instant> {
        let key = format!("{ETCD_PREFIX}/nodes/{prefix}-");
        let sent = Instant::now();
        self.client
            .delete(key, Some(DeleteOptions::new().with_prefix()))
            .await
            .context("etcd delete of members")?;
        Ok(sent)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
