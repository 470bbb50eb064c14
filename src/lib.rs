//! modelfs: HuggingFace Hub model repositories as a lazily fetched, read-only filesystem.
//!
//! The read path runs through three layers, each replaceable by an in-memory double in tests:
//! [`fuse`] (the only code that knows fuser and errno) → [`fs`] (namespace, inodes, handles,
//! xattrs; no kernel needed) → [`fetch`] (single-flight chunk fetches) over a
//! [`store::ChunkStore`] and a [`hub::RangeFetcher`]. Names and quant views come from pure
//! functions in [`names`] and [`quant`]; what a repo contains at a commit is a
//! [`manifest::Manifest`], stored so a cached repo works with no network at all. Model files
//! describe themselves ([`formats`]); [`plan`] and [`loads`] turn that into fetches in the
//! order loaders read, once a program shows it is loading a file.

pub mod access;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod config;
pub mod csi;
pub mod daemon;
pub mod evict;
pub mod fetch;
pub mod formats;
pub mod fs;
pub mod fuse;
pub mod hub;
pub mod import;
pub mod loads;
pub mod manifest;
pub mod metrics;
pub mod mounts;
pub mod names;
pub mod plan;
pub mod profile;
pub mod quant;
pub mod store;
pub mod tier;

/// Lock `m`, taking over a lock poisoned by a panic elsewhere: every mutex in modelfs guards
/// maps and counters updated by single inserts and removes (or nothing, only an order), which
/// a panic cannot leave half-changed; refusing to serve after one would only turn one failed
/// request into many.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
