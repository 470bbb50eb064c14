//! The Hub, as modelfs needs it: which commit a revision is, what files a commit has, and
//! the bytes of a range of one file.
//!
//! Two traits are the seam: [`RepoSource`] (metadata) and [`RangeFetcher`] (bytes).
//! [`client::HubClient`] implements both over HTTP against the real Hub or the mock one;
//! [`memory::MemoryHub`] implements both in memory for kernel-free tests.

pub mod client;
pub mod memory;

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::manifest::{FileHash, RepoId};

#[derive(Debug, Clone, thiserror::Error)]
pub enum HubError {
    /// The repo, revision or file does not exist (or is private and no token may see it).
    #[error("not found on the Hub: {0}")]
    NotFound(String),
    /// Gated or private and the token is missing or not allowed.
    #[error("access denied by the Hub: {0}")]
    Denied(String),
    /// The Hub could not be reached or kept failing until the retry budget was spent.
    #[error("the Hub is unavailable: {0}")]
    Unavailable(String),
    /// The Hub answered something that does not fit the request (wrong range, bad JSON, ...).
    #[error("unexpected answer from the Hub: {0}")]
    Protocol(String),
    /// Running with `--offline`: no request was made.
    #[error("offline: the Hub is not contacted")]
    Offline,
}

/// What a revision resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionInfo {
    /// 40 lowercase hex digits.
    pub commit: String,
    pub pipeline_tag: Option<String>,
    /// Private or gated: only tokens the Hub allows may read it, so what a shared tier holds
    /// of it is served only to a node whose own token the Hub allowed (doc/DESIGN.md, "The
    /// shared tier"). True when the Hub's answer does not say: the safe side.
    pub restricted: bool,
}

/// One file in a repo's tree at a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    pub path: String,
    pub size: u64,
    pub hash: FileHash,
}

/// A file to fetch bytes of. `commit` is always a full commit hash, never a branch, so the
/// bytes of two commits can never be mixed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RemoteFile {
    pub repo: RepoId,
    pub commit: String,
    pub path: String,
    pub size: u64,
}

pub trait RepoSource: Send + Sync + 'static {
    /// Resolve a branch, tag or commit to a commit.
    fn resolve<'a>(
        &'a self,
        repo: &'a RepoId,
        rev: &'a str,
    ) -> BoxFuture<'a, Result<RevisionInfo, HubError>>;

    /// Every file (not directory) of the repo at `commit`, across all pages of the listing.
    /// Entries with unsafe paths are skipped (and logged), never returned.
    fn list_files<'a>(
        &'a self,
        repo: &'a RepoId,
        commit: &'a str,
    ) -> BoxFuture<'a, Result<Vec<TreeEntry>, HubError>>;

    /// Completes once the Hub is known not to answer at all (connection refused, name not
    /// resolved), at once if that is so now: a lookup that has a commit to fall back on
    /// serves it then instead of waiting for retries. Never, for a source that cannot tell.
    fn unreachable(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }
}

/// What ranges have cost lately on the path to the bytes (the CDN, once its URL is known).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkEstimate {
    /// From sending a range request to its answer's headers: paid once per request.
    pub first_byte: Duration,
    /// Body bytes per second of one request, once it is flowing: what one connection gets.
    pub bytes_per_sec: f64,
}

pub trait RangeFetcher: Send + Sync + 'static {
    /// Recent cost of a range request, when known; read-ahead sizes its requests by it.
    fn link(&self) -> Option<LinkEstimate> {
        None
    }

    /// Exactly the bytes `range` of `file`, or an error once retries are spent.
    /// `range` is non-empty and inside the file.
    fn fetch_range<'a>(
        &'a self,
        file: &'a RemoteFile,
        range: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes, HubError>>;

    /// The bytes `range` of `file` in consecutive pieces of `piece` bytes (the last may be
    /// shorter), each handed to `sink` in order as soon as it is complete, so that the first
    /// chunks of a long range can be stored and served while the rest is on its way. On an
    /// error, the pieces handed over are right and the rest never comes. This default asks
    /// for the whole range and cuts it up when it has all arrived.
    fn fetch_pieces<'a>(
        &'a self,
        file: &'a RemoteFile,
        range: Range<u64>,
        piece: u64,
        sink: &'a mut (dyn FnMut(Bytes) + Send),
    ) -> BoxFuture<'a, Result<(), HubError>> {
        Box::pin(async move {
            let bytes = self.fetch_range(file, range).await?;
            let piece = usize::try_from(piece.max(1)).unwrap_or(usize::MAX);
            let mut at = 0;
            while at < bytes.len() {
                let end = bytes.len().min(at.saturating_add(piece));
                sink(bytes.slice(at..end));
                at = end;
            }
            Ok(())
        })
    }
}

/// The Hub as seen with `--offline`: every call fails with [`HubError::Offline`] without
/// touching the network.
pub struct OfflineHub;

impl RepoSource for OfflineHub {
    fn resolve<'a>(
        &'a self,
        _: &'a RepoId,
        _: &'a str,
    ) -> BoxFuture<'a, Result<RevisionInfo, HubError>> {
        Box::pin(async { Err(HubError::Offline) })
    }

    fn list_files<'a>(
        &'a self,
        _: &'a RepoId,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Vec<TreeEntry>, HubError>> {
        Box::pin(async { Err(HubError::Offline) })
    }
}

impl RangeFetcher for OfflineHub {
    fn fetch_range<'a>(
        &'a self,
        _: &'a RemoteFile,
        _: Range<u64>,
    ) -> BoxFuture<'a, Result<Bytes, HubError>> {
        Box::pin(async { Err(HubError::Offline) })
    }
}
