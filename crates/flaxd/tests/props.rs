//! Property tests (issue 9's fuzzing): a member record read from etcd or a peer file is
//! untrusted input. Any bytes decode or are refused without a panic; what decodes has a
//! usable, canonical VTEP and survives a round trip. Figures are printed.

use flaxd::membership::MemberRecord;
use proptest::prelude::*;
use testkit::props;

const CASES: u32 = 20_000;

const KEYS: &[&str] = &["vtep", "podCIDR"];
const STRINGS: &[&str] = &[
    "10.245.2.2",
    "::ffff:10.245.2.2",
    "fe80::1",
    "127.0.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "255.255.255.255",
    "fd00::1",
    "10.244.3.0/24",
    "10.244.3.0",
    "fd10::/64",
    "",
];

#[test]
fn any_bytes_decode_to_a_usable_member_or_are_refused() {
    props::check(
        "member record decode",
        CASES,
        prop_oneof![
            props::json().prop_map(|v| v.to_string().into_bytes()),
            props::object_with(KEYS, STRINGS).prop_map(|v| v.to_string().into_bytes()),
            prop::collection::vec(any::<u8>(), 0..256),
        ],
        |bytes| {
            if let Ok(member) = MemberRecord::parse(&bytes) {
                prop_assert_eq!(member.vtep, member.vtep.to_canonical());
                prop_assert!(linen::config::unusable_vtep(member.vtep).is_none());
                let again = MemberRecord::parse(MemberRecord::from(&member).to_json().as_bytes());
                prop_assert_eq!(again.ok(), Some(member));
            }
            Ok(())
        },
    );
}
