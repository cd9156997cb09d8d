//! containerd's CRI as a node's container runtime, the caller Kubernetes really uses: kubelet
//! never runs CNI itself, it asks the runtime over the CRI gRPC API and containerd's CRI
//! plugin runs the conflist flaxd wrote (through libcni). Here the lab plays kubelet: it
//! speaks CRI v1 to a containerd of the node ([`Cri`]) — RunPodSandbox with port mappings,
//! PodSandboxStatus, a container with ExecSync, StopPodSandbox, RemovePodSandbox.
//!
//! containerd 1.6 (Debian bookworm) runs per node, everything under `<node run dir>/cri`:
//! - in the node's network namespace by `nsenter --net` (`ip netns exec` remounts /sys and
//!   hides the cgroup mounts runc needs), so the CNI plugins it runs act on the node;
//! - in a mount namespace of its own, a slave of the host's, with tmpfs over
//!   /run/containerd and /var/lib/cni: containerd 1.6 and libcni write there whatever
//!   `root`/`state` say; the sandboxes' network namespaces are mounted under its state
//!   directory (`netns_mounts_under_state_dir`), in that mount namespace only, so the lab
//!   enters a sandbox's network through its process (`/proc/PID/ns/net`);
//! - with a CNI bin dir of its own (links to this build's `linen` and the reference plugins,
//!   `loopback` included: CRI runs it for every sandbox), `conf_dir` = the directory flaxd
//!   writes `10-linen.conflist` into, runc's state in the node's directory,
//!   `restrict_oom_score_adj` (else runc cannot write oom_score_adj here), and the pods'
//!   cgroups under `/<node>-cri`, removed with everything else by [`stop`];
//! - with a sandbox image built here ([`write_image`]): one layer holding /bin/busybox from
//!   busybox-static, imported with `ctr images import` (there is no registry).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_cri::v1 as api;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use thiserror::Error;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::cmd::{self, CmdError};
use crate::node::Node;
use crate::pod::{self, Pod, PortMapping};
use crate::process::{self, Proof};
use crate::wait::{self, Timeout};

/// The sandbox (and container) image every CRI pod of the lab runs.
pub const IMAGE: &str = "localhost/linen-lab/busybox:1";
/// containerd's namespace for CRI, as kubelet's containerd uses.
pub const NAMESPACE: &str = "k8s.io";
/// The reference plugins the CRI bin dir links besides `linen`.
const PLUGINS: [&str; 4] = ["bridge", "host-local", "loopback", "portmap"];
/// Where busybox-static installs the one binary the image holds.
const BUSYBOX: &str = "/bin/busybox";
const PROGRAM: &str = "containerd";
/// A CRI call that takes longer than this is a failure (RunPodSandbox here: 0.1-0.3 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum Error {
    #[error("{what} for the CRI runtime of {node}")]
    Io {
        what: String,
        node: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Plugins(#[from] pod::Error),
    #[error("start containerd on {node}")]
    Spawn {
        node: String,
        #[source]
        source: Box<process::Error>,
    },
    #[error("containerd on {node} did not serve CRI (log: {})", log.display())]
    NotServing {
        node: String,
        log: PathBuf,
        #[source]
        source: Timeout,
    },
    #[error("import the sandbox image into containerd on {node}")]
    Import {
        node: String,
        #[source]
        source: CmdError,
    },
    #[error("CRI {call} on {node}: {}", status.message())]
    Call {
        call: &'static str,
        node: String,
        #[source]
        status: Box<tonic::Status>,
    },
    #[error("CRI {call} on {node} timed out after {CALL_TIMEOUT:?}")]
    CallTimeout { call: &'static str, node: String },
    #[error("connect to containerd's CRI socket {}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("start a tokio runtime for the CRI client")]
    Runtime(#[source] io::Error),
    #[error("the sandbox {id} on {node}: {what}")]
    Sandbox {
        id: String,
        node: String,
        what: String,
    },
    #[error("bind the namespace of pod {pod} to its sandbox")]
    Attach {
        pod: String,
        #[source]
        source: CmdError,
    },
    #[error("remove the namespace binding of pod {pod}")]
    Unbind {
        pod: String,
        #[source]
        source: crate::netns::Error,
    },
    #[error("stop containerd on {node}")]
    Stop {
        node: String,
        #[source]
        source: Box<process::Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The files of a node's containerd (pure: nothing is created).
#[derive(Clone, Debug)]
pub struct Layout {
    pub node: String,
    /// `<run dir>/cri`.
    pub dir: PathBuf,
    /// flaxd's conflist directory.
    pub conf_dir: PathBuf,
    /// The cgroup tree (relative to each hierarchy) of this node's pods.
    pub cgroup: String,
}

impl Layout {
    pub fn of(node: &Node) -> Self {
        Self::in_run_dir(&node.name, &node.run_dir)
    }

    /// The layout of node `name` whose run directory is `run_dir` (also without a state
    /// that lists it).
    pub fn in_run_dir(name: &str, run_dir: &Path) -> Self {
        Self {
            node: name.to_owned(),
            dir: run_dir.join("cri"),
            conf_dir: run_dir.join("net.d"),
            cgroup: format!("{name}-cri"),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.join("cni-bin")
    }
    fn pid_file(&self) -> PathBuf {
        self.dir.join("containerd.pid")
    }
    fn image_archive(&self) -> PathBuf {
        self.dir.join("busybox.oci.tar")
    }
    fn proof(&self) -> Proof<'_> {
        Proof {
            comm: PROGRAM,
            dir: &self.dir,
        }
    }

    /// containerd's config (version 2, containerd 1.6): see the module doc for each choice.
    pub fn config_toml(&self) -> String {
        let d = &self.dir;
        format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{runc}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = self.socket().display(),
            runc = d.join("runc").display(),
            bin = self.bin_dir().display(),
            conf = self.conf_dir.display(),
        )
    }

    fn io<W: Into<String>>(&self, what: W) -> impl FnOnce(io::Error) -> Error + use<'_, W> {
        let what = what.into();
        move |source| Error::Io {
            what,
            node: self.node.clone(),
            source,
        }
    }
}

/// The recorded containerd of `layout`, if it still runs.
pub fn running(layout: &Layout) -> Option<i32> {
    let pid = std::fs::read_to_string(layout.pid_file())
        .ok()
        .and_then(|s| s.trim().parse().ok());
    layout.proof().alive(pid)
}

/// Starts `node`'s containerd (unless it runs) and imports the sandbox image; returns a
/// client. The daemon outlives the returned client (as flaxd does); [`stop`] ends it.
pub fn start(node: &Node) -> Result<Cri> {
    let layout = Layout::of(node);
    if running(&layout).is_none() {
        spawn(node, &layout)?;
    }
    let cri = Cri::connect(&layout)?;
    wait::until(
        format!("containerd on {} to serve CRI", layout.node),
        START_TIMEOUT,
        || cri.version().ok(),
    )
    .map_err(|source| Error::NotServing {
        node: layout.node.clone(),
        log: layout.log(),
        source,
    })?;
    import_image(&layout)?;
    Ok(cri)
}

fn spawn(node: &Node, layout: &Layout) -> Result<()> {
    let d = &layout.dir;
    for sub in ["root", "state", "runc"] {
        std::fs::create_dir_all(d.join(sub)).map_err(layout.io(format!("create {sub}")))?;
    }
    link_plugins(layout)?;
    std::fs::write(layout.config(), layout.config_toml()).map_err(layout.io("write config"))?;
    write_image(&layout.image_archive()).map_err(layout.io("write the sandbox image"))?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "slave", "sh", "-c"])
        .arg(
            "mount -t tmpfs linen-lab /run/containerd && \
             mkdir -p /var/lib/cni && mount -t tmpfs linen-lab /var/lib/cni && \
             exec nsenter --net=\"$0\" containerd --config \"$1\"",
        )
        .arg(&node.netns_path)
        .arg(layout.config());
    // containerd needs /run/containerd to exist to mount over it.
    std::fs::create_dir_all("/run/containerd").map_err(layout.io("create /run/containerd"))?;
    let pid = process::spawn(&mut cmd, &layout.log()).map_err(|source| Error::Spawn {
        node: layout.node.clone(),
        source: Box::new(source),
    })?;
    std::fs::write(layout.pid_file(), pid.to_string()).map_err(layout.io("record the pid"))?;
    tracing::info!(node = %layout.node, pid, "containerd started");
    Ok(())
}

/// The CRI bin dir: links to this build's `linen` and the system's reference plugins.
fn link_plugins(layout: &Layout) -> Result<()> {
    let dirs = pod::plugin_dirs()?;
    let bin = layout.bin_dir();
    std::fs::create_dir_all(&bin).map_err(layout.io("create the CNI bin dir"))?;
    for name in std::iter::once("linen").chain(PLUGINS) {
        let Some(found) = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) else {
            return Err(layout.io(format!("find the {name} plugin"))(
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("not in {dirs:?} (run ./scripts/install-deps.sh)"),
                ),
            ));
        };
        let link = bin.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&found, &link).map_err(layout.io(format!("link {name}")))?;
    }
    Ok(())
}

/// `ctr` in containerd's mount namespace (where its socket's tmpfs siblings live).
fn ctr(layout: &Layout, pid: i32) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--mount=/proc/{pid}/ns/mnt"))
        .arg("ctr")
        .arg("--address")
        .arg(layout.socket())
        .args(["--namespace", NAMESPACE]);
    c
}

fn import_image(layout: &Layout) -> Result<()> {
    let import = |source| Error::Import {
        node: layout.node.clone(),
        source,
    };
    let pid = running(layout).ok_or_else(|| {
        import(CmdError::Spawn {
            command: "ctr".into(),
            source: io::Error::other("containerd is not running"),
        })
    })?;
    let listed = cmd::run(ctr(layout, pid).args(["images", "list", "-q"])).map_err(import)?;
    if listed.lines().any(|l| l.trim() == IMAGE) {
        return Ok(());
    }
    cmd::run(
        ctr(layout, pid)
            .args(["images", "import"])
            .arg(layout.image_archive()),
    )
    .map_err(import)?;
    Ok(())
}

/// Stops `node`'s containerd, if it runs: every sandbox through CRI first (so the CNI chain
/// runs DEL, as on a drained node), then containerd and its shims, then whatever is left in
/// the pods' cgroups. Idempotent; also for a node whose containerd crashed.
pub fn stop(node: &Node) -> Result<()> {
    stop_in(&Layout::of(node))
}

pub fn stop_in(layout: &Layout) -> Result<()> {
    if running(layout).is_some()
        && let Ok(cri) = Cri::connect(layout)
        && let Ok(pods) = cri.list_pods()
    {
        for id in pods {
            if let Err(e) = cri.stop_pod(&id).and_then(|()| cri.remove_pod(&id)) {
                tracing::warn!(node = %layout.node, error = %crate::error_chain(&e), "remove a sandbox");
            }
        }
    }
    let stop = |pid| {
        process::stop(
            Some(pid),
            layout.proof(),
            nix::sys::signal::Signal::SIGTERM,
            Duration::from_secs(5),
        )
        .map_err(|source| Error::Stop {
            node: layout.node.clone(),
            source: Box::new(source),
        })
    };
    for pid in layout.proof().find_all() {
        stop(pid)?;
    }
    // The shims (`containerd-shim-runc-v2 ... -address <dir>/containerd.sock`).
    let shims = Proof {
        comm: "containerd-shim",
        dir: &layout.dir,
    };
    for pid in shims.find_all() {
        let _ = process::stop(
            Some(pid),
            shims,
            nix::sys::signal::Signal::SIGKILL,
            Duration::from_secs(5),
        );
    }
    testkit::cgroup::remove(&layout.cgroup).map_err(layout.io("remove the pods' cgroups"))?;
    let _ = std::fs::remove_file(layout.pid_file());
    Ok(())
}

/// A lab pod as a CRI pod sandbox: RunPodSandbox (its hostPorts as port mappings), then the
/// pod's named namespace is bound to the sandbox's (`ip netns attach`), so every lab tool
/// (ping matrix, traffic, probes) reaches it as any other pod; address, MAC and MTU are read
/// from the kernel. On failure nothing of the pod is left.
pub fn attach(cri: &Cri, node: &Node, pod: &Pod) -> Result<Pod> {
    let sandbox = cri.run_pod(&pod.name, &pod.host_ports)?;
    let bound = cri.pod_status(&sandbox.id).and_then(|status| {
        let pid = status.pid.ok_or_else(|| Error::Sandbox {
            id: sandbox.id.clone(),
            node: node.name.clone(),
            what: "PodSandboxStatus names no process".into(),
        })?;
        let netns = pod.netns.name().to_owned();
        cmd::run(Command::new("ip").args(["netns", "attach", &netns, &pid.to_string()])).map_err(
            |source| Error::Attach {
                pod: pod.name.clone(),
                source,
            },
        )?;
        describe(node, pod, &sandbox.id)
    });
    match bound {
        Ok(wired) => {
            tracing::info!(pod = %pod.name, sandbox = %sandbox.id, ip = ?wired.ip, "CRI pod up");
            Ok(wired)
        }
        Err(e) => {
            let _ = cri
                .stop_pod(&sandbox.id)
                .and_then(|()| cri.remove_pod(&sandbox.id));
            let _ = pod.netns.delete();
            Err(e)
        }
    }
}

/// The pod as its namespace shows it (the first IPv4 address of eth0, MAC, MTU); the
/// gateway is its node's bridge (the conflist's `isGateway`).
fn describe(node: &Node, pod: &Pod, sandbox: &str) -> Result<Pod> {
    let inspect = |source| Error::Attach {
        pod: pod.name.clone(),
        source,
    };
    let out =
        cmd::run(&mut pod.netns.ip(["-j", "addr", "show", "dev", &pod.ifname])).map_err(inspect)?;
    let (mac, mtu) = pod::parse_link(&out);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let ip = v[0]["addr_info"].as_array().and_then(|a| {
        a.iter().find_map(|i| {
            let addr: std::net::Ipv4Addr = i["local"].as_str()?.parse().ok()?;
            ipnet::Ipv4Net::new(addr, u8::try_from(i["prefixlen"].as_u64()?).ok()?).ok()
        })
    });
    let ip6 = v[0]["addr_info"].as_array().and_then(|a| {
        a.iter().find_map(|i| {
            if i["scope"].as_str() != Some("global") {
                return None;
            }
            let addr: std::net::Ipv6Addr = i["local"].as_str()?.parse().ok()?;
            ipnet::Ipv6Net::new(addr, u8::try_from(i["prefixlen"].as_u64()?).ok()?).ok()
        })
    });
    Ok(Pod {
        ip,
        ip6,
        gateway6: node
            .pods
            .v6
            .as_ref()
            .map(|v| v.gateway)
            .filter(|_| ip6.is_some()),
        gateway: Some(node.pods.gateway).filter(|_| ip.is_some()),
        mac,
        mtu,
        sandbox: Some(sandbox.to_owned()),
        ..pod.clone()
    })
}

/// StopPodSandbox + RemovePodSandbox of a CRI pod (the chain's DEL), then its named
/// namespace's binding. Idempotent; a node whose containerd is gone only loses the binding.
pub fn detach(node: &Node, pod: &Pod) -> Result<()> {
    let layout = Layout::of(node);
    let removed = match (&pod.sandbox, running(&layout)) {
        (Some(id), Some(_)) => {
            let cri = Cri::connect(&layout)?;
            cri.stop_pod(id).and_then(|()| cri.remove_pod(id))
        }
        _ => Ok(()),
    };
    let unbound = pod.netns.delete().map_err(|source| Error::Unbind {
        pod: pod.name.clone(),
        source,
    });
    removed.and(unbound)
}

/// Writes the sandbox image as an OCI image archive: one uncompressed layer holding
/// /bin/busybox (busybox-static) and /tmp; the entry point sleeps, as a pause container.
pub fn write_image(out: &Path) -> io::Result<()> {
    let busybox = std::fs::read(BUSYBOX).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{BUSYBOX}: {e} (install busybox-static: ./scripts/install-deps.sh)"),
        )
    })?;
    let mut layer = tar::Builder::new(Vec::new());
    let mut dir = |path: &str, mode| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(0);
        h.set_cksum();
        layer.append_data(&mut h, path, io::empty())
    };
    dir("bin/", 0o755)?;
    dir("tmp/", 0o1777)?;
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    h.set_mtime(0);
    h.set_cksum();
    layer.append_data(&mut h, "bin/busybox", busybox.as_slice())?;
    let layer = layer.into_inner()?;

    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut blob = |bytes: Vec<u8>| {
        let digest = format!(
            "sha256:{}",
            hex(&ring::digest::digest(&ring::digest::SHA256, &bytes))
        );
        let size = bytes.len();
        blobs.push((digest.clone(), bytes));
        (digest, size)
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let (layer_digest, layer_size) = blob(layer);
    // The layer is stored uncompressed: its diff ID is its blob digest.
    let diff_id = layer_digest.clone();
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Entrypoint": [BUSYBOX, "sleep", "2147483647"],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let (config_digest, config_size) = blob(serde_json::to_vec(&config)?);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let (manifest_digest, manifest_size) = blob(serde_json::to_vec(&manifest)?);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": IMAGE},
        }],
    });

    let mut archive = tar::Builder::new(Vec::new());
    let mut file = |path: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(bytes.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        archive.append_data(&mut h, path, bytes)
    };
    file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    file("index.json", &serde_json::to_vec(&index)?)?;
    for (digest, bytes) in &blobs {
        file(
            &format!("blobs/sha256/{}", &digest["sha256:".len()..]),
            bytes,
        )?;
    }
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, archive.into_inner()?)?;
    std::fs::rename(tmp, out)
}

fn hex(d: &ring::digest::Digest) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A sandbox the lab asked for, with what CreateContainer needs again.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub id: String,
    pub config: api::PodSandboxConfig,
}

/// What PodSandboxStatus reports about a sandbox.
#[derive(Clone, Debug)]
pub struct SandboxStatus {
    pub ready: bool,
    /// The pod's addresses (`ip`, then `additional_ips`).
    pub ips: Vec<IpAddr>,
    /// The sandbox's process: its network namespace is `/proc/PID/ns/net`.
    pub pid: Option<i32>,
}

impl SandboxStatus {
    pub fn netns(&self) -> Option<PathBuf> {
        self.pid.map(|p| PathBuf::from(format!("/proc/{p}/ns/net")))
    }
}

/// What ExecSync returned.
#[derive(Clone, Debug)]
pub struct Exec {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A CRI v1 client of one node's containerd: blocking calls (the lab is synchronous), each
/// bounded by [`CALL_TIMEOUT`].
pub struct Cri {
    node: String,
    cgroup: String,
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl Cri {
    /// A client of `layout`'s socket; connects lazily (the first call), so it can be made
    /// before containerd serves.
    pub fn connect(layout: &Layout) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let socket = layout.socket();
        let channel = {
            let _guard = rt.enter();
            let path = socket.clone();
            Endpoint::from_static("http://[::]:0")
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }))
        };
        Ok(Self {
            node: layout.node.clone(),
            cgroup: layout.cgroup.clone(),
            rt,
            client: RuntimeServiceClient::new(channel),
        })
    }

    fn call<T, F>(
        &self,
        call: &'static str,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let fut = f(self.client.clone());
        // The timer is made inside the runtime (it needs its time driver).
        match self
            .rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, fut).await })
        {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(Error::Call {
                call,
                node: self.node.clone(),
                status: Box::new(status),
            }),
            Err(_) => Err(Error::CallTimeout {
                call,
                node: self.node.clone(),
            }),
        }
    }

    /// The runtime's name and version (`containerd 1.6.x`).
    pub fn version(&self) -> Result<String> {
        let v = self.call("Version", |mut c| async move {
            c.version(api::VersionRequest::default()).await
        })?;
        Ok(format!("{} {}", v.runtime_name, v.runtime_version))
    }

    /// RunPodSandbox for pod `name` (namespace `default`) with `ports` as hostPorts.
    pub fn run_pod(&self, name: &str, ports: &[PortMapping]) -> Result<Sandbox> {
        let config = api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: name.to_owned(),
                uid: format!("{name}-uid"),
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            hostname: name.to_owned(),
            port_mappings: ports
                .iter()
                .map(|p| api::PortMapping {
                    protocol: if p.protocol == "udp" {
                        api::Protocol::Udp
                    } else {
                        api::Protocol::Tcp
                    } as i32,
                    container_port: i32::from(p.container_port),
                    host_port: i32::from(p.host_port),
                    host_ip: String::new(),
                })
                .collect(),
            labels: HashMap::from([("linen-lab".to_owned(), "cri".to_owned())]),
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent: format!("/{}/{name}", self.cgroup),
                ..Default::default()
            }),
            ..Default::default()
        };
        let request = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        let r = self.call("RunPodSandbox", |mut c| async move {
            c.run_pod_sandbox(request).await
        })?;
        Ok(Sandbox {
            id: r.pod_sandbox_id,
            config,
        })
    }

    /// PodSandboxStatus (verbose: containerd's info carries the sandbox's pid).
    pub fn pod_status(&self, id: &str) -> Result<SandboxStatus> {
        let request = api::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: true,
        };
        let r = self.call("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(request).await
        })?;
        let status = r.status.ok_or_else(|| Error::Sandbox {
            id: id.to_owned(),
            node: self.node.clone(),
            what: "PodSandboxStatus returned no status".into(),
        })?;
        let mut ips = Vec::new();
        if let Some(net) = &status.network {
            for ip in std::iter::once(net.ip.as_str())
                .chain(net.additional_ips.iter().map(|p| p.ip.as_str()))
                .filter(|s| !s.is_empty())
            {
                ips.push(ip.parse().map_err(|_| Error::Sandbox {
                    id: id.to_owned(),
                    node: self.node.clone(),
                    what: format!("{ip:?} is not an address"),
                })?);
            }
        }
        let pid = r
            .info
            .get("info")
            .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
            .and_then(|v| v["pid"].as_i64())
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| *p > 0);
        Ok(SandboxStatus {
            ready: status.state == api::PodSandboxState::SandboxReady as i32,
            ips,
            pid,
        })
    }

    /// The ids of every sandbox containerd knows.
    pub fn list_pods(&self) -> Result<Vec<String>> {
        let r = self.call("ListPodSandbox", |mut c| async move {
            c.list_pod_sandbox(api::ListPodSandboxRequest::default())
                .await
        })?;
        Ok(r.items.into_iter().map(|p| p.id).collect())
    }

    pub fn stop_pod(&self, id: &str) -> Result<()> {
        let request = api::StopPodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        self.call("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(request).await
        })?;
        Ok(())
    }

    pub fn remove_pod(&self, id: &str) -> Result<()> {
        let request = api::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_owned(),
        };
        self.call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(request).await
        })?;
        Ok(())
    }

    /// CreateContainer + StartContainer: a busybox that sleeps, in `sandbox`; its id.
    pub fn start_container(&self, sandbox: &Sandbox, name: &str) -> Result<String> {
        let request = api::CreateContainerRequest {
            pod_sandbox_id: sandbox.id.clone(),
            config: Some(api::ContainerConfig {
                metadata: Some(api::ContainerMetadata {
                    name: name.to_owned(),
                    attempt: 0,
                }),
                image: Some(api::ImageSpec {
                    image: IMAGE.to_owned(),
                    ..Default::default()
                }),
                command: vec![BUSYBOX.to_owned(), "sleep".into(), "2147483647".into()],
                ..Default::default()
            }),
            sandbox_config: Some(sandbox.config.clone()),
        };
        let created = self.call("CreateContainer", |mut c| async move {
            c.create_container(request).await
        })?;
        let id = created.container_id;
        let request = api::StartContainerRequest {
            container_id: id.clone(),
        };
        self.call("StartContainer", |mut c| async move {
            c.start_container(request).await
        })?;
        Ok(id)
    }

    /// ExecSync: busybox applet `argv[0]` with its arguments, in `container`.
    pub fn exec(&self, container: &str, argv: &[&str]) -> Result<Exec> {
        let request = api::ExecSyncRequest {
            container_id: container.to_owned(),
            cmd: std::iter::once(BUSYBOX)
                .chain(argv.iter().copied())
                .map(str::to_owned)
                .collect(),
            timeout: 30,
        };
        let r = self.call(
            "ExecSync",
            |mut c| async move { c.exec_sync(request).await },
        )?;
        Ok(Exec {
            exit_code: r.exit_code,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_points_every_path_into_the_node() {
        let node = crate::spec::ClusterSpec::new("x", 1).plan().nodes[0].clone();
        let l = Layout::of(&node);
        let toml = l.config_toml();
        for want in [
            format!("root = \"{}/cri/root\"", node.run_dir.display()),
            format!(
                "address = \"{}/cri/containerd.sock\"",
                node.run_dir.display()
            ),
            format!("conf_dir = \"{}\"", node.conf_dir().display()),
            format!("bin_dir = \"{}/cri/cni-bin\"", node.run_dir.display()),
            "restrict_oom_score_adj = true".into(),
            "netns_mounts_under_state_dir = true".into(),
            format!("sandbox_image = \"{IMAGE}\""),
        ] {
            assert!(toml.contains(&want), "{want} missing in\n{toml}");
        }
        assert_eq!(l.cgroup, "x-n1-cri");
    }

    #[test]
    fn the_image_archive_is_an_oci_layout_naming_the_image() {
        testkit::require::file(BUSYBOX, "busybox-static");
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("i.tar");
        write_image(&out).unwrap();
        let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let mut names = Vec::new();
        let mut index = String::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().display().to_string();
            if p == "index.json" {
                io::Read::read_to_string(&mut e, &mut index).unwrap();
            }
            names.push(p);
        }
        assert_eq!(names[..2], ["oci-layout", "index.json"]);
        assert_eq!(names.len(), 5, "{names:?}");
        let v: serde_json::Value = serde_json::from_str(&index).unwrap();
        assert_eq!(
            v["manifests"][0]["annotations"]["io.containerd.image.name"],
            IMAGE
        );
    }
}
