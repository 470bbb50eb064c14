//! `modelfs status [ORG/REPO[@REV]] [--json]`: what the store holds, as the mount's xattrs
//! tell it: per repo its refs (with the commit and when the Hub last confirmed it), and per
//! stored commit its views with `status`, cached/total bytes and how many files are in each
//! state.
//!
//! The numbers are not recomputed here: an offline [`ModelFs`] over the store is walked like
//! `getfattr -R` would walk a mount (`/<org>/<repo>@<commit>/<view>/...`) and its
//! [`ModelFs::xattrs`] read, so the table and the JSON agree with the xattrs by construction,
//! today and after any change to how the xattrs are computed. No network is used.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{human_bytes, plural, resolve, short, CommandError, Target};
use crate::cache::{CacheOptions, ModelCache};
use crate::cli::StatusArgs;
use crate::evict::FetchActivity;
use crate::fetch::PrefetchLimits;
use crate::fs::{FsConfig, Kind, ModelFs, ROOT_INO, XATTR_PREFIX};
use crate::hub::OfflineHub;
use crate::manifest::RepoId;
use crate::store::{ChunkStore, RefRecord};

/// The JSON document `status --json` prints (documented in doc/OPERATIONS.md, "Commands").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// The store directory.
    pub store: String,
    /// How the store was found: `from --store`, `the store of the mount at /models (pid 7)`...
    pub store_origin: String,
    /// Bytes the store's directory takes on disk (`du`): the data files (holes are free) and
    /// the index.
    pub disk_bytes: u64,
    /// The live mounts serving this store, and whether FUSE passthrough is in effect in each.
    pub mounts: Vec<MountStatus>,
    pub chunk_size: u64,
    /// Bytes of file data stored, over every file (what `--max-cache-size` bounds).
    pub stored_bytes: u64,
    pub repos: Vec<RepoStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MountStatus {
    pub mountpoint: String,
    pub pid: u32,
    /// `on`, or `off: <why>`.
    pub passthrough: String,
    /// What it served since it started, from where; absent until it has said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic: Option<crate::metrics::Traffic>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RepoStatus {
    /// `org/name`.
    pub repo: String,
    /// Where it comes from: `hub`; `local` (imported into this store, never evicted); `tier`
    /// (imported by another node of the shared tier).
    pub source: &'static str,
    /// Branches and tags as last resolved, sorted by name.
    pub refs: Vec<RefStatus>,
    /// Every commit with a stored manifest, sorted.
    pub commits: Vec<CommitStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefStatus {
    pub name: String,
    pub commit: String,
    /// Unix seconds when the Hub last confirmed the ref.
    pub resolved_at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CommitStatus {
    pub commit: String,
    pub pipeline_tag: Option<String>,
    /// The quant views, then `all`, as the repo directory lists them.
    pub views: Vec<ViewStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ViewStatus {
    pub name: String,
    /// The view's `user.modelfs.status`: `available`, `downloading`, `downloaded`, `failed`.
    pub status: String,
    /// The two halves of its `user.modelfs.progress`.
    pub cached_bytes: u64,
    pub total_bytes: u64,
    pub files: FileCounts,
}

/// How many of a view's files have each `user.modelfs.status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FileCounts {
    pub total: usize,
    pub verified: usize,
    pub complete: usize,
    pub partial: usize,
    pub failed: usize,
    pub missing: usize,
}

impl FileCounts {
    fn count(&mut self, status: &str) -> Result<(), CommandError> {
        let slot = match status {
            "verified" => &mut self.verified,
            "complete" => &mut self.complete,
            "partial" => &mut self.partial,
            "failed" => &mut self.failed,
            "missing" => &mut self.missing,
            other => return Err(CommandError::Internal(format!("file status {other:?}"))),
        };
        *slot += 1;
        self.total += 1;
        Ok(())
    }

    /// `3 verified, 1 partial`: the states that have files, in the order a file goes through
    /// them backwards (done first).
    fn summary(&self) -> String {
        let parts: Vec<String> = [
            (self.verified, "verified"),
            (self.complete, "complete"),
            (self.partial, "partial"),
            (self.failed, "failed"),
            (self.missing, "missing"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, s)| format!("{n} {s}"))
        .collect();
        if parts.is_empty() {
            "no files".into()
        } else {
            parts.join(", ")
        }
    }
}

pub(super) fn run(args: StatusArgs) -> Result<(), CommandError> {
    let target = args.repo.as_deref().map(Target::parse).transpose()?;
    let config = resolve(&args.store)?;
    let dir = config.store.clone();
    let cache = ModelCache::open(CacheOptions {
        store: Some(dir.clone()),
        config: args.store.config.clone(),
        inspect: true,
        ..CacheOptions::default()
    })?;
    let mut report = cache.status(target.as_ref())?;
    report.store_origin = config.origin.to_string();
    report.disk_bytes = super::disk_usage(&dir);
    let here = crate::mounts::canonical(&dir);
    report.mounts = crate::mounts::live_mounts()
        .into_iter()
        .filter(|m| crate::mounts::canonical(&m.store) == here)
        .map(|m| MountStatus {
            mountpoint: m.mountpoint.display().to_string(),
            pid: m.pid,
            passthrough: m.passthrough.unwrap_or_else(|| "unknown".into()),
            traffic: m.traffic,
        })
        .collect();
    let out = if args.json {
        let mut json = serde_json::to_string_pretty(&report)
            .map_err(|e| CommandError::Internal(e.to_string()))?;
        json.push('\n');
        json
    } else {
        render_table(&report, crate::store::unix_now())
    };
    use std::io::Write;
    std::io::stdout().write_all(out.as_bytes()).map_err(CommandError::Output)
}

/// The status of every repo in the store, or of `target` (a repo: all its refs and commits;
/// `repo@rev`: that ref, or that commit, only). `store_path` is only reported.
///
/// Store calls run inline: this is a command's single task, with nothing to starve.
pub async fn status_report(
    store: Arc<dyn ChunkStore>,
    store_path: &str,
    target: Option<&Target>,
    activity: Option<Arc<dyn FetchActivity>>,
) -> Result<StatusReport, CommandError> {
    let mut fs = ModelFs::new(
        FsConfig { offline: true, ..FsConfig::default() },
        store.clone(),
        Arc::new(OfflineHub),
        Arc::new(OfflineHub),
        Duration::from_secs(1),
        PrefetchLimits::NONE,
    );
    if let Some(activity) = activity {
        fs.set_activity(activity);
    }
    let repos = match target {
        Some(t) => vec![t.repo.clone()],
        None => store.repos()?,
    };
    let mut out = Vec::with_capacity(repos.len());
    for repo in repos {
        let (refs, commits) = scope(store.as_ref(), &repo, target)?;
        let mut commit_status = Vec::with_capacity(commits.len());
        for commit in commits {
            commit_status.push(commit_views(&fs, &repo, &commit).await?);
        }
        let source = match store.local(&repo)? {
            None => "hub",
            Some(l) if l.origin == crate::store::LocalOrigin::Imported => "local",
            Some(_) => "tier",
        };
        out.push(RepoStatus {
            repo: repo.to_string(),
            source,
            refs: refs
                .into_iter()
                .map(|(name, r)| RefStatus { name, commit: r.commit, resolved_at: r.resolved_at })
                .collect(),
            commits: commit_status,
        });
    }
    Ok(StatusReport {
        store: store_path.to_string(),
        store_origin: String::new(),
        disk_bytes: 0,
        mounts: Vec::new(),
        chunk_size: store.chunk_size(),
        stored_bytes: crate::evict::stored_bytes(store.as_ref())?,
        repos: out,
    })
}

/// Refs by name, as the store lists them.
type Refs = Vec<(String, RefRecord)>;

/// The refs and the commits of `repo` that `target` asks about.
fn scope(
    store: &dyn ChunkStore,
    repo: &RepoId,
    target: Option<&Target>,
) -> Result<(Refs, Vec<String>), CommandError> {
    let refs = store.refs(repo)?;
    let commits = store.commits(repo)?;
    let rev = target.and_then(|t| t.rev.as_deref());
    let not_stored =
        || CommandError::NotInStore(target.map_or(repo.to_string(), Target::to_string));
    match rev {
        None if refs.is_empty() && commits.is_empty() => Err(not_stored()),
        None => Ok((refs, commits)),
        Some(rev) if crate::names::is_commit(rev) => {
            if !commits.iter().any(|c| c == rev) {
                return Err(not_stored());
            }
            let refs = refs.into_iter().filter(|(_, r)| r.commit == rev).collect();
            Ok((refs, vec![rev.to_string()]))
        }
        Some(rev) => {
            let (name, record) =
                refs.into_iter().find(|(name, _)| name == rev).ok_or_else(not_stored)?;
            let commits = commits.into_iter().filter(|c| *c == record.commit).collect();
            Ok((vec![(name, record)], commits))
        }
    }
}

/// The views of `repo@commit`, read from the xattrs of `/<org>/<repo>@<commit>/<view>` and of
/// every file below each view.
pub async fn commit_views(
    fs: &ModelFs,
    repo: &RepoId,
    commit: &str,
) -> Result<CommitStatus, CommandError> {
    let walk_err = |what: &str, e: crate::fs::FsError| {
        CommandError::Internal(format!("{repo}@{commit}: {what}: {e}"))
    };
    let org = fs.lookup(ROOT_INO, &repo.org).await.map_err(|e| walk_err("org", e))?;
    let repo_dir = fs
        .lookup(org.attr.ino, &format!("{}@{commit}", repo.name))
        .await
        .map_err(|e| walk_err("repo", e))?;
    let repo_ino = repo_dir.attr.ino;
    let repo_x = xattr_map(fs.xattrs(repo_ino).await.map_err(|e| walk_err("xattrs", e))?);
    let mut views = Vec::new();
    for entry in fs.readdir(repo_ino).await.map_err(|e| walk_err("views", e))? {
        if entry.name == "." || entry.name == ".." {
            continue;
        }
        let ino = entry.entry.attr.ino;
        let x = xattr_map(fs.xattrs(ino).await.map_err(|e| walk_err(&entry.name, e))?);
        let (cached_bytes, total_bytes) = x
            .get("progress")
            .and_then(|p| p.split_once('/'))
            .and_then(|(c, t)| Some((c.parse().ok()?, t.parse().ok()?)))
            .ok_or_else(|| CommandError::Internal(format!("{}: no progress", entry.name)))?;
        let status = x.get("status").cloned().unwrap_or_default();
        let files = count_files(fs, ino).await.map_err(|e| walk_err(&entry.name, e))?;
        views.push(ViewStatus { name: entry.name, status, cached_bytes, total_bytes, files });
    }
    Ok(CommitStatus {
        commit: commit.to_string(),
        pipeline_tag: repo_x.get("pipeline_tag").cloned(),
        views,
    })
}

/// The `status` xattr of every file below the view directory `view`.
async fn count_files(fs: &ModelFs, view: u64) -> Result<FileCounts, crate::fs::FsError> {
    let mut counts = FileCounts::default();
    let mut dirs = vec![view];
    while let Some(dir) = dirs.pop() {
        for entry in fs.readdir(dir).await? {
            if entry.name == "." || entry.name == ".." {
                continue;
            }
            let ino = entry.entry.attr.ino;
            match entry.entry.attr.kind {
                Kind::Dir => dirs.push(ino),
                Kind::File => {
                    let status = fs.getxattr(ino, &format!("{XATTR_PREFIX}status")).await?;
                    counts.count(&status).map_err(|e| crate::fs::FsError::Io(e.to_string()))?;
                }
            }
        }
    }
    Ok(counts)
}

/// Xattrs by their short name (without `user.modelfs.`).
fn xattr_map(xattrs: Vec<(String, String)>) -> BTreeMap<String, String> {
    xattrs
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(XATTR_PREFIX)?.to_string(), v)))
        .collect()
}

/// The human table: per repo, its refs, then per commit a table of its views. `now` (Unix
/// seconds) dates the refs.
pub fn render_table(report: &StatusReport, now: u64) -> String {
    let mut out = String::new();
    for repo in &report.repos {
        let (suffix, event) = match repo.source {
            "local" => (" (imported, local)", "imported"),
            "tier" => (" (imported by another node, from the tier)", "seen"),
            _ => ("", "resolved"),
        };
        let _ = writeln!(out, "{}{suffix}", repo.repo);
        for r in &repo.refs {
            let _ = writeln!(
                out,
                "  {} -> {}, {event} {}",
                r.name,
                short(&r.commit),
                ago(now.saturating_sub(r.resolved_at))
            );
        }
        for c in &repo.commits {
            let tag = c.pipeline_tag.as_deref().map(|t| format!(" ({t})")).unwrap_or_default();
            let _ = writeln!(out, "  commit {}{tag}", c.commit);
            let mut rows = vec![[
                "VIEW".to_string(),
                "STATUS".to_string(),
                "CACHED".to_string(),
                "TOTAL".to_string(),
                "FILES".to_string(),
            ]];
            for v in &c.views {
                rows.push([
                    v.name.clone(),
                    v.status.clone(),
                    human_bytes(v.cached_bytes),
                    human_bytes(v.total_bytes),
                    v.files.summary(),
                ]);
            }
            let widths: Vec<usize> = (0..4)
                .map(|col| rows.iter().map(|r| r[col].chars().count()).max().unwrap_or(0))
                .collect();
            for row in rows {
                let _ = writeln!(
                    out,
                    "    {:w0$}  {:w1$}  {:>w2$}  {:>w3$}  {}",
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    row[4],
                    w0 = widths[0],
                    w1 = widths[1],
                    w2 = widths[2],
                    w3 = widths[3],
                );
            }
        }
    }
    let origin = match report.store_origin.as_str() {
        "" => String::new(),
        origin => format!(" ({origin})"),
    };
    let disk = match report.disk_bytes {
        0 => String::new(),
        bytes => format!(", {} on disk", human_bytes(bytes)),
    };
    for m in &report.mounts {
        let _ = writeln!(
            out,
            "mounted at {} (pid {}), FUSE passthrough {}",
            m.mountpoint, m.pid, m.passthrough
        );
        for line in m.traffic.iter().flat_map(|t| t.lines(human_bytes)) {
            let _ = writeln!(out, "  {line}");
        }
    }
    let _ = writeln!(
        out,
        "store {}{origin}: {} cached in {}{disk}",
        report.store,
        human_bytes(report.stored_bytes),
        plural(report.repos.len(), "repo")
    );
    out
}

/// `42s ago`, `5m ago`, `3h ago`, `2d ago`.
fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::memory::{hub_hash, MemoryHub};
    use crate::store::memory::MemoryStore;
    use crate::store::FileState;

    const CS: u64 = 1000;
    const C1: &str = "1111111111111111111111111111111111111111";
    const C2: &str = "2222222222222222222222222222222222222222";

    fn data(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)).collect()
    }

    /// A store holding `org/repo` at C1 (`main`) with some files in each state, and C2
    /// (a tag) with nothing cached.
    async fn world() -> Arc<MemoryStore> {
        let hub = Arc::new(MemoryHub::new());
        let repo = RepoId::new("org", "repo");
        hub.add_repo(
            &repo,
            C1,
            "main",
            Some("text-generation"),
            vec![
                ("config.json", data(1, 10), false),
                ("onnx/model.onnx", data(2, 2500), true),
                ("onnx/model_q4.onnx", data(3, 3000), true),
                ("onnx/model_q4.onnx_data", data(4, 1500), true),
            ],
        );
        hub.add_repo(&repo, C2, "v2", None, vec![("config.json", data(9, 10), false)]);
        let store = Arc::new(MemoryStore::new(CS));
        let pull = |rev: &str, quants: &[&str], include: &[&str]| super::super::PullRequest {
            target: Target { repo: repo.clone(), rev: Some(rev.to_string()) },
            quants: quants.iter().map(|s| s.to_string()).collect(),
            include: include.iter().map(|s| s.to_string()).collect(),
            max_connections: 2,
            read_timeout: Duration::from_secs(5),
            lease: None,
            tier: None,
        };
        let quiet = super::super::pull::Progress::quiet();
        for req in [pull("main", &["q4"], &["*.onnx", "*.json"]), pull("v2", &[], &["none"])] {
            // The second records v2 and fetches nothing (and says so).
            match super::super::pull_into(store.clone(), hub.clone(), hub.clone(), &req, &quiet)
                .await
            {
                Ok(_) | Err(CommandError::NothingSelected { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
        // model.onnx: one chunk of three. model_q4.onnx_data: failed.
        let d = data(2, 2500);
        store.put_chunk(&hub_hash(&d, true).content_id(), 2500, 1, &d[1000..2000]).unwrap();
        let failed = hub_hash(&data(4, 1500), true).content_id();
        store.put_chunk(&failed, 1500, 0, &data(4, 1500)[..1000]).unwrap();
        store.discard_file(&failed, FileState::Failed).unwrap();
        store
    }

    fn counts(v: [usize; 5]) -> FileCounts {
        let [verified, complete, partial, failed, missing] = v;
        FileCounts { total: v.iter().sum(), verified, complete, partial, failed, missing }
    }

    #[tokio::test]
    async fn the_report_holds_what_the_xattrs_say() {
        let store = world().await;
        let report = status_report(store.clone(), "/s", None, None).await.unwrap();
        assert_eq!(report.stored_bytes, 10 + 3000 + 1000, "config, model_q4, one chunk");
        let repo = &report.repos[0];
        assert_eq!(repo.repo, "org/repo");
        let refs: Vec<(&str, &str)> =
            repo.refs.iter().map(|r| (r.name.as_str(), r.commit.as_str())).collect();
        assert_eq!(refs, [("main", C1), ("v2", C2)]);
        assert_eq!(repo.commits.len(), 2);
        let c1 = &repo.commits[0];
        assert_eq!(c1.pipeline_tag.as_deref(), Some("text-generation"));
        let view = |name: &str| c1.views.iter().find(|v| v.name == name).unwrap().clone();
        let names: Vec<&str> = c1.views.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["fp32", "q4", "all"]);
        assert_eq!(
            view("q4"),
            ViewStatus {
                name: "q4".into(),
                status: "failed".into(),
                cached_bytes: 3010,
                total_bytes: 4510,
                files: counts([2, 0, 0, 1, 0]),
            }
        );
        assert_eq!(
            view("fp32"),
            ViewStatus {
                name: "fp32".into(),
                status: "partial".into(),
                cached_bytes: 1010,
                total_bytes: 2510,
                files: counts([1, 0, 1, 0, 0]),
            }
        );
        assert_eq!(view("all").files, counts([2, 0, 1, 1, 0]));
        // v2's config.json was filtered out of its pull: nothing cached.
        let c2 = &repo.commits[1];
        assert_eq!(c2.views[0].status, "available");
        assert_eq!(c2.views[0].files, counts([0, 0, 0, 0, 1]));
    }

    #[tokio::test]
    async fn a_target_narrows_the_report() {
        let store = world().await;
        let only = |s: &str| Target::parse(s).unwrap();
        let r = status_report(store.clone(), "/s", Some(&only("org/repo@v2")), None).await.unwrap();
        assert_eq!(r.repos[0].refs.len(), 1);
        assert_eq!(r.repos[0].commits.iter().map(|c| c.commit.as_str()).collect::<Vec<_>>(), [C2]);
        let r = status_report(store.clone(), "/s", Some(&only(&format!("org/repo@{C1}"))), None)
            .await
            .unwrap();
        assert_eq!(r.repos[0].refs[0].name, "main");
        assert_eq!(r.repos[0].commits[0].commit, C1);
        for missing in ["org/repo@nope", "org/other", &format!("org/repo@{}", "3".repeat(40))] {
            let err =
                status_report(store.clone(), "/s", Some(&only(missing)), None).await.unwrap_err();
            assert_eq!(err.to_string(), format!("{missing} is not in the store"));
        }
    }

    #[tokio::test]
    async fn the_table_lines_up() {
        let store = world().await;
        let mut report = status_report(
            store.clone(),
            "/s",
            Some(&Target::parse("org/repo@main").unwrap()),
            None,
        )
        .await
        .unwrap();
        report.repos[0].refs[0].resolved_at = 1000;
        assert_eq!(
            render_table(&report, 1000 + 300),
            format!(
                "org/repo\n  main -> 111111111111, resolved 5m ago\n  commit {C1} (text-generation)\n\
                 \x20   VIEW  STATUS    CACHED    TOTAL  FILES\n\
                 \x20   fp32  partial   1010 B  2.5 KiB  1 verified, 1 partial\n\
                 \x20   q4    failed   2.9 KiB  4.4 KiB  2 verified, 1 failed\n\
                 \x20   all   failed   3.9 KiB  6.8 KiB  2 verified, 1 partial, 1 failed\n\
                 store /s: 3.9 KiB cached in 1 repo\n"
            )
        );
    }

    #[test]
    fn ages() {
        assert_eq!(ago(0), "0s ago");
        assert_eq!(ago(59), "59s ago");
        assert_eq!(ago(60), "1m ago");
        assert_eq!(ago(7200), "2h ago");
        assert_eq!(ago(86400 * 3 + 5), "3d ago");
    }
}
