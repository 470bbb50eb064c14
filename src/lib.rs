//! modelfs: HuggingFace Hub model repositories as a lazily fetched, read-only filesystem.
//!
//! The read path runs through three layers, each replaceable by an in-memory double in tests:
//! [`fuse`] (the only code that knows fuser and errno) → [`fs`] (namespace, inodes, handles,
//! xattrs; no kernel needed) → [`fetch`] (single-flight chunk fetches) over a
//! [`store::ChunkStore`] and a [`hub::RangeFetcher`]. Names and quant views come from pure
//! functions in [`names`] and [`quant`]; what a repo contains at a commit is a
//! [`manifest::Manifest`], stored so a cached repo works with no network at all.

pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod evict;
pub mod fetch;
pub mod fs;
pub mod fuse;
pub mod hub;
pub mod manifest;
pub mod metrics;
pub mod mounts;
pub mod names;
pub mod quant;
pub mod store;
