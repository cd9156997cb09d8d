//! Control groups a test's container runtime creates: named by the test (podman's
//! `--cgroup-parent /lnt<pid>-...`, say), found in every mounted hierarchy (cgroup v1
//! controllers and the v2 one), and removed by a guard even when the runtime leaves them
//! (podman 4.3 leaves its `conmon` cgroup). `scripts/sweep-test-leftovers.sh` removes those
//! of killed runs the same way.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The mount points of every cgroup hierarchy (`cgroup` and `cgroup2` in /proc/mounts).
pub fn hierarchies() -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, target, kind) = (f.next()?, f.next()?, f.next()?);
            matches!(kind, "cgroup" | "cgroup2").then(|| PathBuf::from(target))
        })
        .collect()
}

/// Every cgroup directory `<hierarchy>/<name>` that exists now.
pub fn existing(name: &str) -> Vec<PathBuf> {
    hierarchies()
        .into_iter()
        .map(|h| h.join(name))
        .filter(|p| p.is_dir())
        .collect()
}

/// Removes the cgroup tree `name` (relative to each hierarchy's root) from every
/// hierarchy: first the processes still in it (SIGKILL), then the directories, deepest
/// first (a cgroup is removed with rmdir once it has no children and no processes).
/// Missing is success; the first failure is returned after trying everything.
pub fn remove(name: &str) -> io::Result<()> {
    let mut first = None;
    for root in existing(name) {
        if let Err(e) = remove_tree(&root)
            && first.is_none()
        {
            first = Some(e);
        }
    }
    first.map_or(Ok(()), Err)
}

fn remove_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
        // SAFETY: kill(2) with a pid read from the cgroup; ESRCH (gone) is fine.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    // A killed process leaves its cgroup once it is reaped: await the rmdir.
    let mut last = None;
    let done = crate::try_eventually(
        format!("cgroup {} to be removable", dir.display()),
        std::time::Duration::from_secs(2),
        || match fs::remove_dir(dir) {
            Ok(()) => Some(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some(()),
            Err(e) => {
                last = Some(e);
                None
            }
        },
    );
    match (done, last) {
        (Ok(()), _) => Ok(()),
        (Err(t), Some(e)) => Err(io::Error::new(e.kind(), format!("{t}: {e}"))),
        (Err(t), None) => Err(io::Error::other(t.to_string())),
    }
}

/// Removes the cgroup tree `name` from every hierarchy on drop (see [`remove`]).
#[derive(Debug)]
pub struct Guard {
    name: String,
}

impl Guard {
    /// Owns the cgroup tree `name` (e.g. [`crate::name`]`("podman")`); creates nothing.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    /// The cgroup path to hand the runtime: `/<name>`.
    pub fn parent(&self) -> String {
        format!("/{}", self.name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = remove(&self.name) {
            eprintln!("testkit: cannot remove cgroup {}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real cgroup tree (root: the test creates it in every writable hierarchy),
    /// nested, is found and removed by the guard.
    #[test]
    fn a_nested_cgroup_tree_is_removed_from_every_hierarchy() {
        crate::require::root();
        let name = crate::name("cgtest");
        let mut made = 0;
        for h in hierarchies() {
            if fs::create_dir_all(h.join(&name).join("inner/deeper")).is_ok() {
                made += 1;
            }
        }
        assert!(made > 0, "no cgroup hierarchy is writable here");
        assert_eq!(existing(&name).len(), made);
        drop(Guard::new(&name));
        assert!(existing(&name).is_empty(), "{:?}", existing(&name));
    }
}
