//! Running the external tools the lab drives (`ip`, `ovs-*`, `ping`), with
//! errors that name the exact command line and carry its stderr.

use std::ffi::OsStr;
use std::process::{Command, ExitStatus, Stdio};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CmdError {
    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
}

pub type Result<T, E = CmdError> = std::result::Result<T, E>;

/// The command line as a shell-like string, for logs and errors.
pub fn describe(cmd: &Command) -> String {
    let mut out = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        out.push(' ');
        out.push_str(&arg.to_string_lossy());
    }
    out
}

/// Runs `cmd` to completion with stdin closed; returns its stdout.
///
/// Daemons started with `--detach` return here once their parent exits: OVS
/// points the daemon's standard streams at /dev/null when it detaches, so
/// reading the pipes to the end does not wait for the daemon.
pub fn run(cmd: &mut Command) -> Result<String> {
    let command = describe(cmd);
    tracing::debug!(%command, "run");
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CmdError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(CmdError::Failed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// True when `cmd` runs and exits 0; used by readiness probes, where failure
/// is an expected answer rather than an error.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `Command::new(program).args(args)`, for brevity at call sites.
pub fn command<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_joins_program_and_args() {
        let cmd = command("ip", ["-n", "x", "link"]);
        assert_eq!(describe(&cmd), "ip -n x link");
    }

    #[test]
    fn run_reports_failure_with_stderr() {
        let err = run(&mut command("sh", ["-c", "echo boom >&2; exit 3"])).unwrap_err();
        match err {
            CmdError::Failed { stderr, status, .. } => {
                assert_eq!(stderr, "boom");
                assert_eq!(status.code(), Some(3));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn run_reports_missing_program() {
        let err = run(&mut command("/nonexistent/tool", [] as [&str; 0])).unwrap_err();
        assert!(matches!(err, CmdError::Spawn { .. }));
    }
}
