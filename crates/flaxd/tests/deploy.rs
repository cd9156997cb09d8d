//! Every YAML document in `deploy/` parses, decodes into its Kubernetes API type
//! (k8s-openapi, the current API versions), and holds what flaxd needs: read-only access to
//! Nodes, host networking, and the OVS / CNI host paths; one manifest (`deploy/linen.yaml`)
//! holds the whole install, runs the image `scripts/build-image.sh` builds, and configures
//! flaxd only with settings flaxd has.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use flaxd::k8s::k8s_openapi::api::apps::v1::DaemonSet;
use flaxd::k8s::k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use flaxd::k8s::k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;
use serde_json::Value;

fn documents() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut docs = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {}", dir.display());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let v = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} document {i}: {e}", f.display()));
            if !v.is_null() {
                docs.push((format!("{} #{i}", f.display()), v));
            }
        }
    }
    docs
}

fn typed<T: serde::de::DeserializeOwned>(what: &str, v: &Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[test]
fn manifests_are_valid_current_api_objects() {
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (what, v) in documents() {
        let kind = v["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no kind"));
        let api = v["apiVersion"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no apiVersion"));
        assert!(
            v["metadata"]["name"]
                .as_str()
                .is_some_and(|n| !n.is_empty()),
            "{what}: no name"
        );
        let want_api = match kind {
            "Namespace" | "ConfigMap" | "ServiceAccount" => "v1",
            "ClusterRole" | "ClusterRoleBinding" => "rbac.authorization.k8s.io/v1",
            "DaemonSet" => "apps/v1",
            other => panic!("{what}: unexpected kind {other}"),
        };
        assert_eq!(api, want_api, "{what}");
        // Decoding into the API type checks every field's type and the required ones.
        match kind {
            "Namespace" => drop(typed::<Namespace>(&what, &v)),
            "ConfigMap" => drop(typed::<ConfigMap>(&what, &v)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(&what, &v)),
            "ClusterRole" => drop(typed::<ClusterRole>(&what, &v)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(&what, &v)),
            _ => drop(typed::<DaemonSet>(&what, &v)),
        }
        by_kind.entry(kind.to_owned()).or_default().push(v);
    }
    for kind in [
        "Namespace",
        "ConfigMap",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
    ] {
        assert_eq!(by_kind.get(kind).map(Vec::len), Some(1), "one {kind}");
    }

    let ns: Namespace = typed("namespace", &by_kind["Namespace"][0]);
    let config: ConfigMap = typed("configmap", &by_kind["ConfigMap"][0]);
    let sa: ServiceAccount = typed("sa", &by_kind["ServiceAccount"][0]);
    let role: ClusterRole = typed("role", &by_kind["ClusterRole"][0]);
    let binding: ClusterRoleBinding = typed("binding", &by_kind["ClusterRoleBinding"][0]);
    let ds: DaemonSet = typed("daemonset", &by_kind["DaemonSet"][0]);

    // Least privilege: get/list/watch on nodes, nothing else.
    let rules = role.rules.unwrap_or_default();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].api_groups.as_deref(), Some(&[String::new()][..]));
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["nodes".to_string()][..])
    );
    let verbs: BTreeSet<&str> = rules[0].verbs.iter().map(String::as_str).collect();
    assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]));

    // The binding ties that role to the DaemonSet's service account.
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, role.metadata.name.clone().unwrap());
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!(subject.kind, "ServiceAccount");
    assert_eq!(Some(&subject.name), sa.metadata.name.as_ref());
    assert_eq!(subject.namespace, sa.metadata.namespace);

    let spec = ds.spec.unwrap();
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    for (k, v) in spec.selector.match_labels.clone().unwrap() {
        assert_eq!(
            pod_labels.get(&k),
            Some(&v),
            "the selector matches the pods"
        );
    }
    // Everything namespaced lives in the manifest's own namespace.
    assert!(ns.metadata.name.is_some());
    for namespaced in [
        &ds.metadata.namespace,
        &sa.metadata.namespace,
        &config.metadata.namespace,
    ] {
        assert_eq!(namespaced, &ns.metadata.name);
    }
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(
        pod.node_selector
            .as_ref()
            .and_then(|s| s.get("kubernetes.io/os"))
            .map(String::as_str),
        Some("linux")
    );
    assert_eq!(pod.service_account_name, sa.metadata.name);
    let volumes: BTreeMap<String, String> = pod
        .volumes
        .unwrap()
        .into_iter()
        .map(|v| (v.name, v.host_path.expect("hostPath volumes").path))
        .collect();
    let init = pod.init_containers.unwrap();
    assert_eq!(init.len(), 1, "the init container installs the plugin");
    assert_eq!(
        init[0].command.as_deref(),
        Some(&["/usr/local/bin/linen-install".to_string()][..]),
        "the image's install step"
    );
    // The image scripts/build-image.sh builds: its name and this version.
    let image = format!("ghcr.io/linen-cni/linen:{}", env!("CARGO_PKG_VERSION"));
    let mut mounted = BTreeSet::new();
    for c in init.iter().chain(&pod.containers) {
        assert_eq!(c.image.as_deref(), Some(image.as_str()), "{}", c.name);
        // Least privilege: not privileged, every capability dropped, none added back but
        // flaxd's NET_ADMIN (its egress masquerade table), and bounded memory.
        let sc = c.security_context.as_ref().expect("a securityContext");
        assert_ne!(sc.privileged, Some(true), "{}", c.name);
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        let caps = sc.capabilities.as_ref().expect("capabilities");
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        let added = caps.add.clone().unwrap_or_default();
        if c.name == "flaxd" {
            assert_eq!(added, ["NET_ADMIN"], "{}", c.name);
        } else {
            assert!(added.is_empty(), "{}: {added:?}", c.name);
        }
        let res = c.resources.as_ref().expect("resources");
        assert!(
            res.requests
                .as_ref()
                .is_some_and(|r| r.contains_key("memory"))
        );
        assert!(
            res.limits
                .as_ref()
                .is_some_and(|r| r.contains_key("memory"))
        );
        for m in c.volume_mounts.clone().unwrap_or_default() {
            let host = volumes
                .get(&m.name)
                .unwrap_or_else(|| panic!("{}: mount of undeclared volume {}", c.name, m.name));
            mounted.insert(host.clone());
        }
    }
    for path in ["/var/run/openvswitch", "/etc/cni/net.d", "/opt/cni/bin"] {
        assert!(mounted.contains(path), "{path} mounted: {mounted:?}");
    }
    let flaxd = &pod.containers[0];
    let env: BTreeSet<String> = flaxd
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(
        env.contains("NODE_NAME") && env.contains("FLAXD_VTEP"),
        "{env:?}"
    );
    let probe = flaxd
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.path.as_deref(), Some("/healthz"));
    assert!(
        flaxd
            .liveness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .is_some(),
        "liveness over HTTP"
    );

    // The ConfigMap reaches flaxd as environment, and each key is a setting flaxd has:
    // `flaxd --help` names every environment variable it reads.
    let from = flaxd.env_from.clone().unwrap_or_default();
    assert!(
        from.iter()
            .any(|e| e.config_map_ref.as_ref().map(|c| &c.name) == config.metadata.name.as_ref()),
        "flaxd takes its settings from the ConfigMap"
    );
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_flaxd"))
        .arg("--help")
        .output()
        .expect("run flaxd --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let data = config.data.expect("ConfigMap data");
    assert!(data.contains_key("FLAXD_CLUSTER_CIDR"), "{data:?}");
    assert_eq!(
        data.get("FLAXD_IP_MASQ").map(String::as_str),
        Some("true"),
        "egress masquerade on by default"
    );
    for key in data.keys().chain(&env) {
        assert!(
            help.contains(&format!("[env: {key}=")),
            "{key} is not a setting of flaxd (flaxd --help)"
        );
    }
}

/// Runs the offline validator (`kubernetes-validate`, schemas bundled, installed by
/// `scripts/install-deps.sh`) on `files`; returns its exit status and output.
fn kubernetes_validate(files: &[&Path]) -> (bool, String) {
    const DIR: &str = "/opt/linen-tools/py";
    assert!(
        Path::new(DIR).join("kubernetes_validate").exists(),
        "kubernetes-validate is not installed in {DIR}: run scripts/install-deps.sh"
    );
    let out = std::process::Command::new("python3")
        .env("PYTHONPATH", DIR)
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--kubernetes-version",
            "1.30.0",
        ])
        .args(files)
        .output()
        .expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn manifests_pass_an_offline_schema_validator() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let (ok, text) = kubernetes_validate(&refs);
    assert!(ok, "{text}");
    assert!(
        text.contains("daemonset/flaxd"),
        "the DaemonSet was validated: {text}"
    );

    // The validator does reject what the API server would: a field the schema lacks.
    let tmp = testkit::tempdir().unwrap();
    let broken = tmp.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers: [{name: c, image: i, hostNetwrk: true}]\n",
    )
    .unwrap();
    let (ok, text) = kubernetes_validate(&[&broken]);
    assert!(!ok, "a misspelt field must fail: {text}");
}
