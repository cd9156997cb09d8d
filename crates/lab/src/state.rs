//! The lab directory: a JSON state file, and an exclusive `flock` on the
//! directory held by whichever process owns the lab (during `up`, while a
//! `Cluster` value lives, during `down`).
//!
//! A lab directory is created race-free: a staging directory holding the
//! initial state file is locked and then renamed into place. `rename` fails
//! on a non-empty target, so two `up`s of one lab can never both win, and a
//! directory without a state file was never a lab's (the lab refuses it).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::etcd::Etcd;
use crate::node::Node;
use crate::pod::Pod;
use crate::spec::{Membership, Topology};
use crate::underlay::Underlay;

pub const STATE_FILE: &str = "state.json";

#[derive(Debug, Error)]
pub enum Error {
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("read lab state {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("lock lab directory {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(step: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { step, path, source }
}

/// Who is responsible for tearing the lab down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Owner {
    /// A process holding a `Cluster`, which tears down on drop. If the lock
    /// is free while the state says this, that process died.
    Process { pid: u32 },
    /// Left running on purpose (the CLI's `up`) until `down`.
    Detached,
}

/// Everything the lab created, written before it is created so that a crash
/// at any point leaves enough to clean up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub dir: PathBuf,
    pub topology: Topology,
    pub pods_per_node: u16,
    pub owner: Owner,
    pub underlay: Underlay,
    pub nodes: Vec<Node>,
    /// Every pod, recorded before its namespace is created.
    #[serde(default)]
    pub pods: Vec<Pod>,
    #[serde(default)]
    pub membership: Membership,
    /// Who runs the pods' CNI chain.
    #[serde(default)]
    pub runtime: crate::spec::Runtime,
    /// The lab's etcd, with [`Membership::Etcd`].
    #[serde(default)]
    pub etcd: Option<Etcd>,
}

impl LabState {
    /// The node named `<lab>-n<i>`, or `n<i>`, or `<i>`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| {
            n.name == name || name.strip_prefix('n').unwrap_or(name) == n.index.to_string()
        })
    }

    /// The pod named `<lab>-n<i>-p<j>` or `n<i>-p<j>`.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.name == name || p.short_name() == name)
    }

    /// The pods of node `index`, in creation order.
    pub fn pods_on(&self, index: u8) -> impl Iterator<Item = &Pod> {
        self.pods.iter().filter(move |p| p.node == index)
    }

    /// Pods with an address (wired by a successful ADD).
    pub fn wired_pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods
            .iter()
            .filter(|p| p.ip.is_some() || p.ip6.is_some())
    }
}

/// A locked lab directory. The lock is released on drop.
#[derive(Debug)]
pub struct LabDir {
    path: PathBuf,
    _lock: Flock<File>,
}

/// Result of trying to create a lab directory.
#[derive(Debug)]
pub enum Claim {
    /// Created by us, holding `initial` as its state.
    Fresh(LabDir),
    /// It existed and we hold its lock: its state (if any) is stale or
    /// belongs to a detached lab.
    Existing(LabDir, Option<LabState>),
    /// It existed and another process holds its lock.
    Busy(Option<LabState>),
}

impl LabDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&self, state: &LabState) -> Result<()> {
        write_state(&self.path, state)
    }
}

/// Creates `dir` holding `initial` as its state, or reports who has it.
pub fn claim(dir: &Path, initial: &LabState) -> Result<Claim> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    let file_name = dir.file_name().unwrap_or_default().to_string_lossy();
    let staging = parent.join(format!(".{file_name}.{}.claim", std::process::id()));
    remove_tree(&staging)?;
    fs::create_dir(&staging).map_err(io_err("create", &staging))?;
    // Nobody else knows the staging path, so the lock is ours at once.
    let Some(lock) = try_lock(&staging)? else {
        return Err(Error::Lock {
            path: staging,
            source: Errno::EWOULDBLOCK,
        });
    };
    if let Err(e) = write_state(&staging, initial) {
        let _ = remove_tree(&staging);
        return Err(e);
    }
    match fs::rename(&staging, dir) {
        Ok(()) => Ok(Claim::Fresh(LabDir {
            path: dir.to_path_buf(),
            _lock: lock,
        })),
        Err(e) if is_occupied(&e) => {
            drop(lock);
            remove_tree(&staging)?;
            match try_lock(dir)? {
                // Read under the lock: the previous holder may have changed it.
                Some(lock) => Ok(Claim::Existing(
                    LabDir {
                        path: dir.to_path_buf(),
                        _lock: lock,
                    },
                    read_state(dir).ok().flatten(),
                )),
                None => Ok(Claim::Busy(read_state(dir).ok().flatten())),
            }
        }
        Err(e) => {
            let _ = remove_tree(&staging);
            Err(io_err("rename into place", dir)(e))
        }
    }
}

/// `rename` onto a non-empty directory (or onto a file).
fn is_occupied(e: &io::Error) -> bool {
    let code = e.raw_os_error();
    code == Some(Errno::ENOTEMPTY as i32)
        || code == Some(Errno::EEXIST as i32)
        || code == Some(Errno::ENOTDIR as i32)
}

/// Result of locking an existing lab directory.
#[derive(Debug)]
pub enum Opened {
    Missing,
    Locked(LabDir),
    Busy,
}

/// Locks the existing lab directory `dir` without waiting.
pub fn open(dir: &Path) -> Result<Opened> {
    if !dir.exists() {
        return Ok(Opened::Missing);
    }
    Ok(match try_lock(dir)? {
        Some(lock) => Opened::Locked(LabDir {
            path: dir.to_path_buf(),
            _lock: lock,
        }),
        None => Opened::Busy,
    })
}

/// The state in `dir`, `None` if there is no state file.
pub fn read_state(dir: &Path) -> Result<Option<LabState>> {
    let path = dir.join(STATE_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| Error::Parse { path, source })
}

/// Writes atomically: a reader sees the old or the new state, never half.
fn write_state(dir: &Path, state: &LabState) -> Result<()> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(state).map_err(|source| Error::Parse {
        path: path.clone(),
        source,
    })?;
    fs::write(&tmp, json).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("write", &path))
}

/// Removes a lab directory: everything but the state file first, the state
/// file last, so an interrupted removal still looks like a (stale) lab.
/// Missing is success.
pub fn remove_lab_dir(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("read", dir))?;
        if entry.file_name() != STATE_FILE {
            remove_tree(&entry.path())?;
        }
    }
    remove_tree(&dir.join(STATE_FILE))?;
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", dir)(e)),
        _ => Ok(()),
    }
}

/// True if `dir` is an empty directory.
pub fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

fn remove_tree(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

fn try_lock(dir: &Path) -> Result<Option<Flock<File>>> {
    let file = File::open(dir).map_err(io_err("open", dir))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, source)) => Err(Error::Lock {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ClusterSpec;

    fn planned(dir: &Path) -> LabState {
        ClusterSpec {
            dir: Some(dir.to_path_buf()),
            ..ClusterSpec::new("st", 2)
        }
        .plan()
    }

    #[test]
    fn claim_fresh_then_busy_then_existing() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("st");
        let state = planned(&dir);

        let Claim::Fresh(held) = claim(&dir, &state).unwrap() else {
            panic!("first claim is fresh");
        };
        assert_eq!(read_state(&dir).unwrap(), Some(state.clone()));
        // flock is per open file: a second claim, even in this process, is refused.
        assert!(matches!(claim(&dir, &state).unwrap(), Claim::Busy(Some(_))));
        assert!(matches!(open(&dir).unwrap(), Opened::Busy));
        drop(held);

        let Claim::Existing(_lock, Some(found)) = claim(&dir, &state).unwrap() else {
            panic!("released lab is existing");
        };
        assert_eq!(found, state);
        // No staging directories are left beside it.
        let names: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["st"]);
    }

    #[test]
    fn foreign_directory_is_existing_without_state() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("st");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("precious"), "keep").unwrap();
        let Claim::Existing(_, None) = claim(&dir, &planned(&dir)).unwrap() else {
            panic!("a directory without state is existing, no state");
        };
        assert!(dir.join("precious").exists());
    }

    #[test]
    fn remove_lab_dir_is_idempotent() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("st");
        let Claim::Fresh(lock) = claim(&dir, &planned(&dir)).unwrap() else {
            panic!("fresh");
        };
        fs::create_dir_all(dir.join("n1")).unwrap();
        fs::write(dir.join("n1/conf.db"), "x").unwrap();
        remove_lab_dir(&dir).unwrap();
        assert!(!dir.exists());
        remove_lab_dir(&dir).unwrap();
        assert!(matches!(open(&dir).unwrap(), Opened::Missing));
        drop(lock);
    }

    #[test]
    fn state_round_trips_through_json() {
        let state = planned(Path::new("/run/linen-lab/st"));
        let json = serde_json::to_string(&state).unwrap();
        assert!(json.contains("\"kind\":\"process\""));
        assert_eq!(serde_json::from_str::<LabState>(&json).unwrap(), state);
    }
}
