//! A real container runtime on a Linen network (root): podman 4.3 (libcni)
//! runs a busybox container inside lab node 1 on the node's own conflist;
//! the container gets its address from bridge + host-local, its MTU from
//! linen, pings a pod on node 2 across the VXLAN overlay, and on `--rm`
//! podman's CNI DEL releases its address.
//!
//! Nothing of podman's leaks onto the machine: its config, storage, run
//! root, tmp dir, locks (file locks) and runc's state (a wrapper pins
//! `runc --root`) live in a temp dir; libcni's cache (/var/lib/cni) and the
//! image blob cache (/var/lib/containers/cache) have no knob in podman 4.3,
//! so podman runs in a private mount namespace with a tmpfs over /var/lib.
//! It enters only the node's network namespace (`nsenter --net`): `ip netns
//! exec` remounts /sys and podman then finds no cgroup mount.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{TestLab, assert_nothing_left, run};
use linen_lab::{Cluster, ClusterSpec, Node, conflist};

const IMAGE: &str = "localhost/linen-lab-bb:1";
/// Host paths podman or runc would create if not redirected.
const GLOBAL_PATHS: [&str; 4] = [
    "/var/lib/cni",
    "/var/lib/containers",
    "/run/runc",
    "/dev/shm/libpod_lock",
];

/// Fails the test, naming what is missing, unless every tool it runs is installed.
fn require_tools() {
    testkit::require::root();
    testkit::require::file("/usr/bin/podman", "podman");
    testkit::require::file("/usr/sbin/runc", "runc");
    testkit::require::file("/bin/busybox", "busybox-static");
    testkit::require::file("/usr/bin/unshare", "util-linux");
    testkit::require::file("/usr/bin/nsenter", "util-linux");
}

/// A test-private podman: every file it writes is under `dir`, removed on drop.
struct Podman {
    dir: tempfile::TempDir,
    /// podman's cgroups (its container's and conmon's, which podman 4.3 leaves
    /// behind) go under this test-owned parent, removed on drop.
    cgroups: testkit::cgroup::Guard,
}

impl Podman {
    /// Config for a Linen network `conflist` (file name) in `net.d`, plugins
    /// from `plugin_dirs`, and a busybox image tarball to import.
    fn new(conflist: &serde_json::Value, plugin_dirs: &[PathBuf]) -> Self {
        let podman = Podman {
            dir: testkit::tempdir().expect("temp dir"),
            cgroups: testkit::cgroup::Guard::new(testkit::name("podman")),
        };
        let d = podman.dir.path();
        for sub in ["net.d", "root", "runroot", "tmp", "runc", "rootfs/bin"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::fs::write(
            d.join("net.d").join(conflist::FILE_NAME),
            serde_json::to_vec_pretty(conflist).unwrap(),
        )
        .unwrap();
        let dirs: Vec<String> = plugin_dirs
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        let runc = d.join("runc-wrapper");
        std::fs::write(
            &runc,
            format!(
                "#!/bin/sh\nexec /usr/sbin/runc --root={} \"$@\"\n",
                d.join("runc").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&runc, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let conf = format!(
            r#"[network]
network_backend = "cni"
cni_plugin_dirs = [{dirs}]
network_config_dir = "{netd}"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
tmp_dir = "{tmp}"
lock_type = "file"
image_copy_tmp_dir = "{tmp}"

[engine.runtimes]
runc = ["{runc}"]
"#,
            dirs = dirs.join(", "),
            netd = d.join("net.d").display(),
            tmp = d.join("tmp").display(),
            runc = runc.display(),
        );
        std::fs::write(d.join("containers.conf"), conf).unwrap();

        // The image: busybox-static and its applet links, no registry.
        let rootfs = d.join("rootfs");
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        let applets = run(Command::new("/bin/busybox").arg("--list"));
        for applet in applets.lines().filter(|a| *a != "busybox") {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        run(Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(d.join("rootfs.tar"))
            .arg("."));
        podman
    }

    /// `podman` with every path pointed into the temp dir.
    fn podman(&self) -> String {
        let d = self.dir.path().display();
        format!(
            "podman --root {d}/root --runroot {d}/runroot --tmpdir {d}/tmp --storage-driver vfs"
        )
    }

    /// Runs `script` (sh, `$PODMAN` is podman) in `node`'s network namespace
    /// and a private mount namespace with a tmpfs over /var/lib.
    fn script(&self, node: &Node, script: &str) -> Output {
        let body = format!(
            "set -e\nmount -t tmpfs linen-lab-podman /var/lib\nPODMAN=\"{}\"\n{script}",
            self.podman()
        );
        Command::new("nsenter")
            .arg(format!("--net={}", node.netns_path.display()))
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(body)
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .output()
            .expect("run podman")
    }

    fn import_and_run(&self, node: &Node, command: &str) -> Output {
        let tar = self.dir.path().join("rootfs.tar");
        self.script(
            node,
            &format!(
                "$PODMAN import {tar} {IMAGE} >/dev/null\n\
                 $PODMAN run --rm --network {net} --cap-add NET_RAW --cgroup-parent {cg} \
                 --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 {IMAGE} /bin/sh -c '{command}'",
                tar = tar.display(),
                net = conflist::NETWORK_NAME,
                cg = self.cgroups.parent(),
            ),
        )
    }
}

/// The addresses host-local has handed out on `node`.
fn leases(node: &Node) -> Vec<String> {
    let dir = node.ipam_dir().join(conflist::NETWORK_NAME);
    std::fs::read_dir(dir)
        .map(|e| {
            e.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("10."))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn podman_container_on_a_linen_network_pings_a_pod_on_another_node() {
    require_tools();
    let absent_before: Vec<&str> = GLOBAL_PATHS
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    // podman's default cgroup parent, where a leak would land if the test's were ignored.
    let default_cgroups_before = testkit::cgroup::existing("libpod_parent");
    let lab = TestLab::new();
    let mut cluster = Cluster::up(ClusterSpec {
        pods_per_node: 1,
        ..lab.spec(2)
    })
    .expect("up");
    let state = cluster.state().clone();
    let n1 = &state.nodes[0];
    let target = state
        .pods_on(2)
        .next()
        .expect("pod on n2")
        .ip
        .unwrap()
        .addr();
    let pods_before = leases(n1);

    let podman = Podman::new(
        &n1.conflist(&state),
        &linen_lab::pod::plugin_dirs().expect("plugin dirs"),
    );
    let out = podman.import_and_run(
        n1,
        &format!(
            "ip -4 -o addr show eth0; echo mtu=$(cat /sys/class/net/eth0/mtu); ip route; \
             for i in 1 2 3; do ping -c1 -W1 {target} && exit 0; done; exit 1"
        ),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "podman run failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    println!("{stdout}");
    // Its address comes from node 1's slice of the cluster subnet...
    let inet = stdout
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no address in:\n{stdout}"));
    let ip: linen_lab::ipnet::Ipv4Net = inet.parse().expect("address");
    assert!(n1.pods.node_cidr.contains(&ip.addr()), "{ip}");
    assert_eq!(ip.prefix_len(), 16);
    assert!(!pods_before.contains(&ip.addr().to_string()));
    // ...its MTU from linen, its default route via the node's gateway...
    assert!(stdout.contains("mtu=1450"), "{stdout}");
    assert!(
        stdout.contains(&format!("default via {}", n1.pods.gateway)),
        "{stdout}"
    );
    // ...and it reached the pod on node 2 across the overlay.
    assert!(stdout.contains("1 packets received"), "{stdout}");

    // `--rm` ran CNI DEL through the chain: host-local released the address.
    assert_eq!(leases(n1), pods_before);
    // Its cgroups went where the test told podman to put them, and nowhere else...
    let cgroup = podman.cgroups.name().to_owned();
    assert!(
        !testkit::cgroup::existing(&cgroup).is_empty(),
        "podman made no cgroup under /{cgroup}"
    );
    assert_eq!(
        testkit::cgroup::existing("libpod_parent"),
        default_cgroups_before
    );
    // ...and the guard removed them (podman 4.3 leaves conmon's).
    drop(podman);
    assert!(
        testkit::cgroup::existing(&cgroup).is_empty(),
        "{:?}",
        testkit::cgroup::existing(&cgroup)
    );
    for path in absent_before {
        assert!(!Path::new(path).exists(), "podman left {path} on the host");
    }
    cluster.down().expect("down");
    assert_nothing_left(&lab);
}
