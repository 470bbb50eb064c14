//! `modelfs csi` (doc/OPERATIONS.md, "Kubernetes: the CSI driver") spoken to over its socket
//! as the kubelet does, with a gRPC client: probe, plugin and node info, publish a volume of a
//! mock Hub repo onto a target directory and read every file through it byte-exact as an
//! unprivileged user (writes `EROFS`), publish twice, restart the plugin, unpublish twice, and
//! bad attributes with the status the pod's events would show.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bpfman_csi::v1 as csi;
use csi::identity_client::IdentityClient;
use csi::node_client::NodeClient;
use support::mock_hub::{MockConfig, MockFile, MockHub, MockRepo};
use support::mount::{bytes, getfattr, temp_dir, wait_for, Mounted};
use tonic::transport::{Channel, Endpoint, Uri};

const REPO: &str = "csi/model-onnx";

fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("config.json", b"{\"model_type\": \"tiny\"}".to_vec()),
        ("onnx/model.onnx", bytes(5, 300_000)),
        ("onnx/model_q4f16.onnx", bytes(6, 200_000)),
    ]
}

/// The plugin as a child process on `socket`, serving from the mount at `mount`.
struct Plugin(Child);

impl Plugin {
    fn start(socket: &Path, mount: &Path, log: &Path) -> Plugin {
        let child = Command::new(env!("CARGO_BIN_EXE_modelfs"))
            .args(["csi", "--node-id", "node-1", "--endpoint"])
            .arg(format!("unix://{}", socket.display()))
            .arg("--mount")
            .arg(mount)
            .env("RUST_LOG", "modelfs=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("spawn modelfs csi");
        wait_for("the CSI socket to answer", Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(socket).is_ok()
        });
        Plugin(child)
    }

    fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn channel(socket: &Path) -> Channel {
    let socket = socket.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            tokio::net::UnixStream::connect(socket.clone())
        }))
        .await
        .expect("connect to the CSI socket")
}

fn mount_capability() -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode {
            mode: csi::volume_capability::access_mode::Mode::SingleNodeReaderOnly as i32,
        }),
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume::default(),
        )),
    }
}

fn publish_request(
    id: &str,
    target: &Path,
    attrs: &[(&str, &str)],
) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_capability()),
        readonly: true,
        volume_context: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

fn unpublish_request(id: &str, target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.display().to_string(),
    }
}

/// How many mounts sit at `path`.
fn mounts_at(path: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.to_str().unwrap();
    info.lines().filter(|l| l.split(' ').nth(4) == Some(path)).count()
}

/// Run `cmd` as `nobody` (uid and gid 65534, no groups): what an unprivileged pod is.
fn as_nobody(cmd: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"])
        .args(cmd)
        .output()
        .expect("setpriv");
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn a_pod_volume_is_published_read_only_and_survives_a_plugin_restart() {
    let hub = MockHub::start(MockConfig::default());
    hub.add_repo(MockRepo::new(
        REPO,
        files()
            .into_iter()
            .map(
                |(p, d)| {
                    if p.ends_with(".json") {
                        MockFile::git(p, d)
                    } else {
                        MockFile::lfs(p, d)
                    }
                },
            )
            .collect(),
    ));
    let dir = temp_dir("csi");
    let m = Mounted::start(&hub.endpoint(), &dir.join("store"), &["--allow-other"]);
    let socket = dir.join("plugin/csi.sock");
    let plugin = Plugin::start(&socket, &m.path(""), &dir.join("csi.log"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let pods = dir.join("pods");
    std::fs::create_dir_all(&pods).unwrap();
    let target = pods.join("pod-1/volumes/model/mount");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();

    rt.block_on(async {
        let ch = channel(&socket).await;
        let (mut id, mut node) = (IdentityClient::new(ch.clone()), NodeClient::new(ch));
        let info = id.get_plugin_info(csi::GetPluginInfoRequest {}).await.unwrap().into_inner();
        assert_eq!(info.name, "modelfs.csi.huggingface.co");
        assert_eq!(id.probe(csi::ProbeRequest {}).await.unwrap().into_inner().ready, Some(true));
        let n = node.node_get_info(csi::NodeGetInfoRequest {}).await.unwrap().into_inner();
        assert_eq!(n.node_id, "node-1");

        // An inline volume of the q4f16 view, as the kubelet sends it.
        let attrs = [("repo", REPO), ("quant", "q4f16"), ("csi.storage.k8s.io/ephemeral", "true")];
        node.node_publish_volume(publish_request("vol-1", &target, &attrs)).await.unwrap();
        // Twice: the same answer, one mount.
        node.node_publish_volume(publish_request("vol-1", &target, &attrs)).await.unwrap();
        assert_eq!(mounts_at(&target), 1);
    });

    // Exactly what the mount's view shows, read byte-exact by an unprivileged user.
    let mut listed: Vec<String> = walk(&target);
    listed.sort();
    assert_eq!(listed, ["config.json", "onnx/model_q4f16.onnx"]);
    for (path, data) in files().iter().filter(|(p, _)| listed.iter().any(|l| l == p)) {
        let got = as_nobody(&["cat", target.join(path).to_str().unwrap()]).unwrap();
        assert!(got == *data, "{path} read wrong through the volume");
    }
    assert_eq!(
        getfattr(&target.join("onnx/model_q4f16.onnx"), "user.modelfs.status").unwrap(),
        "verified"
    );
    let write = as_nobody(&["touch", target.join("new").to_str().unwrap()]).unwrap_err();
    assert!(write.contains("Read-only file system"), "{write}");
    let e = std::fs::write(target.join("config.json"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));

    // A restart of the plugin between publish and unpublish: it finds the mount as it is.
    plugin.stop();
    let plugin = Plugin::start(&socket, &m.path(""), &dir.join("csi-2.log"));
    rt.block_on(async {
        let mut node = NodeClient::new(channel(&socket).await);
        let attrs = [("repo", REPO), ("quant", "q4f16")];
        node.node_publish_volume(publish_request("vol-1", &target, &attrs)).await.unwrap();
        assert_eq!(mounts_at(&target), 1);
        // The same target asked for another volume: refused, not stacked.
        let other = node
            .node_publish_volume(publish_request("vol-1", &target, &[("repo", REPO)]))
            .await
            .unwrap_err();
        assert_eq!(other.code(), tonic::Code::AlreadyExists, "{other:?}");
        node.node_unpublish_volume(unpublish_request("vol-1", &target)).await.unwrap();
        assert_eq!(mounts_at(&target), 0);
        assert!(!target.exists(), "the target directory is removed");
        node.node_unpublish_volume(unpublish_request("vol-1", &target)).await.unwrap();
    });
    plugin.stop();
    assert!(!socket.exists(), "the plugin left its socket behind");
    assert!(m.log().lines().all(|l| !l.contains("ERROR")), "{}", m.log());
}

#[test]
fn bad_volumes_fail_with_the_status_the_pod_shows() {
    let hub = MockHub::start(MockConfig::default());
    hub.add_repo(MockRepo::new(REPO, vec![MockFile::git("config.json", b"{}".to_vec())]));
    let dir = temp_dir("csi-bad");
    let m = Mounted::start(&hub.endpoint(), &dir.join("store"), &["--allow-other"]);
    let socket = dir.join("csi.sock");
    let plugin = Plugin::start(&socket, &m.path(""), &dir.join("csi.log"));
    let target = dir.join("target");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut node = NodeClient::new(channel(&socket).await);
        for (attrs, code, says) in [
            (vec![], tonic::Code::InvalidArgument, "`repo` is required"),
            (vec![("repo", "no-slash")], tonic::Code::InvalidArgument, "not a Hub repo id"),
            (
                vec![("repo", REPO), ("quant", "q4f16"), ("colour", "red")],
                tonic::Code::InvalidArgument,
                "unknown volume attribute",
            ),
            (vec![("repo", "csi/no-such-repo")], tonic::Code::NotFound, "no such repo"),
            (vec![("repo", REPO), ("quant", "q2_k")], tonic::Code::NotFound, "no such repo"),
            (
                vec![("repo", REPO), ("subPath", "config.json")],
                tonic::Code::InvalidArgument,
                "is a file",
            ),
        ] {
            let e =
                node.node_publish_volume(publish_request("v", &target, &attrs)).await.unwrap_err();
            assert_eq!(e.code(), code, "{attrs:?}: {e:?}");
            assert!(e.message().contains(says), "{attrs:?}: {}", e.message());
            assert!(!target.exists() || mounts_at(&target) == 0, "{attrs:?} left a mount");
        }
        let mut block = publish_request("v", &target, &[("repo", REPO)]);
        block.volume_capability.as_mut().unwrap().access_type =
            Some(csi::volume_capability::AccessType::Block(Default::default()));
        let e = node.node_publish_volume(block).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = node
            .node_publish_volume(publish_request(
                "v",
                Path::new("relative/path"),
                &[("repo", REPO)],
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    });
    plugin.stop();
    // With no mount there, the plugin is not ready.
    let elsewhere = dir.join("not-a-mount");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let socket = dir.join("csi-2.sock");
    let plugin = Plugin::start(&socket, &elsewhere, &dir.join("csi-2.log"));
    rt.block_on(async {
        let mut id = IdentityClient::new(channel(&socket).await);
        let e = id.probe(csi::ProbeRequest {}).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    });
    plugin.stop();
}

/// Every file below `root`, as paths relative to it.
fn walk(root: &Path) -> Vec<String> {
    fn go(root: &Path, dir: &PathBuf, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                go(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    go(root, &root.to_path_buf(), &mut out);
    out
}
