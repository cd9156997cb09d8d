//! Prerequisites that fail the test, naming what is missing. `scripts/install-deps.sh`
//! installs every one, so on a machine set up as the README says nothing fails here. There is
//! deliberately no opt-out that lets a test pass without running: to leave tests out (say,
//! without root), filter them out (`cargo nextest run -E 'not binary(reference_plugins)'`),
//! which nextest reports as skipped, not passed.

use std::path::{Path, PathBuf};

/// Where Debian puts the programs the tests run; a non-login PATH may lack the sbin ones.
const SYSTEM_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

#[track_caller]
fn missing(what: &str) -> ! {
    panic!(
        "missing prerequisite: {what}. Run ./scripts/install-deps.sh (as root) to install every \
         prerequisite; to leave these tests out, filter them out so they show as skipped"
    )
}

/// Panics unless the test runs as root (namespaces, OVS, etcd, iptables need it).
#[track_caller]
pub fn root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        missing("root (these tests create network namespaces and run system daemons)");
    }
}

/// The path of `program`, found in the system directories or on the PATH; panics naming the
/// program and its Debian `package` if it is nowhere.
#[track_caller]
pub fn program(program: &str, package: &str) -> PathBuf {
    find_program(program).unwrap_or_else(|| {
        missing(&format!(
            "program `{program}` (Debian package {package}) in {} or on the PATH",
            SYSTEM_DIRS.join(", ")
        ))
    })
}

/// `program` in the system directories or on the PATH, if anywhere.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    SYSTEM_DIRS
        .iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Panics naming `path` and its Debian `package` unless `path` is a file.
#[track_caller]
pub fn file(path: impl AsRef<Path>, package: &str) {
    let path = path.as_ref();
    if !path.is_file() {
        missing(&format!("{} (Debian package {package})", path.display()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_program_every_machine_has() {
        assert!(program("sh", "dash").is_file());
    }

    #[test]
    #[should_panic(expected = "missing prerequisite: program `linen-no-such-program`")]
    fn a_missing_program_fails_naming_it() {
        program("linen-no-such-program", "none");
    }

    #[test]
    #[should_panic(expected = "missing prerequisite: /nonexistent/linen (Debian package x)")]
    fn a_missing_file_fails_naming_it() {
        file("/nonexistent/linen", "x");
    }
}
