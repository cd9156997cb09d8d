//! The plugin half: environment + stdin in, result or error JSON out.
//!
//! [`dispatch`] takes env, stdin and stdout as values so every path is unit
//! tested without a process (like skel's `dispatcher`); [`run`] wires it to the
//! real process. Logs go to stderr (through `tracing`), never to stdout.

use std::fmt;
use std::io::{IsTerminal, Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::str::FromStr;

use serde_json::{Value, json};

pub use crate::conf::Attachment;
use crate::conf::{validate_container_id, validate_ifname};
use crate::{Error, NetConf, Version, types};

/// A CNI plugin. Every method reports failure as a typed [`Error`], whose code
/// the runtime sees; none may panic on bad input (a panic is caught and
/// reported as code 999, [`Error::INTERNAL`], but that is a bug).
pub trait Plugin {
    /// ADD: create or adjust the interface; return the result (the
    /// `prevResult`, possibly modified, for chained plugins). Not idempotent:
    /// the spec says to fail if the interface already exists.
    fn add(&self, args: &CmdArgs) -> Result<types::Result, Error>;
    /// DEL: undo ADD. Idempotent and best-effort: missing state is success.
    fn del(&self, args: &CmdArgs) -> Result<(), Error>;
    /// CHECK: verify what ADD set up (`args.conf.prev_result`). Read-only.
    fn check(&self, args: &CmdArgs) -> Result<(), Error>;
    /// STATUS: is the plugin ready to serve ADD? Codes 50/51 when not. Read-only.
    fn status(&self, conf: &NetConf) -> Result<(), Error>;
    /// GC: release everything not owned by `valid_attachments`. Idempotent;
    /// should carry on past errors and report them at the end.
    fn gc(&self, conf: &NetConf, valid_attachments: &[Attachment]) -> Result<(), Error>;
}

/// Everything an attachment operation (ADD, DEL, CHECK) receives.
#[derive(Debug, Clone, PartialEq)]
pub struct CmdArgs {
    pub container_id: String,
    /// `None` only for DEL, where CNI_NETNS is optional.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// CNI_ARGS, `K=V;K2=V2`, in order.
    pub args: Vec<(String, String)>,
    /// CNI_PATH, split on `:`.
    pub path: Vec<PathBuf>,
    pub conf: NetConf,
    /// Stdin exactly as received (for delegating to IPAM plugins).
    pub stdin: Vec<u8>,
}

/// CNI_COMMAND.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }

    /// Environment variables SPEC.md 1.1.0 requires for this command.
    /// CNI_COMMAND is always required and not listed.
    ///
    /// This follows the spec rather than skel: skel also demands CNI_PATH for
    /// ADD, DEL, CHECK and STATUS, where the spec calls it optional.
    pub fn required_env(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            Command::Gc => &["CNI_PATH"],
            Command::Version | Command::Status => &[],
        }
    }

    fn is_attachment_op(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Command {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return Err(Error::invalid_env(format!("unknown CNI_COMMAND: {s}"))),
        })
    }
}

/// Parses CNI_ARGS (`FOO=BAR;ABC=123`). Empty segments are skipped; a value may
/// contain `=`; a segment without `=` or with an empty key is code 4.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, Error> {
    s.split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(Error::invalid_env("invalid CNI_ARGS pair, want KEY=VALUE").with_details(kv)),
        })
        .collect()
}

/// Splits CNI_PATH on `:`, dropping empty entries.
pub fn parse_cni_path(s: &str) -> Vec<PathBuf> {
    s.split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// What a successful command prints.
enum Output {
    Nothing,
    Json(Value),
}

/// A failure, with the `cniVersion` to print in the error JSON.
struct Failure {
    cni_version: String,
    error: Error,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure {
            cni_version: Version::LATEST.to_string(),
            error,
        }
    }
}

/// Runs one plugin invocation: reads the command from `env`, the config from
/// `stdin`, calls `plugin`, writes the result (or the error JSON) to `stdout`
/// and returns the exit code: 0 on success, 1 on any error.
///
/// Without CNI_COMMAND and with a non-empty `about`, prints `about` and the
/// supported versions to stderr and returns 0 (skel does the same, so running
/// the binary by hand says what it is).
pub fn dispatch(
    plugin: &impl Plugin,
    about: &str,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
) -> i32 {
    // An empty variable counts as unset, as in skel (Go's Getenv cannot tell).
    let env = |k: &str| env(k).filter(|v| !v.is_empty());
    if env("CNI_COMMAND").is_none() && !about.is_empty() {
        let versions: Vec<_> = Version::SUPPORTED.iter().map(|v| v.as_str()).collect();
        eprintln!(
            "{about}\nCNI protocol versions supported: {}",
            versions.join(", ")
        );
        return 0;
    }
    let outcome = dispatch_inner(plugin, &env, stdin);
    let (code, value) = match outcome {
        Ok(Output::Nothing) => return 0,
        Ok(Output::Json(value)) => (0, value),
        Err(Failure { cni_version, error }) => {
            tracing::debug!(code = error.code, %error, "reporting error");
            (1, error.to_json(&cni_version))
        }
    };
    // One write: stdout is line-buffered, and a pretty-printed result written through it
    // would cost a system call per line.
    let written = serde_json::to_vec_pretty(&value)
        .map_err(std::io::Error::from)
        .and_then(|mut bytes| {
            bytes.push(b'\n');
            stdout.write_all(&bytes)
        })
        .and_then(|()| stdout.flush());
    if let Err(e) = written {
        tracing::error!(error = %e, "writing to stdout failed");
        return 1;
    }
    code
}

fn dispatch_inner(
    plugin: &impl Plugin,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
) -> Result<Output, Failure> {
    let cmd: Command = env("CNI_COMMAND")
        .ok_or_else(|| Error::invalid_env("required env variables [CNI_COMMAND] missing"))?
        .parse()?;
    let missing: Vec<&str> = cmd
        .required_env()
        .iter()
        .copied()
        .filter(|k| env(k).is_none())
        .collect();
    if !missing.is_empty() {
        let msg = format!("required env variables [{}] missing", missing.join(","));
        return Err(Error::invalid_env(msg).into());
    }

    let mut input = Vec::new();
    stdin
        .read_to_end(&mut input)
        .map_err(|e| Error::io_failure(format!("error reading from stdin: {e}")))?;

    if cmd == Command::Version {
        return Ok(Output::Json(version_reply(&input)));
    }

    // From here on an error echoes the config's own cniVersion string.
    let echo = |error: Error| Failure {
        cni_version: config_version_string(&input),
        error,
    };
    let conf = NetConf::parse(&input).map_err(echo)?;
    let v = conf.cni_version;
    let path = env("CNI_PATH")
        .map(|p| parse_cni_path(&p))
        .unwrap_or_default();

    let call = |f: &mut dyn FnMut() -> Result<Output, Error>| -> Result<Output, Failure> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(result) => result.map_err(echo),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic payload".into());
                tracing::error!(command = %cmd, panic = %what, "plugin panicked");
                Err(echo(
                    Error::internal(format!("plugin panicked during {cmd}")).with_details(what),
                ))
            }
        }
    };

    if !cmd.is_attachment_op() {
        if !v.supports_gc_status() {
            let msg = format!("config version {v} does not allow {cmd}");
            return Err(echo(Error::incompatible_version(msg)));
        }
        if cmd == Command::Status {
            return call(&mut || plugin.status(&conf).map(|()| Output::Nothing));
        }
        // GC without the attachments list would read as "nothing is valid" and
        // wipe the network; refuse instead. An explicit null is an empty list.
        let Some(valid) = conf.valid_attachments.clone() else {
            let msg = format!("GC config lacks {}", crate::conf::VALID_ATTACHMENTS_KEY);
            return Err(echo(Error::invalid_config(msg)));
        };
        return call(&mut || plugin.gc(&conf, &valid).map(|()| Output::Nothing));
    }

    if cmd == Command::Check && !v.supports_check() {
        return Err(echo(Error::incompatible_version(format!(
            "config version {v} does not allow CHECK"
        ))));
    }
    // Present: required_env checked them for every attachment command.
    let container_id = env("CNI_CONTAINERID").unwrap_or_default();
    let ifname = env("CNI_IFNAME").unwrap_or_default();
    validate_container_id(&container_id).map_err(echo)?;
    validate_ifname(&ifname).map_err(echo)?;
    let args = parse_cni_args(&env("CNI_ARGS").unwrap_or_default()).map_err(echo)?;
    let cmd_args = CmdArgs {
        container_id,
        netns: env("CNI_NETNS").map(PathBuf::from),
        ifname,
        args,
        path,
        conf,
        stdin: input.clone(),
    };
    match cmd {
        Command::Add => call(&mut || {
            plugin
                .add(&cmd_args)
                .map(|result| Output::Json(result.to_value(v)))
        }),
        Command::Del => call(&mut || plugin.del(&cmd_args).map(|()| Output::Nothing)),
        _ => call(&mut || plugin.check(&cmd_args).map(|()| Output::Nothing)),
    }
}

/// The `cniVersion` string of the input, or the latest version when there is
/// none to echo.
fn config_version_string(input: &[u8]) -> String {
    serde_json::from_slice::<Value>(input)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| Version::LATEST.to_string())
}

/// VERSION output. `cniVersion` echoes the input's (the spec: "the value of
/// cniVersion specified on input"), even an unsupported one, so the runtime
/// can read `supportedVersions`; stdin is otherwise ignored, as skel does.
fn version_reply(input: &[u8]) -> Value {
    let supported: Vec<_> = Version::SUPPORTED.iter().map(|v| v.as_str()).collect();
    json!({"cniVersion": config_version_string(input), "supportedVersions": supported})
}

/// The plugin binary's `main`: [`dispatch`] on the real environment, stdin and
/// stdout, then exit with its code.
///
/// Stdin is not read when it is a terminal (someone ran the binary by hand):
/// VERSION then needs no input and other commands report a decoding error
/// instead of hanging. Panics are caught by [`dispatch`] and reported as error
/// code 999 ([`Error::INTERNAL`], libcni's code for an untyped failure),
/// provided the binary unwinds on panic (the default; `panic = "abort"` would
/// kill the process with no JSON).
pub fn run(plugin: &impl Plugin, about: &str) -> ! {
    // Variables that are not UTF-8 read as unset, so they are reported as missing.
    let env = |k: &str| std::env::var(k).ok();
    let stdin = std::io::stdin();
    let mut empty = std::io::empty();
    let mut locked;
    let input: &mut dyn Read = if stdin.is_terminal() {
        &mut empty
    } else {
        locked = stdin.lock();
        &mut locked
    };
    let mut stdout = std::io::stdout().lock();
    let code = dispatch(plugin, about, &env, input, &mut stdout);
    std::process::exit(code)
}

#[cfg(test)]
#[path = "plugin_tests.rs"]
mod tests;
