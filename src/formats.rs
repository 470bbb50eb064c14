//! What model files say about themselves: the byte layout of a safetensors file, a GGUF file,
//! the external data an ONNX model names, and the shards a sharded safetensors checkpoint
//! lists in its `*.safetensors.index.json`. The load planner (`plan.rs`) turns these into the
//! byte ranges a loader reads next, in the order it reads them (doc/SEMANTICS.md, "Cold
//! start").
//!
//! Every parser here is a pure function of bytes a Hub repo controls, so none trusts them:
//! counts and lengths are checked against the input and the file size before anything is
//! allocated for them, nothing panics, and a malformed input is a [`FormatError`], which the
//! planner turns into a log line and no prefetch, never into an error for a reader. Each has
//! property tests next to it and a cargo-fuzz target in `fuzz/`.

use std::ops::Range;

pub mod gguf;
pub mod onnx;
pub mod safetensors;
pub mod shards;

/// One tensor's bytes: where they are in the file, absolute offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tensor {
    pub name: String,
    pub range: Range<u64>,
}

/// The layout of a self-describing weights file (safetensors, GGUF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Bytes `[0, header_len)` are the header (and, for GGUF, metadata and tensor infos, up to
    /// the aligned start of the data): what a program reads before any tensor.
    pub header_len: u64,
    /// Every tensor, in file order (ascending `range.start`); ranges do not overlap, lie in
    /// `[header_len, file_size]`, and may be empty.
    pub tensors: Vec<Tensor>,
}

impl Layout {
    /// Why this layout breaks the invariants documented on its fields for a file of
    /// `file_size` bytes, or `Ok` if it keeps them. Every parser's output passes this (the
    /// property tests and fuzz targets assert it); a planner may `debug_assert!` it.
    pub fn check(&self, file_size: u64) -> Result<(), String> {
        if self.header_len > file_size {
            return Err(format!("header_len {} > file size {file_size}", self.header_len));
        }
        let mut prev_end = self.header_len;
        let mut prev_start = self.header_len;
        for t in &self.tensors {
            let r = &t.range;
            if r.start > r.end || r.end > file_size {
                return Err(format!("{:?}: range {r:?} outside [0, {file_size}]", t.name));
            }
            if r.start < prev_start {
                return Err(format!("{:?}: not in file order", t.name));
            }
            // Consecutive in start order and each starting at or past the previous end: no
            // two ranges share a byte, and an empty range never sits inside another.
            if r.start < prev_end {
                return Err(format!("{:?}: {r:?} overlaps the previous tensor", t.name));
            }
            prev_start = r.start;
            prev_end = r.end;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The header goes on past the bytes given: parse again with at least this many (never
    /// more than the file size).
    #[error("the header needs the first {0} bytes of the file")]
    NeedMore(u64),
    /// Not a file of this format, or a damaged one.
    #[error("malformed {format} header: {what}")]
    Malformed { format: &'static str, what: String },
}

/// Parse `file` with growing prefixes as a caller would, from `start` bytes: the result and the
/// number of parses. Every `NeedMore` must ask for more than it was given, within the file.
#[cfg(test)]
pub(crate) fn parse_loop(
    parse: fn(&[u8], u64) -> Result<Layout, FormatError>,
    file: &[u8],
    start: usize,
) -> (Result<Layout, FormatError>, usize) {
    let size = file.len() as u64;
    let mut have = start;
    for round in 1..=64 {
        match parse(&file[..have], size) {
            Err(FormatError::NeedMore(n)) => {
                assert!(n > have as u64 && n <= size, "NeedMore({n}) with {have} of {size}");
                have = n as usize;
            }
            other => return (other, round),
        }
    }
    panic!("no result in 64 rounds");
}
