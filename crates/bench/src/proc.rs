//! Running one measured child process: optionally inside a network namespace (entered by
//! `setns` between fork and exec, as the CNI runtime does, so no `ip netns exec` is timed),
//! with its stdin fed and its output collected, reaped by `wait4` so that its own peak RSS
//! (`ru_maxrss`) is known.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

/// What one run of a child gave.
#[derive(Debug, Clone)]
pub struct Run {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// From just before spawn to the child being reaped.
    pub elapsed: Duration,
    /// The child's peak resident set, KiB (`ru_maxrss` of this child only).
    pub max_rss_kib: u64,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    pub fn ms(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e3
    }

    /// Fails unless the child exited 0, naming `what` and showing both streams.
    pub fn check(self, what: &str) -> Result<Run> {
        if !self.ok() {
            bail!(
                "{what} failed (exit {:?}): stdout {:?} stderr {:?}",
                self.code,
                String::from_utf8_lossy(&self.stdout).trim(),
                String::from_utf8_lossy(&self.stderr).trim()
            );
        }
        Ok(self)
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Makes `cmd` enter the network namespace at `netns` before it execs.
pub fn enter_netns(cmd: &mut Command, netns: &Path) -> Result<()> {
    let ns = File::open(netns).with_context(|| format!("open netns {}", netns.display()))?;
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe work is allowed: one setns syscall on a descriptor opened above
    // (O_CLOEXEC, so the program does not inherit it), no allocation, no lock.
    unsafe {
        cmd.pre_exec(move || setns(&ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from));
    }
    Ok(())
}

/// Runs `cmd` (inside `netns` if given) with `stdin`, to completion.
pub fn run(cmd: &mut Command, netns: Option<&Path>, stdin: &[u8]) -> Result<Run> {
    if let Some(ns) = netns {
        enter_netns(cmd, ns)?;
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawn {:?}", cmd.get_program()))?;
    let pid = child.id() as libc::pid_t;
    let mut input = child.stdin.take().context("stdin is piped")?;
    let mut out = child.stdout.take().context("stdout is piped")?;
    let mut err = child.stderr.take().context("stderr is piped")?;
    let (status, rusage, stdout, stderr) = std::thread::scope(|s| {
        s.spawn(move || {
            // A program may exit without reading its stdin: EPIPE is fine.
            let _ = input.write_all(stdin);
        });
        let o = s.spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        });
        let e = s.spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        });
        let (status, rusage) = wait4(pid);
        (
            status,
            rusage,
            o.join().unwrap_or_default(),
            e.join().unwrap_or_default(),
        )
    });
    let elapsed = started.elapsed();
    let status = status.with_context(|| format!("wait for {:?}", cmd.get_program()))?;
    // The child was reaped by wait4; `child` must not wait again. Dropping it is a no-op.
    drop(child);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Ok(Run {
        code,
        stdout,
        stderr,
        elapsed,
        max_rss_kib: u64::try_from(rusage.ru_maxrss).unwrap_or(0),
    })
}

fn wait4(pid: libc::pid_t) -> (std::io::Result<libc::c_int>, libc::rusage) {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: both pointers are to live locals of the right types.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut rusage) };
        if r == pid {
            return (Ok(status), rusage);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return (Err(e), rusage);
        }
    }
}

/// Runs `program args` (inside `netns` if given) with no input; fails on a non-zero exit.
pub fn ok(program: &str, args: &[&str], netns: Option<&Path>) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let what = format!("{program} {}", args.join(" "));
    Ok(run(&mut cmd, netns, b"")?.check(&what)?.stdout_str())
}

/// Runs `f` on a new thread that has entered the network namespace at `netns`: sockets it
/// opens and processes it spawns live there. `setns` is per thread, so the caller's
/// namespace is untouched.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file =
                File::open(netns).with_context(|| format!("open netns {}", netns.display()))?;
            setns(&file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("enter netns {}", netns.display()))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| bail!("a thread in netns {} panicked", netns.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_output_code_and_rss() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "cat; echo err >&2; exit 3"]);
        let r = run(&mut cmd, None, b"hello").unwrap();
        assert_eq!(r.code, Some(3));
        assert_eq!(r.stdout, b"hello");
        assert_eq!(r.stderr, b"err\n");
        assert!(r.max_rss_kib > 0);
        assert!(r.clone().check("sh").is_err());
    }

    #[test]
    fn ok_returns_stdout() {
        assert_eq!(ok("echo", &["hi"], None).unwrap(), "hi\n");
        assert!(ok("false", &[], None).is_err());
        assert!(ok("/nonexistent/program", &[], None).is_err());
    }
}
