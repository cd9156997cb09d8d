use std::sync::Mutex;

use super::*;
use crate::membership::Member;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn script_of(d: Desired) -> String {
    match d {
        Desired::Script(s) => s,
        other => panic!("no script: {other:?}"),
    }
}

#[test]
fn renders_one_rule_per_family() {
    let s = script_of(desired(&[net("10.244.0.0/16")], &[net("10.244.3.0/24")]).unwrap());
    assert!(s.starts_with("add table inet linen\ndelete table inet linen\ntable inet linen {\n"));
    assert!(s.contains(&format!("comment \"{OWNER}\"")), "{s}");
    assert!(
        s.contains("type nat hook postrouting priority srcnat; policy accept;"),
        "{s}"
    );
    let rules: Vec<&str> = s
        .lines()
        .filter(|l| l.contains("masquerade fully-random"))
        .collect();
    assert_eq!(rules.len(), 1, "{s}");
    assert!(
        rules[0].trim().starts_with(
            "ip saddr 10.244.3.0/24 ip daddr != 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random comment"
        ),
        "{s}"
    );

    // Family-aware: an IPv6 pod subnet gets an ip6 rule against the IPv6 cluster CIDR.
    let s = script_of(
        desired(
            &[net("10.244.0.0/16"), net("fd10::/48")],
            &[net("10.244.3.7/24"), net("fd10:0:0:3::/64")],
        )
        .unwrap(),
    );
    let rules: Vec<&str> = s
        .lines()
        .filter(|l| l.contains("masquerade fully-random"))
        .collect();
    assert_eq!(rules.len(), 2, "{s}");
    assert!(
        rules[0].contains("ip saddr 10.244.3.0/24 "),
        "host bits cut: {s}"
    );
    assert!(
        rules[1].trim().starts_with(
            "ip6 saddr fd10:0:0:3::/64 ip6 daddr != fd10::/48 ip6 daddr != ff00::/8 masquerade"
        ),
        "{s}"
    );
}

#[test]
fn refusals_and_unknown() {
    assert_eq!(
        desired(&[net("10.244.0.0/16")], &[]).unwrap(),
        Desired::Unknown
    );
    assert!(matches!(
        desired(&[net("10.244.0.0/16")], &[net("10.9.0.0/24")]),
        Err(MasqError::OutsideCluster { .. })
    ));
    // No IPv6 cluster CIDR for an IPv6 pod subnet.
    assert!(matches!(
        desired(&[net("10.244.0.0/16")], &[net("fd10::/64")]),
        Err(MasqError::OutsideCluster { .. })
    ));
}

#[test]
fn ownership_is_the_tables_comment() {
    assert_eq!(Observed::from_listing(None), Observed::Absent);
    let ours =
        format!("table inet linen {{\n\tcomment \"{OWNER}\"\n\tchain postrouting {{\n\t}}\n}}\n");
    assert_eq!(
        Observed::from_listing(Some(ours.clone())),
        Observed::Ours(ours)
    );
    let foreign = "table inet linen {\n\tchain postrouting {\n\t}\n}\n".to_owned();
    assert_eq!(Observed::from_listing(Some(foreign)), Observed::Foreign);
    let other_comment = "table inet linen {\n\tcomment \"mine\"\n}\n".to_owned();
    assert_eq!(
        Observed::from_listing(Some(other_comment)),
        Observed::Foreign
    );
}

#[test]
fn plan_table() {
    let want = Desired::Script("S".into());
    let applied = Applied {
        script: "S".into(),
        listing: "L".into(),
    };
    let old = Applied {
        script: "OLD".into(),
        listing: "L".into(),
    };
    let ours = |l: &str| Observed::Ours(l.into());
    let cases: Vec<(&str, &Desired, Observed, Option<&Applied>, Action)> = vec![
        (
            "fresh node",
            &want,
            Observed::Absent,
            None,
            Action::Apply { repair: false },
        ),
        (
            "table deleted by hand",
            &want,
            Observed::Absent,
            Some(&applied),
            Action::Apply { repair: true },
        ),
        ("in step", &want, ours("L"), Some(&applied), Action::Nothing),
        (
            "rule deleted by hand",
            &want,
            ours("L2"),
            Some(&applied),
            Action::Apply { repair: true },
        ),
        (
            "left by an earlier flaxd",
            &want,
            ours("L"),
            None,
            Action::Apply { repair: false },
        ),
        (
            "pod subnet changed",
            &want,
            ours("L"),
            Some(&old),
            Action::Apply { repair: false },
        ),
        (
            "foreign table",
            &want,
            Observed::Foreign,
            None,
            Action::Refuse,
        ),
        (
            "foreign table, disabled",
            &Desired::Disabled,
            Observed::Foreign,
            None,
            Action::Nothing,
        ),
        (
            "disabled, ours left",
            &Desired::Disabled,
            ours("L"),
            None,
            Action::Delete,
        ),
        (
            "disabled, none",
            &Desired::Disabled,
            Observed::Absent,
            None,
            Action::Nothing,
        ),
        (
            "subnet unknown",
            &Desired::Unknown,
            Observed::Absent,
            None,
            Action::Nothing,
        ),
        (
            "subnet unknown, ours",
            &Desired::Unknown,
            ours("L"),
            Some(&applied),
            Action::Nothing,
        ),
    ];
    for (name, d, o, last, want) in cases {
        assert_eq!(plan(d, &o, last), want, "{name}");
    }
}

/// A fake nftables: one optional table listing; `apply` records scripts and sets the
/// listing to what the script declares (the text between the first `table` block lines).
#[derive(Default)]
struct FakeNft {
    table: Mutex<Option<String>>,
    applied: Mutex<Vec<String>>,
}

impl Nft for &FakeNft {
    async fn list(&self) -> Result<Option<String>> {
        Ok(self.table.lock().unwrap().clone())
    }
    async fn apply(&self, script: &str) -> Result<()> {
        self.applied.lock().unwrap().push(script.to_owned());
        let mut t = self.table.lock().unwrap();
        if script.starts_with("delete table") {
            *t = None;
        } else {
            // What nft would print: the table block of the script.
            let start = script.find("table inet linen {").unwrap();
            *t = Some(script[start..].to_owned());
        }
        Ok(())
    }
}

fn snap(pod: Option<&str>) -> Snapshot {
    let mut s = Snapshot {
        synced: true,
        ..Snapshot::default()
    };
    s.members.insert(
        "n1".into(),
        Member {
            vtep: "192.0.2.1".parse().unwrap(),
            pod_cidrs: pod.map(net).into_iter().collect(),
        },
    );
    s
}

#[tokio::test]
async fn creates_repairs_and_counts() {
    let fake = FakeNft::default();
    let metrics = Metrics::new();
    let mut m = Masquerade::new(
        &fake,
        true,
        vec![net("10.244.0.0/16")],
        Vec::new(),
        "n1".into(),
        metrics.clone(),
    );
    // No pod subnet yet: nothing.
    assert_eq!(m.once(&snap(None)).await.unwrap(), Action::Nothing);
    assert!(fake.applied.lock().unwrap().is_empty());
    assert_eq!(
        m.once(&snap(Some("10.244.1.0/24"))).await.unwrap(),
        Action::Apply { repair: false }
    );
    assert!(metrics.ip_masq_rules_ok.load(Ordering::Relaxed));
    assert_eq!(
        m.once(&snap(Some("10.244.1.0/24"))).await.unwrap(),
        Action::Nothing
    );
    assert_eq!(fake.applied.lock().unwrap().len(), 1, "in step: no write");
    // A rule deleted by hand.
    *fake.table.lock().unwrap() = Some(format!("table inet linen {{\n\tcomment \"{OWNER}\"\n}}\n"));
    assert_eq!(
        m.once(&snap(Some("10.244.1.0/24"))).await.unwrap(),
        Action::Apply { repair: true }
    );
    assert_eq!(metrics.ip_masq_repairs.load(Ordering::Relaxed), 1);
    // A foreign table of the same name: refused, untouched.
    let foreign = "table inet linen {\n\tchain x {\n\t}\n}\n".to_owned();
    *fake.table.lock().unwrap() = Some(foreign.clone());
    assert!(matches!(
        m.once(&snap(Some("10.244.1.0/24"))).await,
        Err(MasqError::Foreign)
    ));
    assert_eq!(
        fake.table.lock().unwrap().as_deref(),
        Some(foreign.as_str())
    );
    assert!(!metrics.ip_masq_rules_ok.load(Ordering::Relaxed));
    assert!(matches!(uninstall(&&fake).await, Err(MasqError::Foreign)));
    assert_eq!(
        fake.table.lock().unwrap().as_deref(),
        Some(foreign.as_str())
    );
    // Ours again, then uninstalled.
    *fake.table.lock().unwrap() = None;
    m.once(&snap(Some("10.244.1.0/24"))).await.unwrap();
    assert!(uninstall(&&fake).await.unwrap());
    assert!(fake.table.lock().unwrap().is_none());
    assert!(!uninstall(&&fake).await.unwrap(), "idempotent");
}

#[tokio::test]
async fn disabled_creates_nothing_and_removes_ours() {
    let fake = FakeNft::default();
    let metrics = Metrics::new();
    let mut m = Masquerade::new(
        &fake,
        false,
        vec![net("10.244.0.0/16")],
        vec![net("10.244.1.0/24")],
        "n1".into(),
        metrics.clone(),
    );
    assert!(!metrics.ip_masq_enabled.load(Ordering::Relaxed));
    assert_eq!(m.once(&snap(None)).await.unwrap(), Action::Nothing);
    assert!(fake.applied.lock().unwrap().is_empty());
    *fake.table.lock().unwrap() = Some(format!("table inet linen {{\n\tcomment \"{OWNER}\"\n}}\n"));
    assert_eq!(m.once(&snap(None)).await.unwrap(), Action::Delete);
    assert!(fake.table.lock().unwrap().is_none());
}
