//! `modelfs csi`: a Kubernetes CSI node plugin (Identity and Node services, gRPC over a unix
//! socket) beside a node-wide modelfs mount. A pod asks for a model as a volume; the kubelet
//! calls `NodePublishVolume`, and the plugin bind-mounts, read-only, the subtree of the mount
//! the volume names (`<mount>/<org>/<repo>[@rev]/<quant|all>[/<subPath>]`) onto the pod's
//! target path. The privileged part (FUSE, bind mounts) runs once per node; the pods that
//! read need no privilege at all (doc/OPERATIONS.md, "Kubernetes: the CSI driver").
//!
//! The plugin keeps no state: whether a volume is published is what `/proc/self/mountinfo`
//! says about its target path, so a publish or unpublish repeated (the spec requires both to
//! be idempotent) or sent after a restart of the plugin finds the mount as it is. Only the
//! Node service's publish and unpublish are implemented: there is no controller (nothing to
//! provision: the Hub has the data) and no staging (a bind mount per pod costs nothing).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bpfman_csi::v1 as csi;
use csi::identity_server::{Identity, IdentityServer};
use csi::node_server::{Node, NodeServer};
use tonic::{Request, Response, Status};

use crate::manifest::RepoId;
use crate::names;

/// The driver's name, as the `CSIDriver` object and every volume's `driver:` say it.
pub const DRIVER_NAME: &str = "modelfs.csi.huggingface.co";

/// The volume attributes a volume may set (`volumeAttributes` of an inline volume or a
/// PersistentVolume); any other key not set by Kubernetes itself is refused, so that a typo
/// fails the pod with a message instead of mounting the wrong thing.
pub const ATTRIBUTES: [&str; 4] = ["repo", "revision", "quant", "subPath"];

/// How long requests in flight may take to finish once the plugin is told to stop.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Keys the kubelet adds to the volume context by itself (`podInfoOnMount`, ephemeral volumes).
const KUBERNETES_PREFIX: &str = "csi.storage.k8s.io/";

/// The directory of the mount a volume shows: `<mount>/<org>/<repo>[@rev]/<quant|all>[/<sub>]`,
/// from its attributes, every part checked with the mount's own name rules. An error is the
/// gRPC status the pod's events show.
pub fn volume_source(
    mount: &Path,
    attrs: &HashMap<String, String>,
) -> Result<PathBuf, VolumeError> {
    let unknown: Vec<&str> = attrs
        .keys()
        .map(String::as_str)
        .filter(|k| !ATTRIBUTES.contains(k) && !k.starts_with(KUBERNETES_PREFIX))
        .collect();
    if !unknown.is_empty() {
        return Err(VolumeError::Invalid(format!(
            "unknown volume attribute(s) {unknown:?}: a modelfs volume takes {}",
            ATTRIBUTES.join(", ")
        )));
    }
    let get = |k: &str| attrs.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let repo_id = get("repo").ok_or_else(|| {
        VolumeError::Invalid("volume attribute `repo` is required (org/name of a Hub repo)".into())
    })?;
    let repo = RepoId::parse(repo_id).ok_or_else(|| {
        VolumeError::Invalid(format!("repo {repo_id:?} is not a Hub repo id (org/name)"))
    })?;
    let mut dir = mount.join(&repo.org);
    match get("revision") {
        Some(rev) if names::valid_revision(rev) => dir.push(format!("{}@{rev}", repo.name)),
        Some(rev) => {
            return Err(VolumeError::Invalid(format!(
                "revision {rev:?} is not a branch, tag or commit name"
            )))
        }
        None => dir.push(&repo.name),
    }
    match get("quant") {
        Some(q) if names::valid_repo_path(q) && !q.contains('/') => dir.push(q),
        Some(q) => return Err(VolumeError::Invalid(format!("quant {q:?} is not a quant name"))),
        None => dir.push(crate::fs::ALL_VIEW),
    }
    if let Some(sub) = get("subPath") {
        if !names::valid_repo_path(sub) {
            return Err(VolumeError::Invalid(format!(
                "subPath {sub:?} is not a relative path inside the repo"
            )));
        }
        dir.push(sub);
    }
    Ok(dir)
}

/// The plugin: the mount it publishes from, and the node it says it is.
pub struct Plugin {
    mount: PathBuf,
    node_id: String,
}

impl Plugin {
    pub fn new(mount: PathBuf, node_id: String) -> Self {
        Self { mount, node_id }
    }

    /// Serve both services on the unix socket `socket` (replacing a stale one) until
    /// `shutdown` resolves.
    pub async fn serve(
        self,
        socket: &Path,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), CsiError> {
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(CsiError::Socket { path: socket.to_owned(), source }),
        }
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|source| CsiError::Socket { path: socket.to_owned(), source })?;
        }
        let listener = tokio::net::UnixListener::bind(socket)
            .map_err(|source| CsiError::Socket { path: socket.to_owned(), source })?;
        tracing::info!(socket = %socket.display(), mount = %self.mount.display(), node = %self.node_id, "CSI node plugin listening");
        let plugin = std::sync::Arc::new(self);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(IdentityServer::from_arc(plugin.clone()))
                .add_service(NodeServer::from_arc(plugin))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        tokio::pin!(server);
        tokio::select! {
            ended = &mut server => return ended.map_err(|e| CsiError::Task(e.to_string()))?.map_err(CsiError::Serve),
            () = shutdown => {}
        }
        let _ = stop.send(());
        // The next plugin binds anew; a registrar must not find this one's socket meanwhile.
        let _ = std::fs::remove_file(socket);
        // The kubelet keeps its connection open: a graceful end would wait for it forever.
        // Requests in flight get SHUTDOWN_GRACE to finish (a mount is milliseconds).
        match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
            Ok(ended) => ended.map_err(|e| CsiError::Task(e.to_string()))?.map_err(CsiError::Serve),
            Err(_) => {
                tracing::info!("CSI node plugin stopped with connections still open");
                Ok(())
            }
        }
    }
}

/// The node's modelfs mount at `mount`, if it is there and answers.
fn mount_ready(mount: &Path) -> Result<crate::mounts::MountEntry, VolumeError> {
    let top = crate::mounts::top_mount_at(mount)
        .map_err(|e| VolumeError::Unavailable(format!("reading mountinfo: {e}")))?;
    match top {
        Some(m) if m.is_modelfs() => match nix::sys::statfs::statfs(mount) {
            Ok(_) => Ok(m),
            Err(e) => Err(VolumeError::Unavailable(format!(
                "the modelfs mount at {} does not answer: {e}",
                mount.display()
            ))),
        },
        _ => Err(VolumeError::NotReady(format!(
            "no modelfs mount at {} (start `modelfs mount {}` first)",
            mount.display(),
            mount.display()
        ))),
    }
}

/// Why a volume could not be published or unpublished (or the plugin is not ready); each
/// kind is one gRPC code at the edge, with the message the pod's events show.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A request or attribute that cannot be right.
    #[error("{0}")]
    Invalid(String),
    /// No such repo, revision, quant or path.
    #[error("{0}")]
    NotFound(String),
    /// Gated or private, and the node's token may not read it.
    #[error("{0}")]
    Denied(String),
    /// The target path holds another mount.
    #[error("{0}")]
    Taken(String),
    /// The node's modelfs mount is not there.
    #[error("{0}")]
    NotReady(String),
    /// The node's modelfs mount does not answer, or the Hub behind it.
    #[error("{0}")]
    Unavailable(String),
    /// A mount operation failed.
    #[error("{0}")]
    Internal(String),
}

impl From<VolumeError> for Status {
    fn from(e: VolumeError) -> Self {
        let message = e.to_string();
        match e {
            VolumeError::Invalid(_) => Status::invalid_argument(message),
            VolumeError::NotFound(_) => Status::not_found(message),
            VolumeError::Denied(_) => Status::permission_denied(message),
            VolumeError::Taken(_) => Status::already_exists(message),
            VolumeError::NotReady(_) => Status::failed_precondition(message),
            VolumeError::Unavailable(_) => Status::unavailable(message),
            VolumeError::Internal(_) => Status::internal(message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CsiError {
    #[error("CSI socket {path}: {source}")]
    Socket { path: PathBuf, source: std::io::Error },
    #[error("CSI server: {0}")]
    Serve(tonic::transport::Error),
    #[error("CSI server task: {0}")]
    Task(String),
    #[error("--endpoint {0:?}: expected unix:///PATH or an absolute path")]
    Endpoint(String),
}

/// `unix:///csi/csi.sock` (as the kubelet's registrar passes it) or `/csi/csi.sock`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, CsiError> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    let path = Path::new(path);
    if path.is_absolute() {
        Ok(path.to_owned())
    } else {
        Err(CsiError::Endpoint(endpoint.to_owned()))
    }
}

/// What is mounted at `target` now, if anything: its root inside its filesystem, and whether
/// that filesystem is modelfs.
fn mounted_at(target: &Path) -> Result<Option<crate::mounts::MountEntry>, VolumeError> {
    crate::mounts::top_mount_at(target)
        .map_err(|e| VolumeError::Internal(format!("reading mountinfo: {e}")))
}

/// Bind-mount `source` read-only at `target` (created if missing), or find it there already.
/// Without the node's mount, the directory below it would be bound instead: not ready.
fn publish(mount: &Path, source: &Path, target: &Path) -> Result<(), VolumeError> {
    let live = mount_ready(mount)?.dev;
    use nix::mount::MsFlags;
    let meta = std::fs::metadata(source).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => VolumeError::NotFound(format!(
            "{}: no such repo, revision, quant or path",
            source.strip_prefix(mount).unwrap_or(source).display()
        )),
        Some(libc::EACCES) => VolumeError::Denied(format!(
            "{}: gated or private, and the node's token may not read it",
            source.strip_prefix(mount).unwrap_or(source).display()
        )),
        _ => VolumeError::Unavailable(format!("{}: {e}", source.display())),
    })?;
    if !meta.is_dir() {
        return Err(VolumeError::Invalid(format!(
            "{} is a file: a volume is a directory (drop subPath, or name its directory)",
            source.strip_prefix(mount).unwrap_or(source).display()
        )));
    }
    let root = Path::new("/").join(source.strip_prefix(mount).unwrap_or(source));
    if let Some(existing) = mounted_at(target)? {
        if existing.is_modelfs() && existing.root == root {
            if existing.dev == live {
                return Ok(());
            }
            // A bind of a modelfs mount that has since been replaced (the daemon restarted):
            // dead, it would answer ENOTCONN. Detach it and bind the live one.
            nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
                VolumeError::Internal(format!(
                    "detaching the stale mount at {}: {e}",
                    target.display()
                ))
            })?;
            return publish(mount, source, target);
        }
        return Err(VolumeError::Taken(format!(
            "{} is already a mount of {} {}",
            target.display(),
            existing.fstype,
            existing.root.display()
        )));
    }
    std::fs::create_dir_all(target)
        .map_err(|e| VolumeError::Internal(format!("creating {}: {e}", target.display())))?;
    let none: Option<&str> = None;
    nix::mount::mount(Some(source), target, none, MsFlags::MS_BIND, none)
        .map_err(|e| VolumeError::Internal(format!("bind-mounting {}: {e}", source.display())))?;
    // A bind mount takes its read-only flag only from a remount.
    let ro = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    if let Err(e) = nix::mount::mount(none, target, none, ro, none) {
        let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
        return Err(VolumeError::Internal(format!("making {} read-only: {e}", target.display())));
    }
    Ok(())
}

/// Unmount `target` if something is mounted there, then remove the directory; nothing there
/// is success.
fn unpublish(target: &Path) -> Result<(), VolumeError> {
    use nix::mount::{umount2, MntFlags};
    while mounted_at(target)?.is_some() {
        if let Err(e) = umount2(target, MntFlags::empty()) {
            // Busy (a process of the pod still in it): detach, as the kubelet expects the
            // target gone.
            umount2(target, MntFlags::MNT_DETACH).map_err(|e2| {
                VolumeError::Internal(format!("unmounting {}: {e}; {e2}", target.display()))
            })?;
        }
    }
    match std::fs::remove_dir(target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(VolumeError::Internal(format!("removing {}: {e}", target.display()))),
    }
}

fn target_of(target: &str) -> Result<PathBuf, VolumeError> {
    let path = Path::new(target);
    if target.is_empty() || !path.is_absolute() {
        return Err(VolumeError::Invalid("target_path must be an absolute path".into()));
    }
    Ok(path.to_owned())
}

/// Run a blocking mount operation off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VolumeError> + Send + 'static,
) -> Result<T, VolumeError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| VolumeError::Internal(e.to_string()))?
}

#[tonic::async_trait]
impl Identity for Plugin {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: HashMap::new(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        // A node-only plugin: no controller service, no topology.
        Ok(Response::new(csi::GetPluginCapabilitiesResponse { capabilities: vec![] }))
    }

    async fn probe(
        &self,
        _: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        let mount = self.mount.clone();
        blocking(move || mount_ready(&mount).map(drop)).await?;
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}

#[tonic::async_trait]
impl Node for Plugin {
    async fn node_stage_volume(
        &self,
        _: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        Err(Status::unimplemented("modelfs volumes are not staged (no STAGE_UNSTAGE_VOLUME)"))
    }

    async fn node_unstage_volume(
        &self,
        _: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        Err(Status::unimplemented("modelfs volumes are not staged (no STAGE_UNSTAGE_VOLUME)"))
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(VolumeError::Invalid("volume_id is required".into()).into());
        }
        let target = target_of(&req.target_path)?;
        let capability = req
            .volume_capability
            .ok_or_else(|| VolumeError::Invalid("volume_capability is required".into()))?;
        if let Some(csi::volume_capability::AccessType::Block(_)) = capability.access_type {
            return Err(VolumeError::Invalid(
                "a modelfs volume is a directory of files: block access is not supported".into(),
            )
            .into());
        }
        let source = volume_source(&self.mount, &req.volume_context)?;
        let mount = self.mount.clone();
        let (volume, shown) = (req.volume_id.clone(), source.clone());
        blocking(move || publish(&mount, &source, &target)).await?;
        tracing::info!(volume = %volume, source = %shown.display(), target = %req.target_path, "volume published");
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(VolumeError::Invalid("volume_id is required".into()).into());
        }
        let target = target_of(&req.target_path)?;
        blocking(move || unpublish(&target)).await?;
        tracing::info!(volume = %req.volume_id, target = %req.target_path, "volume unpublished");
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        _: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        Err(Status::unimplemented("no volume stats (GET_VOLUME_STATS is not a capability)"))
    }

    async fn node_expand_volume(
        &self,
        _: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented("modelfs volumes are read-only and cannot be expanded"))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::NodeGetCapabilitiesResponse { capabilities: vec![] }))
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn attributes_name_a_directory_of_the_mount() {
        let m = Path::new("/models");
        let src = |pairs: &[(&str, &str)]| volume_source(m, &attrs(pairs));
        assert_eq!(src(&[("repo", "org/name")]).unwrap(), Path::new("/models/org/name/all"));
        assert_eq!(
            src(&[
                ("repo", "org/name"),
                ("revision", "v1.0"),
                ("quant", "q4f16"),
                ("subPath", "onnx")
            ])
            .unwrap(),
            Path::new("/models/org/name@v1.0/q4f16/onnx")
        );
        // What the kubelet adds is not the user's.
        let ephemeral = [("repo", "org/name"), ("csi.storage.k8s.io/ephemeral", "true")];
        assert!(src(&ephemeral).is_ok());
        for (bad, says) in [
            (vec![], "`repo` is required"),
            (vec![("repo", "not-a-repo")], "not a Hub repo id"),
            (vec![("repo", "o/n"), ("revision", "a..b")], "not a branch"),
            (vec![("repo", "o/n"), ("quant", "a/b")], "not a quant name"),
            (vec![("repo", "o/n"), ("subPath", "../../etc")], "not a relative path"),
            (vec![("repo", "o/n"), ("subPath", "/abs")], "not a relative path"),
            (vec![("repo", "o/n"), ("rev", "main")], "unknown volume attribute"),
        ] {
            let e = Status::from(src(&bad).unwrap_err());
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(e.message().contains(says), "{bad:?}: {}", e.message());
        }
    }

    #[test]
    fn endpoints_are_unix_sockets() {
        assert_eq!(socket_path("unix:///csi/csi.sock").unwrap(), Path::new("/csi/csi.sock"));
        assert_eq!(socket_path("/csi/csi.sock").unwrap(), Path::new("/csi/csi.sock"));
        assert!(socket_path("csi.sock").is_err());
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
    }

    proptest! {
        /// Whatever the attributes, a volume never names anything outside the mount.
        #[test]
        fn a_volume_stays_inside_the_mount(
            repo in "\\PC{0,20}", rev in "\\PC{0,12}", quant in "\\PC{0,8}", sub in "\\PC{0,30}",
        ) {
            let a = attrs(&[("repo", &repo), ("revision", &rev), ("quant", &quant), ("subPath", &sub)]);
            if let Ok(p) = volume_source(Path::new("/models"), &a) {
                prop_assert!(p.starts_with("/models"));
                prop_assert!(p.components().all(|c| matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_))));
            }
        }
    }
}
