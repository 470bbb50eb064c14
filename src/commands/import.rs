//! `modelfs import DIR --as ORG/NAME` and `modelfs remove ORG/NAME`: the command line over
//! [`crate::import`], plus the shared tier, to which an import is written whole (chunks,
//! manifest, ref) before the command says it is done.

use std::sync::Arc;

use super::{human_bytes, plural, resolve, runtime, short, CommandError};
use crate::cli::{ImportArgs, RemoveArgs};
use crate::fetch::FileRef;
use crate::hub::RemoteFile;
use crate::import::{ImportError, ImportReport, RemoveReport};
use crate::manifest::RepoId;
use crate::store::mdbx::MdbxStore;
use crate::store::{chunk_count, ChunkStore, DEFAULT_CHUNK_SIZE};
use crate::tier::catalog::TierCatalog;
use crate::tier::{ObjectTier, TierClient};

pub fn run(args: ImportArgs) -> Result<(), CommandError> {
    let repo = parse_repo(&args.name)?;
    let config = resolve(&args.store)?;
    let tier_url = args.tier.or(config.file.tier.clone());
    // Checked before the store is touched: a mistyped URL must not cost an import.
    let tier = tier_url.as_deref().map(ObjectTier::from_url).transpose()?;
    if args.dir.exists() && !args.dir.is_dir() {
        return Err(ImportError::NotADirectory(args.dir.clone()).into());
    }
    let store: Arc<dyn ChunkStore> = Arc::new(MdbxStore::open(&config.store, DEFAULT_CHUNK_SIZE)?);
    let report =
        crate::import::import(store.as_ref(), &args.dir, &repo, &args.revision, &mut |_| {})?;
    let mut line = render_import(&report);
    if let Some(tier) = tier {
        let client = TierClient::new(Arc::new(tier), store.clone());
        runtime()?.block_on(publish(&client, &report))?;
        line.push_str("; written to the tier");
    }
    println!("{line}");
    Ok(())
}

pub fn run_remove(args: RemoveArgs) -> Result<(), CommandError> {
    let repo = parse_repo(&args.repo)?;
    let config = resolve(&args.store)?;
    let tier =
        args.tier.or(config.file.tier.clone()).as_deref().map(ObjectTier::from_url).transpose()?;
    let store = super::open_existing(&config.store)?;
    let report = crate::import::remove(&config.store, &store, &repo)?;
    let mut line = render_remove(&report);
    if let Some(tier) = tier {
        let client = TierClient::new(Arc::new(tier), store.clone());
        let catalog = TierCatalog::new(client);
        runtime()?.block_on(catalog.unpublish(&repo, &report.refs))?;
        line.push_str("; removed from the tier");
    }
    println!("{line}");
    Ok(())
}

fn parse_repo(s: &str) -> Result<RepoId, CommandError> {
    RepoId::parse(s).ok_or_else(|| CommandError::BadTarget(s.to_string()))
}

/// Every chunk of the import, then its manifest and ref: the ref last, so that a node that
/// finds it finds everything it names. The tier must have taken every byte (what it had
/// already counts), or the import is said not to be in the tier.
async fn publish(tier: &Arc<TierClient>, report: &ImportReport) -> Result<(), CommandError> {
    let before = crate::metrics::get().traffic().stored_to_tier;
    let chunk_size = tier.chunk_size();
    for f in &report.manifest.files {
        let file = FileRef {
            remote: RemoteFile {
                repo: report.repo.clone(),
                commit: report.commit.clone(),
                path: f.path.clone(),
                size: f.size,
            },
            hash: f.hash,
        };
        tier.offer_stored(&file, 0..chunk_count(f.size, chunk_size));
    }
    tier.flush().await;
    let written = crate::metrics::get().traffic().stored_to_tier - before;
    if written < report.bytes {
        return Err(CommandError::TierIncomplete {
            missing: report.bytes - written,
            repo: report.repo.to_string(),
        });
    }
    TierCatalog::new(tier.clone()).publish_import(&report.manifest, &report.rev).await?;
    Ok(())
}

/// What `import` prints: what became of the branch, and what it cost.
pub fn render_import(r: &ImportReport) -> String {
    let change = match r.previous.as_deref() {
        None => "new".to_string(),
        Some(p) if p == r.commit => "unchanged".to_string(),
        Some(p) => format!("moved from {}", short(p)),
    };
    format!(
        "{}@{} -> {} ({change}): {}, {} ({} stored now)",
        r.repo,
        r.rev,
        short(&r.commit),
        plural(r.files, "file"),
        human_bytes(r.bytes),
        human_bytes(r.stored_bytes),
    )
}

/// What `remove` prints.
pub fn render_remove(r: &RemoveReport) -> String {
    let mut out = format!(
        "removed {} ({}, {}); freed {}",
        r.repo,
        plural(r.refs.len(), "ref"),
        plural(r.commits, "commit"),
        human_bytes(r.freed_bytes)
    );
    if r.kept_open > 0 {
        out.push_str(&format!("; {} still open, left to eviction", plural(r.kept_open, "file")));
    }
    out
}
