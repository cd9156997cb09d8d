//! The measurement baseline, not product code: linen's ADD work done the way many OVS CNI
//! plugins do it (and Linen's 2017 predecessor did), one `ovs-vsctl` process per step.

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::bed::{LINUX_BRIDGE, NodeCtx, OVS_BRIDGE};
use crate::proc;

/// The steps, as argument lists: `ovs-vsctl --may-exist add-br`, `set bridge
/// fail_mode/datapath_type`, one `--may-exist add-port` per remote VTEP (vxlan,
/// `key=flow`, protected like linen's), then `ip link set br0 master kbr0 up`.
pub fn steps(db: &str, local: IpAddr, vteps: &[IpAddr]) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<String>>();
    let db = format!("--db=unix:{db}");
    let mut out = vec![
        s(&["ovs-vsctl", &db, "--may-exist", "add-br", OVS_BRIDGE]),
        s(&[
            "ovs-vsctl",
            &db,
            "set",
            "bridge",
            OVS_BRIDGE,
            "fail_mode=standalone",
            "datapath_type=netdev",
        ]),
    ];
    for remote in vteps.iter().filter(|ip| **ip != local) {
        let name = linen::naming::tunnel_port_name(*remote);
        out.push(s(&[
            "ovs-vsctl",
            &db,
            "--may-exist",
            "add-port",
            OVS_BRIDGE,
            &name,
            "--",
            "set",
            "interface",
            &name,
            "type=vxlan",
            &format!("options:remote_ip={remote}"),
            "options:key=flow",
            "--",
            "set",
            "port",
            &name,
            "protected=true",
        ]));
    }
    out.push(s(&[
        "ip",
        "link",
        "set",
        OVS_BRIDGE,
        "master",
        LINUX_BRIDGE,
        "up",
    ]));
    out
}

/// Runs [`steps`] inside the node's namespace; the wall time of the whole sequence.
pub fn vsctl_add(n: &NodeCtx<'_>, vteps: &[IpAddr]) -> Result<Duration> {
    let socket = n.node.ovsdb_socket.display().to_string();
    let steps = steps(&socket, IpAddr::V4(n.underlay_ip()), vteps);
    let started = Instant::now();
    for step in &steps {
        let mut cmd = Command::new(&step[0]);
        cmd.args(&step[1..]);
        proc::run(&mut cmd, Some(n.netns()), b"")?.check(&step.join(" "))?;
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_fork_per_step_and_own_vtep_skipped() {
        let local: IpAddr = "10.245.2.1".parse().unwrap();
        let vteps: Vec<IpAddr> = ["10.245.2.1", "10.245.2.2", "198.18.0.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let steps = steps("/x/db.sock", local, &vteps);
        assert_eq!(steps.len(), 2 + 2 + 1);
        assert_eq!(steps[0][..2], ["ovs-vsctl", "--db=unix:/x/db.sock"]);
        assert!(steps[2].contains(&"vxif10_245_2_2".to_owned()));
        assert!(steps[2].contains(&"options:remote_ip=10.245.2.2".to_owned()));
        assert!(steps[3].contains(&"options:remote_ip=198.18.0.1".to_owned()));
        assert_eq!(steps[4][0], "ip");
    }
}
