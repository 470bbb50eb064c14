//! One range fetched over several connections at once, into one buffer: how a chunk crosses
//! a CDN that caps each connection (doc/DESIGN.md, "Read-ahead").
//!
//! Read-ahead's memory bound counts chunk buffers (`--max-inflight-bytes / chunk`, 4 by
//! default), and against a per-connection cap the rate is what the connections carry, not
//! what memory holds. When memory allows fewer chunks in flight than `--max-connections`,
//! each chunk's range is asked for as [`PrefetchLimits::parts`](super::PrefetchLimits)
//! sub-ranges in parallel, each copied into its own slice of the chunk's buffer as it arrives:
//! the same bytes in memory, four times the connections at the defaults. A chunk is still the
//! unit that is checked, stored and served; only its transfer is split.

use std::ops::Range;

use bytes::Bytes;
use futures::future::try_join_all;

use crate::hub::{HubError, RangeFetcher, RemoteFile};

/// Smallest part worth its own request: below 1 MiB a request's time to first byte is no
/// longer small against its transfer even on a capped CDN (40 MB/s: 26 ms of body).
pub const MIN_PART: u64 = 1 << 20;

/// Part boundaries fall on 64 KiB, the store's crc block: each part is whole pages and whole
/// blocks, so the parts' copies never share a page of the buffer.
const PART_ALIGN: u64 = 64 << 10;

/// The piece in which a part's body is handed over and copied into the buffer: small, so a
/// part costs the buffer's slice and no second copy of itself.
const PIECE: u64 = 256 << 10;

/// How many parts a range of `len` bytes is fetched in: at most `max_parts`, none shorter
/// than [`MIN_PART`]. The link's estimate does not enter: `p` parts of a chunk take one time
/// to first byte plus a `p`th of the transfer, against one first byte plus all of it, so while
/// connections are spare (the only case `max_parts` exceeds 1) splitting is never slower,
/// whatever the first byte costs; what it costs is requests, hence the floor on a part.
pub fn part_count(max_parts: u64, len: u64) -> u64 {
    max_parts.min(len / MIN_PART).max(1)
}

/// `0..len` cut into `parts` consecutive ranges of nearly equal length, inner boundaries on
/// [`PART_ALIGN`]; fewer (never empty ones) when `len` is too short for that many.
pub fn part_bounds(len: u64, parts: u64) -> Vec<Range<u64>> {
    let parts = parts.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    for k in 1..=parts {
        let end = if k == parts {
            len
        } else {
            let ideal = (len as u128 * k as u128 / parts as u128) as u64;
            (ideal / PART_ALIGN * PART_ALIGN).max(start)
        };
        if end > start {
            out.push(start..end);
            start = end;
        }
    }
    out
}

/// Exactly the bytes `range` of `file`, fetched in `parts` parallel requests (one request
/// when `parts` is 1). Any part failing, after the origin's own retries, fails the whole:
/// the others are dropped with it. A part that brings more or fewer bytes than it asked for
/// is a protocol error, never a short or shifted buffer.
pub async fn fetch_split(
    origin: &dyn RangeFetcher,
    file: &RemoteFile,
    range: Range<u64>,
    parts: u64,
) -> Result<Bytes, HubError> {
    let len = range.end.saturating_sub(range.start);
    let bounds = part_bounds(len, parts);
    if bounds.len() <= 1 {
        return origin.fetch_range(file, range).await;
    }
    let size = usize::try_from(len)
        .map_err(|_| HubError::Protocol(format!("a range of {len} bytes does not fit memory")))?;
    // Zeroed lazily by the allocator (fresh pages), and every byte is overwritten below.
    let mut buffer = vec![0u8; size];
    let mut rest: &mut [u8] = &mut buffer;
    let mut requests = Vec::with_capacity(bounds.len());
    for part in bounds {
        let (slice, tail) = rest.split_at_mut((part.end - part.start) as usize);
        rest = tail;
        let asked = range.start + part.start..range.start + part.end;
        requests.push(fetch_into(origin, file, asked, slice));
    }
    try_join_all(requests).await?;
    Ok(Bytes::from(buffer))
}

/// The bytes `range` of `file`, copied into `into` (exactly as long) piece by piece.
async fn fetch_into(
    origin: &dyn RangeFetcher,
    file: &RemoteFile,
    range: Range<u64>,
    into: &mut [u8],
) -> Result<(), HubError> {
    let mut filled = 0usize;
    let mut overflow = false;
    let mut sink = |piece: Bytes| match into.get_mut(filled..filled + piece.len()) {
        Some(to) => {
            to.copy_from_slice(&piece);
            filled += piece.len();
        }
        None => overflow = true,
    };
    origin.fetch_pieces(file, range.clone(), PIECE, &mut sink).await?;
    if overflow || filled != into.len() {
        return Err(HubError::Protocol(format!(
            "bytes {range:?} of {} came {} long",
            file.path,
            if overflow { "too".to_string() } else { format!("{filled} bytes") }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Mutex;

    const MIB: u64 = 1 << 20;

    #[test]
    fn parts_are_at_least_a_mebibyte() {
        assert_eq!(part_count(3, 8 * MIB), 3);
        assert_eq!(part_count(16, 8 * MIB), 8);
        assert_eq!(part_count(3, 2 * MIB), 2);
        assert_eq!(part_count(3, 64 << 10), 1);
        assert_eq!(part_count(0, 8 * MIB), 1);
    }

    proptest! {
        /// The parts cover the range once, in order, never empty, inner boundaries aligned,
        /// and no more of them than asked.
        #[test]
        fn parts_cover_the_range_exactly(len in 0u64..(64 << 20), parts in 0u64..20) {
            let bounds = part_bounds(len, parts);
            prop_assert!(bounds.len() as u64 <= parts.max(1));
            let mut at = 0;
            for (k, b) in bounds.iter().enumerate() {
                prop_assert_eq!(b.start, at);
                prop_assert!(b.end > b.start);
                if k + 1 < bounds.len() {
                    prop_assert_eq!(b.end % PART_ALIGN, 0);
                }
                at = b.end;
            }
            prop_assert_eq!(at, len);
        }
    }

    /// An origin that serves `data` and records every range asked; `short` makes the part
    /// starting at that offset come one byte short.
    struct Origin {
        data: Vec<u8>,
        asked: Mutex<Vec<Range<u64>>>,
        short: Option<u64>,
    }

    impl RangeFetcher for Origin {
        fn fetch_range<'a>(
            &'a self,
            _: &'a RemoteFile,
            range: Range<u64>,
        ) -> futures::future::BoxFuture<'a, Result<Bytes, HubError>> {
            crate::lock(&self.asked).push(range.clone());
            let end = if self.short == Some(range.start) { range.end - 1 } else { range.end };
            let bytes = Bytes::copy_from_slice(&self.data[range.start as usize..end as usize]);
            Box::pin(async move { Ok(bytes) })
        }
    }

    fn remote(size: u64) -> RemoteFile {
        RemoteFile {
            repo: crate::manifest::RepoId::new("org", "repo"),
            commit: "c".repeat(40),
            path: "w.bin".into(),
            size,
        }
    }

    #[tokio::test]
    async fn a_split_range_is_the_range_and_goes_over_parallel_requests() {
        let data: Vec<u8> = (0..20 * MIB).map(|i| (i * 31 % 251) as u8).collect();
        let origin = Origin { data, asked: Mutex::default(), short: None };
        let file = remote(20 * MIB);
        let range = 3 * MIB + 5..11 * MIB + 7;
        let got = fetch_split(&origin, &file, range.clone(), 3).await.unwrap();
        assert_eq!(&got[..], &origin.data[range.start as usize..range.end as usize]);
        let asked = crate::lock(&origin.asked).clone();
        assert_eq!(asked.len(), 3, "{asked:?}");
        assert_eq!((asked[0].start, asked[2].end), (range.start, range.end));
        // One part: one request for the whole range.
        crate::lock(&origin.asked).clear();
        let got = fetch_split(&origin, &file, range.clone(), 1).await.unwrap();
        assert_eq!(got.len() as u64, range.end - range.start);
        assert_eq!(*crate::lock(&origin.asked), [range]);
    }

    #[tokio::test]
    async fn a_part_of_the_wrong_length_fails_the_whole_range() {
        let data: Vec<u8> = (0..8 * MIB).map(|i| i as u8).collect();
        let bounds = part_bounds(8 * MIB, 3);
        let origin = Origin { data, asked: Mutex::default(), short: Some(bounds[1].start) };
        let err = fetch_split(&origin, &remote(8 * MIB), 0..8 * MIB, 3).await.unwrap_err();
        assert!(matches!(err, HubError::Protocol(_)), "{err:?}");
    }
}
