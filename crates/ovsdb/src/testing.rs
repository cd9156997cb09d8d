//! Test fixtures (feature `testing`): a real ovsdb-server on a temporary directory, and a real
//! ovs-vswitchd inside a network namespace. Every fixture is a guard: dropping it kills its
//! processes and removes its directory or namespace, also when the test fails. Names carry a
//! random suffix, so tests run in parallel.
//!
//! Needs root, `ovsdb-tool`, `ovsdb-server`, `ovs-vswitchd` and `ip` on the PATH (or in /usr/sbin).

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testkit::try_eventually;

/// The schema installed by Debian's openvswitch-common.
pub const VSWITCH_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// A short random suffix for names (bridges, namespaces) that must not collide across tests.
pub fn random_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_string()
}

/// Debian installs the daemons in /usr/sbin, which a non-login PATH may lack.
fn program(name: &str) -> std::ffi::OsString {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.exists() {
        sbin.into_os_string()
    } else {
        name.into()
    }
}

fn command(name: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(program(name));
    // Keep every run file (bridge mgmt sockets included) inside the fixture's directory.
    cmd.env("OVS_RUNDIR", dir)
        .env("OVS_LOGDIR", dir)
        .env("OVS_DBDIR", dir);
    cmd
}

fn run(mut cmd: Command) -> io::Result<String> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A private ovsdb-server with a fresh `Open_vSwitch` database (no root row yet).
pub struct OvsdbServer {
    dir: tempfile::TempDir,
    child: Option<Child>,
    tcp_port: Option<u16>,
}

impl OvsdbServer {
    /// Starts a server listening on `unix:<dir>/db.sock`, and returns once it accepts connections.
    pub fn start() -> io::Result<OvsdbServer> {
        Self::start_with_args(&[])
    }

    /// Like [`OvsdbServer::start`], also listening on an ephemeral TCP port on 127.0.0.1
    /// ([`OvsdbServer::tcp_addr`]).
    pub fn start_with_tcp() -> io::Result<OvsdbServer> {
        let mut server = Self::start_with_args(&["--remote=ptcp:0:127.0.0.1"])?;
        server.tcp_port = Some(server.wait_tcp_port()?);
        Ok(server)
    }

    /// Like [`OvsdbServer::start`], with extra ovsdb-server arguments (e.g. more `--remote`s).
    pub fn start_with_args(extra: &[&str]) -> io::Result<OvsdbServer> {
        let dir = tempfile::Builder::new()
            .prefix(&testkit::name("ovsdb-"))
            .tempdir()?;
        let d = dir.path();
        let db = d.join("conf.db");
        let mut create = command("ovsdb-tool", d);
        create.arg("create").arg(&db).arg(VSWITCH_SCHEMA);
        run(create)?;
        let mut cmd = command("ovsdb-server", d);
        cmd.arg(&db)
            .arg(format!("--remote=punix:{}", d.join("db.sock").display()))
            .arg(format!("--pidfile={}", d.join("ovsdb.pid").display()))
            .arg(format!("--unixctl={}", d.join("ovsdb.ctl").display()))
            .arg(format!("--log-file={}", d.join("ovsdb.log").display()))
            .args(extra);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Killed with the test process, also when no destructor runs (a killed test).
        let child = testkit::process::spawn(cmd)?;
        let server = OvsdbServer {
            dir,
            child: Some(child),
            tcp_port: None,
        };
        let sock = server.socket_path();
        try_eventually(
            format!("ovsdb-server socket {}", sock.display()),
            Duration::from_secs(10),
            || std::os::unix::net::UnixStream::connect(&sock).ok(),
        )?;
        Ok(server)
    }

    /// Waits for the server to log the port of a `ptcp:0:...` remote (one given on the command
    /// line, or a Manager row's target) and returns the first one logged.
    pub fn wait_tcp_port(&self) -> io::Result<u16> {
        let log = self.dir().join("ovsdb.log");
        let port = try_eventually(
            "a TCP port in the ovsdb-server log",
            Duration::from_secs(10),
            || {
                let text = std::fs::read_to_string(&log).ok()?;
                text.lines()
                    .find_map(|l| l.split("listening on port ").nth(1)?.trim().parse().ok())
            },
        )?;
        Ok(port)
    }

    /// The run directory (db, socket, pidfile, unixctl socket, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket_path(&self) -> PathBuf {
        self.dir().join("db.sock")
    }

    /// `unix:<dir>/db.sock`, for [`crate::Client::connect`].
    pub fn unix_addr(&self) -> String {
        format!("unix:{}", self.socket_path().display())
    }

    /// `tcp:127.0.0.1:<port>` if started with [`OvsdbServer::start_with_tcp`].
    pub fn tcp_addr(&self) -> Option<String> {
        self.tcp_port.map(|p| format!("tcp:127.0.0.1:{p}"))
    }

    /// Runs `ovs-vsctl --db=unix:... --no-wait ARGS`, e.g. `["init"]` to create the root row.
    pub fn vsctl(&self, args: &[&str]) -> io::Result<String> {
        let mut cmd = command("ovs-vsctl", self.dir());
        cmd.arg(format!("--db={}", self.unix_addr()))
            .arg("--no-wait")
            .arg("--timeout=10")
            .args(args);
        run(cmd)
    }

    /// Kills the server now (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OvsdbServer {
    fn drop(&mut self) {
        self.kill();
        // The TempDir removes the directory after this.
    }
}

/// An ovs-vswitchd inside a network namespace created for it, connected to an [`OvsdbServer`].
/// Bridges it runs need `datapath_type=netdev` where the kernel has no openvswitch module.
pub struct Vswitchd {
    netns: String,
    child: Option<Child>,
    pidfile: PathBuf,
}

impl Vswitchd {
    /// Creates namespace `lnt<pid>-<prefix><random>` ([`testkit::name`], so a killed run's is
    /// swept) and starts ovs-vswitchd in it. Its files go to the
    /// server's directory. Returns once its pidfile exists; wait for `cur_cfg` to know it has
    /// read the database.
    pub fn start(server: &OvsdbServer, netns_prefix: &str) -> io::Result<Vswitchd> {
        let netns = testkit::name(&format!("{netns_prefix}{}", random_suffix()));
        let d = server.dir();
        let mut add = command("ip", d);
        add.args(["netns", "add", &netns]);
        run(add)?;
        let pidfile = d.join("vswitchd.pid");
        // From here on, Drop deletes the namespace.
        let mut guard = Vswitchd {
            netns,
            child: None,
            pidfile: pidfile.clone(),
        };
        let mut cmd = command("ip", d);
        cmd.args(["netns", "exec", &guard.netns])
            .arg(program("ovs-vswitchd"))
            .arg(server.unix_addr())
            .arg(format!("--pidfile={}", pidfile.display()))
            .arg(format!("--unixctl={}", d.join("vswitchd.ctl").display()))
            .arg(format!("--log-file={}", d.join("vswitchd.log").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // `ip netns exec` execs ovs-vswitchd, which keeps the parent-death signal.
        guard.child = Some(testkit::process::spawn(cmd)?);
        try_eventually(
            format!("ovs-vswitchd pidfile {}", pidfile.display()),
            Duration::from_secs(10),
            || pidfile.exists().then_some(()),
        )?;
        Ok(guard)
    }

    /// The namespace ovs-vswitchd runs in; its internal ports' devices appear there.
    pub fn netns(&self) -> &str {
        &self.netns
    }
}

impl Drop for Vswitchd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `ip netns exec` execs the daemon, so this is ovs-vswitchd itself; the pidfile
            // check below covers an `ip` that forked instead.
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Ok(pid) = std::fs::read_to_string(&self.pidfile) {
            let pid = pid.trim();
            if !pid.is_empty() && Path::new("/proc").join(pid).exists() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new(program("ip"))
            .args(["netns", "del", &self.netns])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
