//! Shared helpers for the lab's integration tests: a unique lab per test (a
//! random name and its own temp directory), and checks that nothing is left.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use linen_lab::overlay::Tunnel;
use linen_lab::{ClusterSpec, Daemon, Membership, Node, netns};

/// A lab name no other test (or run) uses, and a temp directory for it.
pub struct TestLab {
    pub name: String,
    pub root: tempfile::TempDir,
}

impl TestLab {
    pub fn new() -> Self {
        init_tracing();
        require_this_build();
        Self {
            name: testkit::unique_name(),
            root: testkit::tempdir().expect("temp dir"),
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.root.path().join(&self.name)
    }

    /// Nodes only; tests that want pods set `pods_per_node`.
    pub fn spec(&self, nodes: usize) -> ClusterSpec {
        ClusterSpec {
            dir: Some(self.dir()),
            pods_per_node: 0,
            ..ClusterSpec::new(&self.name, nodes)
        }
    }

    /// An etcd lab (a flaxd per node) of `nodes` nodes, `pods` pods each,
    /// flaxd's lease TTL `ttl` seconds.
    pub fn etcd_spec(&self, nodes: usize, pods: u16, ttl: u32) -> ClusterSpec {
        ClusterSpec {
            membership: Membership::Etcd,
            lease_ttl: ttl,
            pods_per_node: pods,
            ..self.spec(nodes)
        }
    }

    /// Namespaces whose name starts with `<lab>-`.
    pub fn namespaces(&self) -> Vec<String> {
        let prefix = format!("{}-", self.name);
        netns::list()
            .expect("list namespaces")
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect()
    }

    /// Asserts no namespace, no process from `pids`, and no directory is left.
    pub fn assert_gone(&self, pids: &[i32]) {
        assert_eq!(self.namespaces(), Vec::<String>::new(), "namespaces left");
        let listed = run(Command::new("ip").args(["netns", "list"]));
        assert!(
            !listed.contains(&format!("{}-", self.name)),
            "ip netns list still shows the lab:\n{listed}"
        );
        for pid in pids {
            assert!(!alive_in(*pid, &self.dir()), "process {pid} still alive");
        }
        assert!(!self.dir().exists(), "lab directory left");
    }
}

impl Drop for TestLab {
    /// Best effort if an assertion failed half-way: leave nothing behind.
    fn drop(&mut self) {
        let _ = linen_lab::down(&self.name, &self.dir());
    }
}

/// Refuses (panics) when the `linen` the lab would run, or a `flaxd` it finds, is installed
/// in a system directory or older than its sources: the test would pass on old code.
pub fn require_this_build() {
    let dirs = linen_lab::pod::plugin_dirs().unwrap_or_else(|e| panic!("{e}"));
    testkit::binary::require_fresh_build(&dirs[0].join("linen"), testkit::binary::LINEN_CRATES);
    if let Ok(flaxd) = linen_lab::flaxd::binary() {
        testkit::binary::require_fresh_build(&flaxd, testkit::binary::FLAXD_CRATES);
    }
}

/// Pids from the node's pid files, both daemons.
pub fn ovs_pids(node: &Node) -> Vec<i32> {
    let ovs = node.ovs();
    Daemon::ALL
        .iter()
        .map(|d| {
            std::fs::read_to_string(ovs.pid_file(*d))
                .expect("pid file")
                .trim()
                .parse()
                .expect("pid")
        })
        .collect()
}

/// True if `pid` is a live, non-zombie process whose command line mentions `dir`.
pub fn alive_in(pid: i32, dir: &Path) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .next();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !matches!(state, None | Some("Z" | "X"))
        && String::from_utf8_lossy(&cmdline).contains(dir.to_string_lossy().as_ref())
}

/// Runs `cmd`, panicking with its stderr on failure; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "linen_lab=info".into()),
        )
        .try_init();
}

/// Nothing of the lab anywhere on the host: no named namespace, no mount of
/// one, no process whose command line names the lab's directory or names.
pub fn assert_nothing_left(lab: &TestLab) {
    assert_eq!(lab.namespaces(), Vec::<String>::new(), "namespaces left");
    let mounts = std::fs::read_to_string("/proc/mounts").expect("mounts");
    let prefix = format!("/netns/{}-", lab.name);
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&prefix)).collect();
    assert!(left.is_empty(), "netns mounts left: {left:?}");
    let dir = lab.dir().to_string_lossy().into_owned();
    let name = format!("{}-", lab.name);
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(
            !cmdline.contains(&dir) && !cmdline.contains(&name),
            "process {pid} left: {cmdline}"
        );
    }
    assert!(!lab.dir().exists(), "lab directory left");
}

/// `linen-lab SUB --name <lab> --dir <dir> ARGS...`.
pub fn lab_cli(lab: &TestLab, args: &[&str]) -> std::process::Output {
    lab_cli_env(lab, args, &[])
}

/// As [`lab_cli`], with extra environment variables.
pub fn lab_cli_env(lab: &TestLab, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let (sub, rest) = args.split_first().expect("subcommand");
    Command::new(env!("CARGO_BIN_EXE_linen-lab"))
        .arg(sub)
        .args(["--name", &lab.name, "--dir"])
        .arg(lab.dir())
        .args(rest)
        .envs(env.iter().copied())
        .output()
        .expect("run linen-lab")
}

/// Stdout of a successful run; panics with stderr otherwise.
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr of a run that failed cleanly; panics if it succeeded or panicked (a Rust panic
/// exits 101 and says "panicked" on stderr): bad use gets a message, never a panic.
pub fn fails(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.status.code() != Some(101) && !stderr.contains("panicked"),
        "failed by panicking ({}): {stderr}",
        out.status
    );
    stderr
}

#[allow(unused_imports)] // Each test binary uses a subset.
pub use testkit::eventually;

/// How long every pair of a ping matrix has to answer: one deadline for the whole matrix,
/// so a real failure costs this once, not once per pair.
pub const PING_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

/// The ping matrix of `state`'s wired pods, each pair retried until it answers or the
/// matrix's deadline ([`PING_WINDOW`]) passes: a lost first packet on a busy machine is not
/// a failure, a path that never opens is.
pub fn ping_matrix(state: &linen_lab::LabState) -> linen_lab::ping::Matrix {
    let deadline = std::time::Instant::now() + PING_WINDOW;
    let pods: Vec<linen_lab::Pod> = state.wired_pods().cloned().collect();
    linen_lab::ping::run_pairs(pods, |pod, ip| {
        let mut attempts = 0;
        testkit::try_eventually(
            format!("{} to answer {ip}", pod.name),
            deadline.saturating_duration_since(std::time::Instant::now()),
            || {
                attempts += 1;
                linen_lab::ping::ping(pod, ip, 1).map(|_| attempts)
            },
        )
        .ok()
    })
}

/// Asserts the whole ping matrix passes within [`PING_WINDOW`]; returns it.
pub fn pings_pass(state: &linen_lab::LabState) -> linen_lab::ping::Matrix {
    let matrix = ping_matrix(state);
    println!("{}", matrix.render());
    assert!(matrix.passed(), "{}", matrix.render());
    matrix
}

/// Linen's tunnels on `node` by remote address (empty without a bridge).
pub fn tunnels_of(node: &Node) -> std::collections::BTreeMap<std::net::IpAddr, Tunnel> {
    linen_lab::overlay::tunnels(node)
        .unwrap_or_else(|e| panic!("{}: {}", node.name, linen_lab::error_chain(&e)))
        .unwrap_or_default()
        .into_iter()
        .map(|t| (t.remote, t))
        .collect()
}

/// The remotes of `node`'s tunnels, as strings.
pub fn remotes_of(node: &Node) -> Vec<String> {
    tunnels_of(node).keys().map(ToString::to_string).collect()
}

/// `nft list table inet linen` in the node (flaxd's masquerade table), `None` when there is
/// no such table.
pub fn linen_table(node: &Node) -> Option<String> {
    let out = node
        .netns
        .command("nft")
        .args(["list", "table", "inet", "linen"])
        .output()
        .expect("run nft");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
