//! The namespace helpers on the real kernel (root).

mod common;

use common::{TestLab, run};
use linen_lab::{Netns, NetnsGuard, netns};

#[test]
fn ensure_is_idempotent_and_the_guard_deletes() {
    let lab = TestLab::new();
    let name = format!("{}-n1", lab.name);
    {
        let guard = NetnsGuard::ensure(&name).expect("create");
        assert!(guard.exists());
        assert!(guard.path().starts_with("/var/run/netns"));
        Netns::ensure(&name).expect("ensure again");
        assert!(netns::list().unwrap().contains(&name));
        // Commands really run inside: only a loopback device there.
        let links = run(&mut guard.ip(["-o", "link", "show"]));
        assert_eq!(links.lines().count(), 1, "{links}");
        let inside = run(guard.command("cat").arg("/proc/net/dev"));
        assert!(
            inside.contains("lo:") && !inside.contains("eth0"),
            "{inside}"
        );
        assert_eq!(guard.pids().unwrap(), Vec::<i32>::new());
    }
    assert!(!Netns::new(&name).exists());
    Netns::new(&name)
        .delete()
        .expect("deleting a missing namespace is fine");
}
