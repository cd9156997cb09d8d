//! Property tests (issue 9's fuzzing): the CNI result decoder and the version conversion
//! never panic on any JSON, and whatever decodes converts to every supported version and
//! decodes again. The figures (cases, seconds) are printed.

use cni::Version;
use cni::types::Result as CniResult;
use proptest::prelude::*;
use testkit::props;

const CASES: u32 = 20_000;

/// Fields of a result, and values near valid ones, so generation reaches the validation.
const KEYS: &[&str] = &["cniVersion", "interfaces", "ips", "routes", "dns"];
const STRINGS: &[&str] = &[
    "1.0.0",
    "0.3.1",
    "10.244.1.2/24",
    "fd00::2/64",
    "10.244.1.1",
    "eth0",
    "kbr0",
    "4",
    "6",
    "0.0.0.0/0",
    "/var/run/netns/x",
    "",
];

#[test]
fn any_json_decodes_or_is_refused_and_converts_to_every_version() {
    props::check(
        "cni result decode + convert",
        CASES,
        (
            prop_oneof![props::json(), props::object_with(KEYS, STRINGS)],
            prop::sample::select(Version::SUPPORTED),
        ),
        |(value, version)| {
            if let Ok(result) = CniResult::from_value(value, version) {
                for &to in Version::SUPPORTED {
                    let doc = result.to_value(to);
                    prop_assert!(
                        CniResult::from_value(doc.clone(), to).is_ok(),
                        "{version:?} -> {to:?} produced an undecodable {doc}"
                    );
                }
            }
            Ok(())
        },
    );
}
