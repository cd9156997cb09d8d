//! Children that die with the test process. Cleanup by `Drop` never runs when a test is
//! killed (nextest's timeout, Ctrl-C, a crash); the kernel's parent-death signal does.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process.
//! So [`spawn`] forks every child from one long-lived thread of its own, which lives as long as
//! the test process: a daemon started from a short-lived helper thread or a tokio worker still
//! lives exactly as long as the test. The signal survives `exec` (of non-setuid programs), so
//! `ip netns exec NS daemon` is covered; a daemon that forks itself away (`--detach`) is not.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Request = (Command, mpsc::Sender<io::Result<Child>>);

/// Makes the child of `cmd` receive SIGKILL when the thread that spawns it exits (use
/// [`spawn`] to make that the process's lifetime).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid, raise).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent died before prctl: no signal will come.
            if libc::getppid() != parent {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        })
    }
}

/// Spawns `cmd` from the kit's spawner thread, with [`die_with_parent`]: the child is killed
/// when the test process ends, however it ends.
pub fn spawn(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(die_with_parent(&mut cmd).spawn());
                }
            })
            .expect("start the testkit spawner thread");
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    die_with_parent(&mut cmd); // also if the spawner is gone, below
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply))
        .map_err(|_| io::Error::other("the testkit spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the testkit spawner thread is gone"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;
    use std::time::Duration;

    fn alive(pid: u32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next();
        !matches!(state, None | Some("Z" | "X"))
    }

    #[test]
    fn a_child_outlives_the_thread_that_asked_for_it() {
        let mut child = std::thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("30").stdin(Stdio::null());
            spawn(cmd).expect("spawn sleep")
        })
        .join()
        .unwrap();
        // The asking thread is gone; the spawner thread is not, so no signal came.
        std::thread::sleep(Duration::from_millis(100));
        assert!(alive(child.id()), "killed when its asking thread exited");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_child_dies_with_the_thread_that_forked_it() {
        // What `spawn` protects against, and proof that the signal is set at all.
        let mut child = std::thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("30").stdin(Stdio::null());
            die_with_parent(&mut cmd).spawn().expect("spawn sleep")
        })
        .join()
        .unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !alive(pid),
            "sleep {pid} outlived the thread that forked it"
        );
        child.wait().unwrap();
    }
}
