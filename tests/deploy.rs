//! The deployment artefacts (`systemd/`, `deploy/k8s/`) are part of the product, so
//! `cargo test` checks them: this runs `scripts/check_deploy.sh`, which verifies the units
//! with `systemd-analyze`, validates the manifests against the Kubernetes schema in strict
//! mode, checks the rules the schema cannot express, and has this very binary parse every
//! `modelfs mount` command line they contain. The script is the single source of those
//! checks (CI and a person at a shell run the same thing); this test gives it the binary
//! cargo just built, so the command lines are checked against the current CLI.

use std::process::Command;

#[test]
fn deployment_artefacts_pass_check_deploy() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{root}/scripts/check_deploy.sh"))
        .env("MODELFS_BIN", env!("CARGO_BIN_EXE_modelfs"))
        .output()
        .expect("run bash scripts/check_deploy.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/check_deploy.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // Each step reports what it covered; a step that silently checked nothing is a failure.
    for expected in [
        "systemd-analyze verify: modelfs.service, modelfs@mnt-models.service: no messages",
        "units: no mount-namespace options; env example: only known variables",
        "kubernetes-validate --strict: deploy/k8s/csi.yaml deploy/k8s/daemonset.yaml deploy/k8s/secret-example.yaml deploy/k8s/sidecar-pod.yaml",
        "manifests: privileges, propagation, probes, preStop, token and store rules hold",
        "check_deploy: 9 modelfs command lines parsed by the binary",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}\n{stderr}"
        );
    }
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("check_deploy: ok ("), "last line: {last:?}");
}

/// The manifests name the driver as the plugin says it is (GetPluginInfo), or the kubelet
/// would never route a volume to it.
#[test]
fn the_csi_manifests_name_the_plugins_driver() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/deploy/k8s/csi.yaml")).unwrap();
    let name = modelfs::csi::DRIVER_NAME;
    assert!(text.contains(&format!("kind: CSIDriver\nmetadata:\n  name: {name}\n")), "CSIDriver");
    assert!(text.contains(&format!("driver: {name}\n")), "volumes");
    assert!(text.contains(&format!("/var/lib/kubelet/plugins/{name}/csi.sock")), "registrar");
}
