//! etcd on loopback.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flaxd::etcd::etcd_client;

use super::{LONG, eventually, free_port, kill, program, suffix};

/// An etcd cluster on loopback with random ports and a temporary data directory.
pub struct Etcd {
    dir: tempfile::TempDir,
    members: Vec<EtcdMember>,
}

struct EtcdMember {
    name: String,
    client: u16,
    child: Option<Child>,
}

impl Etcd {
    pub async fn start() -> Etcd {
        Self::cluster(1).await
    }

    /// One member serving clients on `port`.
    pub async fn start_at(port: u16) -> Etcd {
        Self::cluster_at(&[port]).await
    }

    /// `n` members, started together; returns once every one answers.
    pub async fn cluster(n: usize) -> Etcd {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        Self::cluster_at(&ports).await
    }

    /// One member per client port.
    async fn cluster_at(client_ports: &[u16]) -> Etcd {
        let n = client_ports.len();
        let dir = tempfile::Builder::new()
            .prefix(&testkit::name("flaxd-etcd-"))
            .tempdir()
            .unwrap();
        let token = format!("flx-{}", suffix());
        let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let ports: Vec<(u16, u16)> = client_ports.iter().map(|c| (*c, free_port())).collect();
        let initial: Vec<String> = names
            .iter()
            .zip(&ports)
            .map(|(name, (_, peer))| format!("{name}=http://127.0.0.1:{peer}"))
            .collect();
        let mut members = Vec::new();
        for (name, (client, peer)) in names.iter().zip(&ports) {
            let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
            let mut cmd = Command::new(program("etcd"));
            cmd.args(["--name", name])
                .arg("--data-dir")
                .arg(dir.path().join(name))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                ))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .arg(format!("--initial-cluster-token={token}"))
                .args([
                    "--initial-cluster-state=new",
                    "--heartbeat-interval=50",
                    "--election-timeout=500",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            // Killed with the test process, also when no destructor runs (a killed test).
            let child = testkit::process::spawn(cmd).expect("etcd");
            members.push(EtcdMember {
                name: name.clone(),
                client: *client,
                child: Some(child),
            });
        }
        let etcd = Etcd { dir, members };
        for ep in etcd.endpoints() {
            eventually(&format!("etcd at {ep}"), LONG, || async {
                let mut c = etcd_client::Client::connect([ep.as_str()], None)
                    .await
                    .ok()?;
                tokio::time::timeout(Duration::from_secs(1), c.get("probe", None))
                    .await
                    .ok()?
                    .ok()
            })
            .await;
        }
        etcd
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    /// Every member's endpoint, stopped or not.
    pub fn all_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect(self.endpoints(), None)
            .await
            .expect("etcd client")
    }

    /// SIGKILLs member `i`.
    pub fn stop(&mut self, i: usize) {
        kill(&mut self.members[i].child);
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("{}.log", self.members[i].name)),
        )
        .unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            kill(&mut m.child);
        }
    }
}

impl Etcd {
    /// SIGSTOPs member `i`: it keeps its sockets but answers nothing (a hung etcd).
    pub fn freeze(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONTs member `i` after [`Etcd::freeze`].
    pub fn thaw(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, i: usize, sig: nix::sys::signal::Signal) {
        let child = self.members[i].child.as_ref().expect("a running member");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig)
            .unwrap_or_else(|e| panic!("{sig} to etcd member {i}: {e}"));
    }
}
