//! The processes the lab starts itself and keeps running after `up` returns
//! (etcd, one flaxd per node): spawned with their output in a log file, in
//! their own process group (a Ctrl-C meant for `linen-lab` never reaches
//! them), and recorded by pid. Every signal is sent only after proving that
//! the pid is still the lab's process: its `/proc/PID/comm` is the program
//! and its command line names the lab's directory — the same proof the lab
//! uses for OVS, so a recycled pid or another lab's daemon never matches.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use thiserror::Error;

use crate::cmd;
use crate::wait::{self, Timeout};

const KILL_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum Error {
    #[error("open log file {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("start `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("stop {program} (pid {pid})")]
    Stop {
        program: String,
        pid: i32,
        #[source]
        source: Timeout,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What proves that a pid is one of the lab's processes.
#[derive(Clone, Copy, Debug)]
pub struct Proof<'a> {
    /// `/proc/PID/comm`: the program's file name.
    pub comm: &'a str,
    /// A directory some argument of its command line lies under.
    pub dir: &'a Path,
}

impl Proof<'_> {
    /// True when `pid` is a live (not zombie) process matching this proof.
    pub fn holds(&self, pid: i32) -> bool {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let Ok(stat) = fs::read_to_string(proc_dir.join("stat")) else {
            return false;
        };
        let Ok(cmdline) = fs::read(proc_dir.join("cmdline")) else {
            return false;
        };
        process_matches(&stat, &cmdline, self.comm, self.dir)
    }

    /// `pid` if it still is this process.
    pub fn alive(&self, pid: Option<i32>) -> Option<i32> {
        pid.filter(|p| self.holds(*p))
    }

    /// Every live process matching this proof (for one a crash left unrecorded).
    pub fn find_all(&self) -> Vec<i32> {
        let Ok(entries) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| self.holds(*pid))
            .collect()
    }
}

/// Starts `cmd` in the background: stdin closed, stdout and stderr appended
/// to `log`, in a process group of its own. Returns its pid. The caller
/// records it before doing anything else.
pub fn spawn(cmd: &mut Command, log: &Path) -> Result<i32> {
    let log_err = |source| Error::Log {
        path: log.to_path_buf(),
        source,
    };
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(log_err)?;
    let err = out.try_clone().map_err(log_err)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Spawn {
            command: cmd::describe(cmd),
            source,
        })?;
    tracing::debug!(command = %cmd::describe(cmd), pid = child.id(), "started");
    // Not waited for here: it outlives this call (and, after `up`, this process).
    Ok(child.id() as i32)
}

/// Sends `first` (SIGTERM for a clean stop) and waits up to `grace`, then
/// SIGKILL. Nothing to do if `pid` is not (or no longer) the process of
/// `proof`. Idempotent.
pub fn stop(pid: Option<i32>, proof: Proof<'_>, first: Signal, grace: Duration) -> Result<()> {
    let Some(pid) = proof.alive(pid) else {
        return Ok(());
    };
    let gone = || (!proof.holds(pid)).then_some(());
    let what = format!("{} (pid {pid}) to exit", proof.comm);
    // ESRCH means it exited between the check and the signal.
    let _ = kill(Pid::from_raw(pid), first);
    let mut result = wait::until(&what, grace, gone);
    if result.is_err() && first != Signal::SIGKILL {
        tracing::warn!(
            program = proof.comm,
            pid,
            "ignored {first}, sending SIGKILL"
        );
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        result = wait::until(&what, KILL_GRACE, gone);
    }
    reap(pid);
    result.map_err(|source| Error::Stop {
        program: proof.comm.to_owned(),
        pid,
        source,
    })
}

/// True when `pid` is on its way out: exiting already (`PF_EXITING` in
/// `/proc/PID/stat`) or with a SIGKILL pending (`/proc/PID/status`), as right
/// after `kill -9` from outside, before the kernel has torn it down. Such a
/// process still matches its [`Proof`] for a moment, but is not "running".
pub fn dying(pid: i32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    is_dying(&stat, &status)
}

/// Pure part of [`dying`].
pub(crate) fn is_dying(stat: &str, status: &str) -> bool {
    const PF_EXITING: u64 = 0x4;
    const SIGKILL_BIT: u64 = 1 << (9 - 1);
    // After "PID (COMM) ": state, ppid, pgrp, session, tty_nr, tpgid, flags.
    let flags = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().nth(6)?.parse::<u64>().ok())
        .unwrap_or(0);
    let killed = status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("SigPnd:")
                .or_else(|| l.strip_prefix("ShdPnd:"))
        })
        .filter_map(|v| u64::from_str_radix(v.trim(), 16).ok())
        .any(|mask| mask & SIGKILL_BIT != 0);
    flags & PF_EXITING != 0 || killed
}

/// Collects the exit status of `pid` if it is a child of this process (the
/// lab's own `up` in a test): it would stay a zombie until this process ends.
fn reap(pid: i32) {
    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
}

/// Pure part of [`Proof::holds`]: `stat` is `/proc/PID/stat`, `cmdline` the
/// NUL-separated `/proc/PID/cmdline`.
pub(crate) fn process_matches(stat: &str, cmdline: &[u8], comm: &str, dir: &Path) -> bool {
    // stat is "PID (COMM) STATE ..."; COMM may hold spaces and parentheses.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let found = &stat[open + 1..close];
    let state = stat[close + 1..].split_whitespace().next();
    if found != comm || matches!(state, Some("Z" | "X") | None) {
        return false;
    }
    let dir = dir.to_string_lossy();
    // The directory must appear as a path prefix in some argument (a db file,
    // a pid file, a socket, a data directory), followed by a separator.
    cmdline
        .split(|b| *b == 0)
        .map(String::from_utf8_lossy)
        .any(|arg| {
            arg.find(dir.as_ref())
                .is_some_and(|i| arg[i + dir.len()..].starts_with('/'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dying_reads_pf_exiting_and_a_pending_sigkill() {
        let stat = |flags: u64| format!("42 (fl axd) S 1 42 42 0 -1 {flags} 0 0");
        let status =
            |shd: &str| format!("Name:\tflaxd\nSigPnd:\t0000000000000000\nShdPnd:\t{shd}\n");
        assert!(!is_dying(&stat(0x400140), &status("0000000000000000")));
        assert!(is_dying(&stat(0x400144), &status("0000000000000000")));
        assert!(is_dying(&stat(0x400140), &status("0000000000000100")));
        // SIGTERM pending (bit 15) is a request, not a death.
        assert!(!is_dying(&stat(0x400140), &status("0000000000004000")));
        // A live process of our own is not dying.
        assert!(!dying(std::process::id() as i32));
    }

    #[test]
    fn a_spawned_process_is_proven_and_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("x");
        let log = dir.path().join("sleep.log");
        // `sleep` whose argv[0] lies under `dir` (comm stays "sleep").
        let pid = spawn(
            Command::new("bash")
                .arg("-c")
                .arg("exec -a \"$0\" sleep 60")
                .arg(&marker),
            &log,
        )
        .unwrap();
        let proof = Proof {
            comm: "sleep",
            dir: dir.path(),
        };
        // bash execs sleep: wait until the exec happened.
        wait::until("sleep", Duration::from_secs(5), || {
            proof.holds(pid).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}: {}", fs::read_to_string(&log).unwrap_or_default()));
        assert_eq!(proof.find_all(), [pid]);
        let other = Proof {
            comm: "sleep",
            dir: Path::new("/nonexistent/dir"),
        };
        assert!(!other.holds(pid));
        stop(Some(pid), proof, Signal::SIGTERM, Duration::from_secs(5)).unwrap();
        assert!(!proof.holds(pid));
        assert!(proof.find_all().is_empty());
        // Gone, or never started: success.
        stop(Some(pid), proof, Signal::SIGTERM, Duration::from_secs(1)).unwrap();
        stop(None, proof, Signal::SIGKILL, Duration::from_secs(1)).unwrap();
    }
}
