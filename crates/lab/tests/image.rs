//! Linen's image for real (root): the OCI archive `scripts/build-image.sh` writes
//! (scripts/test.sh builds it before the tests) is imported into a real containerd
//! (`ctr images import`); its install step runs in a container, as the DaemonSet's init
//! container does, with every capability dropped and a read-only root, against a temporary
//! host directory; and flaxd runs from the image in a lab node's network namespace, against
//! that node's OVS and the lab's etcd, and brings the node back into the overlay.
//!
//! containerd runs test-private: its root, state, sockets and runc's state live in a temp
//! dir; containerd 1.6 also writes /run/containerd whatever its config says, so it runs in a
//! mount namespace of its own with a tmpfs there, and every `ctr` call joins that namespace.
//! The namespace is a slave of the host's: the lab's network namespaces, bound under
//! /run/netns after containerd started, still show in it (with a private one, runc's
//! `setns` finds an empty file: "can't get final child's PID from pipe").
//! The guard kills the containers' shims and containerd, and removes the directory.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use common::{TestLab, alive_in, assert_nothing_left, eventually, remotes_of, tunnels_of};
use linen_lab::{Cluster, StopMode};

/// The name build-image.sh gives the image.
fn image_name() -> String {
    format!("ghcr.io/linen-cni/linen:{}", env!("CARGO_PKG_VERSION"))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The archive of this build: present, and newer than every source file of the binaries it
/// holds (an image from older sources would test old code).
fn archive() -> PathBuf {
    let path = std::env::var_os("LINEN_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace().join(format!(
                "target/image/linen-{}.oci.tar",
                env!("CARGO_PKG_VERSION")
            ))
        });
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| {
            panic!(
                "no image archive at {} ({e}): build it with ./scripts/build-image.sh \
                 (./scripts/test.sh does before the tests)",
                path.display()
            )
        });
    let newest = newest_source(&workspace().join("crates"));
    assert!(
        built >= newest,
        "{} is older than the sources: run ./scripts/build-image.sh",
        path.display()
    );
    path
}

/// The newest modification time of a `.rs` or `Cargo.toml` file under `dir`, skipping tests.
fn newest_source(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name();
            if p.is_dir() {
                if name != "tests" && name != "benches" {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "rs") || name == "Cargo.toml" {
                newest = newest.max(e.metadata().unwrap().modified().unwrap());
            }
        }
    }
    newest
}

/// A test-private containerd.
struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
}

impl Containerd {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&testkit::name("ctrd-"))
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
"#,
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = d.join("containerd.sock").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "slave", "sh", "-c"])
            .arg(
                "mkdir -p /run/containerd && mount -t tmpfs linen-test /run/containerd && \
                 exec containerd --config \"$0\"",
            )
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // Dies with the test process, however it ends (its shims are found by directory).
        let daemon = testkit::process::spawn(cmd)
            .expect("start containerd (installed by scripts/install-deps.sh)");
        let ctrd = Containerd { dir, daemon };
        eventually("containerd to serve", Duration::from_secs(20), || {
            ctrd.ctr(&["version"]).status.success().then_some(())
        });
        ctrd
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// `ctr` in containerd's mount namespace, in the test's own containerd namespace.
    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", self.daemon.id()))
            .arg("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", "linen-test"])
            .args(args)
            .output()
            .expect("run ctr")
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks first (their shims outlive containerd), then containerd, then whatever still
        // names the directory (a shim whose task could not be killed).
        let tasks = self.ctr(&["tasks", "list", "-q"]);
        for id in String::from_utf8_lossy(&tasks.stdout).lines() {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let dir = self.dir.path().to_owned();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>()
                && alive_in(pid, &dir)
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        // Mounts the snapshotter left (rootfs of killed containers).
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let d = dir.to_string_lossy();
        for m in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
            if m.starts_with(d.as_ref()) {
                let _ = Command::new("umount").args(["-l", m]).status();
            }
        }
    }
}

/// The least-privilege options of deploy/linen.yaml: no capability (ctr takes no `ALL`: each
/// of containerd's default set, named), read-only root.
const LEAST: [&str; 29] = [
    "--read-only",
    "--cap-drop",
    "CAP_CHOWN",
    "--cap-drop",
    "CAP_DAC_OVERRIDE",
    "--cap-drop",
    "CAP_FSETID",
    "--cap-drop",
    "CAP_FOWNER",
    "--cap-drop",
    "CAP_MKNOD",
    "--cap-drop",
    "CAP_NET_RAW",
    "--cap-drop",
    "CAP_SETGID",
    "--cap-drop",
    "CAP_SETUID",
    "--cap-drop",
    "CAP_SETFCAP",
    "--cap-drop",
    "CAP_SETPCAP",
    "--cap-drop",
    "CAP_NET_BIND_SERVICE",
    "--cap-drop",
    "CAP_SYS_CHROOT",
    "--cap-drop",
    "CAP_KILL",
    "--cap-drop",
    "CAP_AUDIT_WRITE",
];

#[test]
fn the_image_imports_installs_the_plugins_and_runs_flaxd_on_a_lab_node() {
    let archive = archive();
    let ctrd = Containerd::start();
    let imported = ctrd.ctr_ok(&["images", "import", &archive.to_string_lossy()]);
    assert!(imported.contains(&image_name()), "{imported}");
    let listed = ctrd.ctr_ok(&["images", "list", "-q"]);
    assert_eq!(listed.trim(), image_name());

    // The install step, as the init container runs it.
    let host = testkit::tempdir().unwrap();
    let bin = host.path().join("opt/cni/bin");
    let conf = host.path().join("etc/cni/net.d");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    // An older plugin already installed: replaced, not written into.
    std::fs::write(bin.join("linen"), b"old").unwrap();
    let old_inode =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(bin.join("linen")).unwrap());
    let mount = |src: &Path, dst: &str| {
        format!("type=bind,src={},dst={dst},options=rbind:rw", src.display())
    };
    let (m_bin, m_conf) = (
        mount(&bin, "/host/opt/cni/bin"),
        mount(&conf, "/host/etc/cni/net.d"),
    );
    let mut args = vec!["run", "--rm"];
    args.extend(LEAST);
    args.extend(["--mount", &m_bin, "--mount", &m_conf]);
    let name = image_name();
    args.extend([
        name.as_str(),
        "linen-install-test",
        "/usr/local/bin/linen-install",
    ]);
    let out = ctrd.ctr(&args);
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "install step: {said}");
    let mut installed: Vec<String> = std::fs::read_dir(&bin)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    installed.sort();
    assert_eq!(
        installed,
        ["bridge", "host-local", "linen", "loopback", "portmap"],
        "{said}"
    );
    for p in &installed {
        let meta = std::fs::metadata(bin.join(p)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755, "{p}");
    }
    assert_ne!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(bin.join("linen")).unwrap()),
        old_inode,
        "the old plugin was replaced by a rename"
    );
    // The installed plugin is the static one, and it answers.
    let elf = std::fs::read(bin.join("linen")).unwrap();
    assert!(!has_interp(&elf), "linen in the image has a dynamic loader");
    let version = Command::new(bin.join("linen"))
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("\"1.1.0\""),
        "{version:?}"
    );
    // No conflist: flaxd writes it when the node is ready.
    assert_eq!(std::fs::read_dir(&conf).unwrap().count(), 0);

    // flaxd from the image, on node n2 of an etcd lab.
    let lab = TestLab::new();
    let mut cluster = Cluster::up(lab.etcd_spec(2, 1, 3)).expect("up");
    let state = cluster.state().clone();
    let (n1, n2) = (
        state.node("n1").unwrap().clone(),
        state.node("n2").unwrap().clone(),
    );
    let etcd = state.etcd.clone().expect("an etcd lab");
    cluster
        .stop_flaxd("n2", StopMode::Crash)
        .expect("stop n2's own flaxd");
    // Take n2 apart so only a working flaxd can put it back: its tunnel and its conflist.
    let tunnel = tunnels_of(&n2)[&std::net::IpAddr::from(n1.underlay_ip.addr())]
        .port
        .clone();
    common::run(n2.ovs().vsctl().args(["del-port", "br0", &tunnel]));
    std::fs::remove_file(n2.conflist_path()).unwrap();

    let flaxd_args = linen_lab::flaxd::args(&n2, &etcd);
    let ovs_dir = n2.ovsdb_socket.parent().unwrap().to_owned();
    let conf_dir = n2.conflist_path().parent().unwrap().to_owned();
    let netns = format!("network:{}", n2.netns_path.display());
    let log = format!("file://{}", ctrd.dir.path().join("flaxd.log").display());
    let (m_ovs, m_conf) = (
        mount(&ovs_dir, &ovs_dir.to_string_lossy()),
        mount(&conf_dir, &conf_dir.to_string_lossy()),
    );
    // The etcd CA certificate alone (read-only; the CA's key next to it stays outside, as
    // a cluster's Secret holds only ca.pem). The node's client certificate and key are in
    // the node's directory, mounted above.
    let ca = etcd.pki().ca_cert();
    let m_ca = format!("type=bind,src={0},dst={0},options=rbind:ro", ca.display());
    let mut args = vec!["run", "-d", "--log-uri", &log, "--with-ns", &netns];
    args.extend(LEAST);
    // As deploy/linen.yaml: CAP_NET_ADMIN only, for the egress masquerade (nft).
    args.extend(["--cap-add", "CAP_NET_ADMIN"]);
    args.extend(["--mount", &m_ovs, "--mount", &m_conf, "--mount", &m_ca]);
    args.extend([name.as_str(), "flaxd-test", "/usr/local/bin/flaxd"]);
    args.extend(flaxd_args.iter().map(String::as_str));
    ctrd.ctr_ok(&args);
    // The task really runs with CAP_NET_ADMIN (bit 12) and no other capability.
    let tasks = ctrd.ctr_ok(&["tasks", "list"]);
    let pid: i32 = tasks
        .lines()
        .find(|l| l.starts_with("flaxd-test "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no flaxd-test task: {tasks}"));
    let log_text =
        || std::fs::read_to_string(ctrd.dir.path().join("flaxd.log")).unwrap_or_default();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| {
        panic!(
            "flaxd-test task {pid} is gone ({e}); its log:\n{}",
            log_text()
        )
    });
    for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
        let caps = status
            .lines()
            .find_map(|l| l.strip_prefix(set))
            .unwrap()
            .trim();
        assert_eq!(caps, "0000000000001000", "{set} of flaxd in the container");
    }

    let ip1 = n1.underlay_ip.addr().to_string();
    let ip2 = n2.underlay_ip.addr().to_string();
    eventually(
        "flaxd from the image to restore n2's tunnel",
        Duration::from_secs(20),
        || remotes_of(&n2).contains(&ip1).then_some(()),
    );
    eventually(
        "flaxd from the image to write n2's conflist",
        Duration::from_secs(20),
        || n2.conflist_path().exists().then_some(()),
    );
    eventually(
        "n1 to keep or regain its tunnel to n2",
        Duration::from_secs(20),
        || remotes_of(&n1).contains(&ip2).then_some(()),
    );
    eventually(
        "flaxd from the image to be healthy",
        Duration::from_secs(20),
        || (n2.flaxd_health() == linen_lab::flaxd::Health::Healthy).then_some(()),
    );
    // The image's nft works: flaxd's masquerade table is in n2's namespace, and flaxd says so.
    let (_, metrics) = n2
        .netns
        .http_get(n2.metrics_addr(), "/metrics", Duration::from_secs(5))
        .expect("flaxd's metrics");
    assert!(
        metrics.contains("flaxd_ip_masq_rules_ok 1"),
        "{metrics}\nflaxd log:\n{}",
        log_text()
    );
    let tables = common::run(n2.netns.command("nft").args(["list", "tables"]));
    assert!(tables.contains("table inet linen"), "{tables}");
    // The kit's matrix (each pair retried until one deadline), with flaxd's log on failure.
    let matrix = common::ping_matrix(&state);
    assert!(
        matrix.passed(),
        "{}\nflaxd log:\n{}",
        matrix.render(),
        log_text()
    );
    // Logs for a collector: no ANSI colour codes in a container's log.
    let text = log_text();
    assert!(text.contains("flaxd starting"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI codes in the container log: {text}"
    );

    ctrd.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "flaxd-test"]);
    eventually("the flaxd task to stop", Duration::from_secs(10), || {
        ctrd.ctr(&["tasks", "delete", "flaxd-test"])
            .status
            .success()
            .then_some(())
    });
    ctrd.ctr_ok(&["containers", "delete", "flaxd-test"]);
    cluster.down().expect("down");
    drop(cluster);
    drop(ctrd);
    assert_nothing_left(&lab);
}

/// True if the ELF file has a PT_INTERP program header (it needs a dynamic loader).
fn has_interp(elf: &[u8]) -> bool {
    assert!(
        elf.len() > 64 && &elf[..4] == b"\x7fELF" && elf[4] == 2,
        "a 64-bit ELF"
    );
    let u = |at: usize, n: usize| {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&elf[at..at + n]);
        u64::from_le_bytes(b) as usize
    };
    let (phoff, phentsize, phnum) = (u(0x20, 8), u(0x36, 2), u(0x38, 2));
    (0..phnum).any(|i| u(phoff + i * phentsize, 4) == 3)
}
