//! One Open vSwitch instance (ovsdb-server + ovs-vswitchd) per node, inside the
//! node's network namespace, with everything it writes in its own run directory.
//!
//! File names follow OVS's defaults (`ovs-vswitchd.pid`, `db.sock`, unixctl
//! sockets `<daemon>.<pid>.ctl`) rather than custom ones, so that setting
//! `OVS_RUNDIR=<run dir>` is enough for plain `ovs-vsctl` and `ovs-appctl` to
//! reach this node's OVS. The same variable keeps ovs-vswitchd's per-bridge
//! `<bridge>.mgmt` / `.snoop` sockets apart: every node has a `br-phy`, and
//! without it they would all collide in `/var/run/openvswitch`.

use std::fs;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use thiserror::Error;

use crate::cmd::{self, CmdError, command};
use crate::netns::Netns;
use crate::process::{self, Proof};
use crate::wait::{self, Timeout};

/// The OVSDB schema shipped by Debian's openvswitch-common.
pub const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

const START_TIMEOUT: Duration = Duration::from_secs(20);
const TERM_GRACE: Duration = Duration::from_secs(5);
const KILL_GRACE: Duration = Duration::from_secs(2);
/// `sockaddr_un.sun_path` holds 108 bytes including the NUL.
const MAX_SOCKET_PATH: usize = 100;

#[derive(Debug, Error)]
pub enum Error {
    #[error("create OVS run directory {dir}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "socket path {path} is {len} bytes, longer than a unix socket allows; choose a shorter lab directory"
    )]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("{step} for the OVS in {dir}")]
    Command {
        step: &'static str,
        dir: PathBuf,
        #[source]
        source: CmdError,
    },
    #[error("{daemon} in {dir} did not become ready (see {log})")]
    NotReady {
        daemon: &'static str,
        dir: PathBuf,
        log: PathBuf,
        #[source]
        source: Timeout,
    },
    #[error("stop {daemon} (pid {pid}) of {dir}")]
    Stop {
        daemon: &'static str,
        pid: i32,
        dir: PathBuf,
        #[source]
        source: Timeout,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The two OVS daemons of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Daemon {
    OvsdbServer,
    Vswitchd,
    /// A real OpenFlow controller (Debian's `ovs-testcontroller`, a learning switch) on the
    /// node's loopback, with `linen-lab up --controller`. Not in [`Daemon::ALL`]: a node
    /// without one is whole.
    Controller,
}

/// Where a node's controller listens, inside the node's namespace.
pub const CONTROLLER_PORT: u16 = 6653;

/// The OVS controller target of a node's controller (the same on every node).
pub fn controller_target() -> String {
    format!("tcp:127.0.0.1:{CONTROLLER_PORT}")
}

impl Daemon {
    /// The daemons every node runs.
    pub const ALL: [Daemon; 2] = [Daemon::Vswitchd, Daemon::OvsdbServer];

    /// The program name, which is also the stem of its pid file and unixctl socket.
    pub fn name(self) -> &'static str {
        match self {
            Daemon::OvsdbServer => "ovsdb-server",
            Daemon::Vswitchd => "ovs-vswitchd",
            Daemon::Controller => "ovs-testcontroller",
        }
    }

    /// Its `/proc/PID/comm`: the name, cut to the kernel's 15 bytes.
    pub fn comm(self) -> &'static str {
        let name = self.name();
        &name[..name.len().min(15)]
    }
}

/// A node's OVS: its namespace and its run directory. Holds no process handle;
/// the pid files in the run directory are the record of what runs.
#[derive(Clone, Debug)]
pub struct Ovs {
    netns: Netns,
    dir: PathBuf,
}

impl Ovs {
    /// A handle to the OVS whose run directory is `dir`; starts nothing.
    pub fn new(netns: Netns, dir: impl Into<PathBuf>) -> Self {
        Self {
            netns,
            dir: dir.into(),
        }
    }

    /// Creates the database and starts ovsdb-server and ovs-vswitchd inside
    /// the namespace, returning once both answer on their control sockets.
    /// Not idempotent over a running instance: the caller owns a fresh `dir`.
    pub fn start(netns: Netns, dir: impl Into<PathBuf>) -> Result<Self> {
        let ovs = Self::new(netns, dir);
        fs::create_dir_all(&ovs.dir).map_err(|source| Error::CreateDir {
            dir: ovs.dir.clone(),
            source,
        })?;
        let sock = ovs.db_socket();
        let len = sock.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(Error::SocketPathTooLong { path: sock, len });
        }
        let db = ovs.dir.join("conf.db");
        if !db.exists() {
            ovs.run(
                "create the OVS database",
                &mut command(
                    "ovsdb-tool",
                    ["create".as_ref(), db.as_os_str(), SCHEMA.as_ref()],
                ),
            )?;
        }

        ovs.start_ovsdb_server()?;
        ovs.run(
            "initialise the database",
            ovs.vsctl().args(["--no-wait", "init"]),
        )?;

        ovs.start_vswitchd()?;
        tracing::info!(netns = ovs.netns.name(), dir = %ovs.dir.display(), "OVS up");
        Ok(ovs)
    }

    /// Starts ovsdb-server inside the namespace over the existing database and
    /// returns once it accepts connections on its socket. Used by [`Ovs::start`]
    /// and to restart a crashed one: the configuration is the database file, so
    /// nothing is lost; ovs-vswitchd keeps forwarding meanwhile and reconnects.
    pub fn start_ovsdb_server(&self) -> Result<()> {
        let sock = self.db_socket();
        let mut server = self.in_netns(Daemon::OvsdbServer.name());
        server.arg(self.dir.join("conf.db")).args([
            format!("--remote=punix:{}", sock.display()),
            format!("--pidfile={}", self.pid_file(Daemon::OvsdbServer).display()),
            format!(
                "--log-file={}",
                self.log_file(Daemon::OvsdbServer).display()
            ),
            "--detach".into(),
        ]);
        self.run("start ovsdb-server", &mut server)?;
        self.await_ready(Daemon::OvsdbServer, || UnixStream::connect(&sock).is_ok())
    }

    /// Starts ovs-vswitchd inside the namespace (ovsdb-server runs) and
    /// returns once it answers. Used by [`Ovs::start`] and to restart a
    /// crashed one: it rebuilds every bridge and port from the database, and
    /// the tap devices of internal ports, being persistent, keep their
    /// addresses and Linux bridge attachment across the crash.
    pub fn start_vswitchd(&self) -> Result<()> {
        let mut vswitchd = self.in_netns(Daemon::Vswitchd.name());
        vswitchd.arg(self.db_url()).args([
            format!("--pidfile={}", self.pid_file(Daemon::Vswitchd).display()),
            format!("--log-file={}", self.log_file(Daemon::Vswitchd).display()),
            "--detach".into(),
        ]);
        self.run("start ovs-vswitchd", &mut vswitchd)?;
        self.await_ready(Daemon::Vswitchd, || self.answers(Daemon::Vswitchd))
    }

    /// Starts the node's OpenFlow controller (`ovs-testcontroller`, listening on
    /// [`controller_target`] inside the namespace) and returns once it listens.
    pub fn start_controller(&self) -> Result<()> {
        self.run(
            "bring up the node's loopback",
            self.netns.command("ip").args(["link", "set", "lo", "up"]),
        )?;
        let daemon = Daemon::Controller;
        let mut ctl = self.in_netns(daemon.name());
        ctl.args([
            format!("ptcp:{CONTROLLER_PORT}:127.0.0.1"),
            format!("--pidfile={}", self.pid_file(daemon).display()),
            format!("--log-file={}", self.log_file(daemon).display()),
            // Without it, it tries /var/run/openvswitch whatever OVS_RUNDIR says.
            format!("--unixctl={}", self.control_socket(daemon).display()),
            "--detach".into(),
        ]);
        self.run("start ovs-testcontroller", &mut ctl)?;
        self.await_ready(daemon, || self.answers(daemon))
    }

    /// SIGKILLs `daemon`, as a crash would (no cleanup of its own), and
    /// waits until it is gone: the pidfile's process and any other instance of
    /// this node's `daemon` (one the pidfile does not name, e.g. read while it was
    /// being rewritten), so that a daemon started next finds its pidfile unlocked
    /// (the kernel drops the lock when the holder exits). Not running is success.
    pub fn kill(&self, daemon: Daemon) -> Result<()> {
        let proof = Proof {
            comm: daemon.comm(),
            dir: &self.dir,
        };
        let mut pids = proof.find_all();
        if let Some(p) = self.pid(daemon).filter(|p| !pids.contains(p)) {
            pids.push(p);
        }
        for pid in pids {
            process::stop(Some(pid), proof, Signal::SIGKILL, KILL_GRACE).map_err(|e| match e {
                process::Error::Stop { pid, source, .. } => Error::Stop {
                    daemon: daemon.name(),
                    pid,
                    dir: self.dir.clone(),
                    source,
                },
                other => unreachable!("stop only times out: {other}"),
            })?;
        }
        Ok(())
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn db_socket(&self) -> PathBuf {
        self.dir.join("db.sock")
    }

    /// `unix:<run dir>/db.sock`, the OVSDB remote of this node.
    pub fn db_url(&self) -> String {
        format!("unix:{}", self.db_socket().display())
    }

    pub fn pid_file(&self, daemon: Daemon) -> PathBuf {
        self.dir.join(format!("{}.pid", daemon.name()))
    }

    pub fn log_file(&self, daemon: Daemon) -> PathBuf {
        self.dir.join(format!("{}.log", daemon.name()))
    }

    /// The environment that points OVS tools at this instance.
    pub fn env(&self) -> [(&'static str, &Path); 3] {
        [
            ("OVS_RUNDIR", &self.dir),
            ("OVS_LOGDIR", &self.dir),
            ("OVS_DBDIR", &self.dir),
        ]
    }

    /// `ip netns exec NS PROGRAM` with this instance's environment.
    pub fn in_netns(&self, program: &str) -> Command {
        let mut cmd = self.netns.command(program);
        cmd.envs(self.env());
        cmd
    }

    // TODO: use crates/ovsdb for the lab's own OVSDB writes once it lands;
    // ovs-vsctl costs ~10 ms a call, acceptable for harness setup only.
    /// `ovs-vsctl --db=unix:<sock> --timeout=10`: bounded even if vswitchd dies
    /// while ovs-vsctl waits for it to apply a change.
    pub fn vsctl(&self) -> Command {
        let mut cmd = command(
            "ovs-vsctl",
            [format!("--db={}", self.db_url()), "--timeout=10".into()],
        );
        cmd.envs(self.env());
        cmd
    }

    /// `ovs-appctl -t <daemon>` resolved through `OVS_RUNDIR` (the controller's by path).
    pub fn appctl(&self, daemon: Daemon) -> Command {
        let target = match daemon {
            Daemon::Controller => self.control_socket(daemon).display().to_string(),
            _ => daemon.name().to_owned(),
        };
        let mut cmd = command(
            "ovs-appctl",
            ["--timeout=2".to_owned(), "-t".into(), target],
        );
        cmd.envs(self.env());
        cmd
    }

    /// The unixctl socket of the controller (OVS's daemons name theirs by pid).
    pub fn control_socket(&self, daemon: Daemon) -> PathBuf {
        self.dir.join(format!("{}.ctl", daemon.name()))
    }

    /// True when `daemon` answers `version` on its unixctl socket.
    pub fn answers(&self, daemon: Daemon) -> bool {
        cmd::succeeds(self.appctl(daemon).arg("version"))
    }

    /// The pid of `daemon` if its pid file names a live process of ours.
    pub fn pid(&self, daemon: Daemon) -> Option<i32> {
        let pid = read_pid(&self.pid_file(daemon))?;
        is_ours(pid, daemon, &self.dir).then_some(pid)
    }

    /// Stops the daemons (the controller too, if it runs): SIGTERM, then SIGKILL after a
    /// bounded wait. Idempotent: missing pid files and dead processes are success.
    pub fn stop(&self) -> Result<()> {
        let mut first_err = None;
        for daemon in [Daemon::Controller].into_iter().chain(Daemon::ALL) {
            if let Err(e) = self.stop_daemon(daemon)
                && first_err.is_none()
            {
                first_err = Some(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn stop_daemon(&self, daemon: Daemon) -> Result<()> {
        let Some(pid) = self.pid(daemon) else {
            return Ok(());
        };
        let gone = || (!is_ours(pid, daemon, &self.dir)).then_some(());
        let what = format!("{} (pid {pid}) to exit", daemon.name());
        // ESRCH from kill means it exited between the check and the signal.
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        if wait::until(&what, TERM_GRACE, gone).is_ok() {
            tracing::debug!(daemon = daemon.name(), pid, "stopped");
            return Ok(());
        }
        tracing::warn!(
            daemon = daemon.name(),
            pid,
            "ignored SIGTERM, sending SIGKILL"
        );
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        wait::until(&what, KILL_GRACE, gone).map_err(|source| Error::Stop {
            daemon: daemon.name(),
            pid,
            dir: self.dir.clone(),
            source,
        })
    }

    fn await_ready(&self, daemon: Daemon, mut ready: impl FnMut() -> bool) -> Result<()> {
        let what = format!("{} to answer", daemon.name());
        wait::until(what, START_TIMEOUT, || ready().then_some(())).map_err(|source| {
            Error::NotReady {
                daemon: daemon.name(),
                dir: self.dir.clone(),
                log: self.log_file(daemon),
                source,
            }
        })
    }

    fn run(&self, step: &'static str, cmd: &mut Command) -> Result<String> {
        cmd::run(cmd).map_err(|source| Error::Command {
            step,
            dir: self.dir.clone(),
            source,
        })
    }
}

fn read_pid(pid_file: &Path) -> Option<i32> {
    fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// True when `pid` is a live (not zombie) `daemon` whose command line names
/// `dir`. Guards every signal the lab sends: a recycled pid, or another lab's
/// OVS, never matches.
fn is_ours(pid: i32, daemon: Daemon, dir: &Path) -> bool {
    Proof {
        comm: daemon.comm(),
        dir,
    }
    .holds(pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::process_matches;

    fn cmdline(args: &[&str]) -> Vec<u8> {
        args.iter().flat_map(|a| a.bytes().chain([0])).collect()
    }

    #[test]
    fn process_matching() {
        let dir = Path::new("/run/linen-lab/a/n1");
        let vswitchd = cmdline(&[
            "ovs-vswitchd",
            "unix:/run/linen-lab/a/n1/db.sock",
            "--pidfile=/run/linen-lab/a/n1/ovs-vswitchd.pid",
        ]);
        let other_node = cmdline(&["ovs-vswitchd", "unix:/run/linen-lab/a/n11/db.sock"]);
        let running = "42 (ovs-vswitchd) S 1 42";
        let cases: &[(&str, &[u8], Daemon, bool)] = &[
            (running, &vswitchd, Daemon::Vswitchd, true),
            (running, &vswitchd, Daemon::OvsdbServer, false),
            (
                "42 (ovs-vswitchd) Z 1 42",
                &vswitchd,
                Daemon::Vswitchd,
                false,
            ),
            ("42 (sleep) S 1 42", &vswitchd, Daemon::Vswitchd, false),
            (running, &other_node, Daemon::Vswitchd, false),
            (running, b"", Daemon::Vswitchd, false),
            ("garbage", &vswitchd, Daemon::Vswitchd, false),
        ];
        for (i, (stat, cmd, daemon, want)) in cases.iter().enumerate() {
            assert_eq!(
                process_matches(stat, cmd, daemon.name(), dir),
                *want,
                "case {i}"
            );
        }
    }

    #[test]
    fn paths_follow_ovs_defaults() {
        let ovs = Ovs::new(Netns::new("a-n1"), "/run/linen-lab/a/n1");
        assert_eq!(ovs.db_url(), "unix:/run/linen-lab/a/n1/db.sock");
        assert_eq!(
            ovs.pid_file(Daemon::Vswitchd),
            PathBuf::from("/run/linen-lab/a/n1/ovs-vswitchd.pid")
        );
        assert_eq!(
            cmd::describe(&ovs.appctl(Daemon::OvsdbServer)),
            "ovs-appctl --timeout=2 -t ovsdb-server"
        );
    }

    #[test]
    fn missing_pid_file_means_not_running_and_stop_is_ok() {
        let dir = tempfile::tempdir().unwrap();
        let ovs = Ovs::new(Netns::new("nonexistent"), dir.path());
        assert_eq!(ovs.pid(Daemon::Vswitchd), None);
        ovs.stop().unwrap();
    }
}
