//! Load plans: the byte ranges a loader will read next in a model file, in the order it will
//! read them, and the rule that decides when a program has shown it is such a loader
//! (doc/SEMANTICS.md, "Cold start"). Pure data and arithmetic: the parsers in
//! [`crate::formats`] say where the tensors are, [`crate::loads`] runs the plans.
//!
//! The order is the loader's, not the file's: vLLM and transformers read a safetensors file
//! tensor by tensor in sorted-name order (`safe_open(...).keys()` is sorted), llama.cpp and
//! the `gguf` reader walk a GGUF in file order, ONNX Runtime reads external data in the order
//! the model's initializers name it. Fetching in that order puts the next bytes a page fault
//! asks for on the wire first.
//!
//! The trigger ([`Walk`]) answers a question a plan cannot: is this program a loader, or an
//! inspection tool that reads the header and one tensor? It counts the tensor data the
//! program's reads have covered outside the one tensor it has read most of. Reading one
//! tensor, however large, never starts a plan; reading into a second tensor by more than the
//! kernel's own read-ahead could account for does, whatever the order (sorted names, file
//! order, a `cat`, a `MAP_POPULATE` pre-fault).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use crate::formats::{Layout, Tensor};

/// Tensor data a program must read outside the tensor it has read most of before its file's
/// plan starts: twice the kernel's read-ahead window (`MAX_READAHEAD` in `fuse.rs`, 1 MiB).
/// One access to one tensor reaches the daemon as reads that spill past the tensor by at most
/// one window (a page fault is read around, half a window before and half after; a sequential
/// run is read ahead by up to a window after its end), so a peek at a single tensor stays
/// under this, and a loader passes it within its second or third tensor.
pub const WALK_BYTES: u64 = 2 << 20;

/// Separate ranges a walk records before its plan is known, at most. A loader reads a header
/// and a few tensors meanwhile (a handful of runs); a reader this scattered before any header
/// is stored is not walking tensors, and its later reads count as any reads do. The bound
/// keeps a file whose header is never stored (random reads elsewhere) from growing the set.
const EARLY_RUNS: usize = 1024;

/// Which loader a plan imitates (a metrics label, and the log line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlanFormat {
    Safetensors,
    Gguf,
    /// An ONNX model's external data file.
    OnnxData,
}

impl PlanFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanFormat::Safetensors => "safetensors",
            PlanFormat::Gguf => "gguf",
            PlanFormat::OnnxData => "onnx",
        }
    }
}

/// What one file's loader reads: its regions (tensors), and the order it reads them in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadPlan {
    pub format: PlanFormat,
    pub file_size: u64,
    /// Bytes before this are the header (0 for ONNX external data, which has none).
    pub data_start: u64,
    /// Non-empty regions in file order, disjoint: for finding the region of an offset.
    regions: Vec<Range<u64>>,
    /// Indices into `regions`, in the order the loader reads them.
    order: Vec<usize>,
}

impl LoadPlan {
    /// Sorted tensor names, the order of `safe_open(...).keys()`.
    pub fn safetensors(layout: &Layout, file_size: u64) -> Self {
        let mut by_name: Vec<&Tensor> = layout.tensors.iter().collect();
        by_name.sort_by(|a, b| a.name.cmp(&b.name));
        Self::build(PlanFormat::Safetensors, file_size, layout.header_len, &by_name)
    }

    /// File order, as llama.cpp and the `gguf` reader walk it.
    pub fn gguf(layout: &Layout, file_size: u64) -> Self {
        let in_file: Vec<&Tensor> = layout.tensors.iter().collect();
        Self::build(PlanFormat::Gguf, file_size, layout.header_len, &in_file)
    }

    /// The ranges an ONNX model names in one external data file, in the order it names them.
    pub fn onnx_data(referenced: &[Tensor], file_size: u64) -> Self {
        let in_order: Vec<&Tensor> = referenced.iter().collect();
        Self::build(PlanFormat::OnnxData, file_size, 0, &in_order)
    }

    /// `tensors` in load order. Ranges are clipped to `[data_start, file_size)`; empty ones
    /// are dropped; a range overlapping one earlier in file order is cut to what it adds (a
    /// parser rejects overlaps, so this only keeps the invariant for any input).
    fn build(format: PlanFormat, file_size: u64, data_start: u64, tensors: &[&Tensor]) -> Self {
        let data_start = data_start.min(file_size);
        let clip = |r: &Range<u64>| r.start.max(data_start)..r.end.min(file_size);
        let mut in_file: Vec<(Range<u64>, usize)> = tensors
            .iter()
            .enumerate()
            .map(|(rank, t)| (clip(&t.range), rank))
            .filter(|(r, _)| r.start < r.end)
            .collect();
        in_file.sort_by_key(|(r, rank)| (r.start, *rank));
        let mut regions: Vec<Range<u64>> = Vec::with_capacity(in_file.len());
        let mut rank_of_region = Vec::with_capacity(in_file.len());
        for (r, rank) in in_file {
            let start = regions.last().map_or(r.start, |last| r.start.max(last.end));
            if start < r.end {
                regions.push(start..r.end);
                rank_of_region.push(rank);
            }
        }
        let mut order: Vec<usize> = (0..regions.len()).collect();
        order.sort_by_key(|&i| rank_of_region[i]);
        Self { format, file_size, data_start, regions, order }
    }

    /// Tensors the plan knows.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Bytes of tensor data the plan covers.
    pub fn bytes(&self) -> u64 {
        self.regions.iter().map(|r| r.end - r.start).sum()
    }

    /// The end of the part of the file `offset` is in: the header's end, a tensor's end, or
    /// (in padding between tensors, or past the last) the next tensor's start or the file's end.
    pub fn end_of_part(&self, offset: u64) -> u64 {
        if offset < self.data_start {
            return self.data_start;
        }
        let next = self.regions.partition_point(|r| r.end <= offset);
        match self.regions.get(next) {
            Some(r) if r.start <= offset => r.end,
            Some(r) => r.start,
            None => self.file_size,
        }
    }

    /// The part of `range` in the tensor data (past the header, before the file's end); empty
    /// when it has none.
    fn data_part(&self, range: Range<u64>) -> Range<u64> {
        range.start.max(self.data_start)..range.end.min(self.file_size)
    }

    /// The regions `range` overlaps, with the bytes of each it covers.
    fn overlaps(&self, range: Range<u64>) -> impl Iterator<Item = (usize, u64)> + '_ {
        let first = self.regions.partition_point(|r| r.end <= range.start);
        self.regions[first..]
            .iter()
            .take_while(move |r| r.start < range.end)
            .enumerate()
            .map(move |(k, r)| (first + k, range.end.min(r.end) - range.start.max(r.start)))
    }

    /// Every chunk the plan's regions touch, each once, in the order the loader needs them.
    pub fn chunks(&self, chunk_size: u64) -> Vec<u64> {
        let chunk_size = chunk_size.max(1);
        let mut seen = vec![false; self.file_size.div_ceil(chunk_size) as usize];
        let mut out = Vec::new();
        for &i in &self.order {
            let r = &self.regions[i];
            for index in r.start / chunk_size..r.end.div_ceil(chunk_size) {
                if !std::mem::replace(&mut seen[index as usize], true) {
                    out.push(index);
                }
            }
        }
        out
    }
}

/// The trigger: which tensor data a file's readers have covered, and whether that is more than
/// one tensor's worth (see [`WALK_BYTES`]).
#[derive(Debug, Default, Clone)]
pub struct Walk {
    covered: RangeSet,
    /// Bytes covered of each region that reads reached.
    per_region: HashMap<usize, u64>,
    /// Data bytes covered in all (padding between tensors included).
    total: u64,
    /// The largest of `per_region`.
    most: u64,
}

impl Walk {
    /// Record a read of `range`; true when the file's readers have now walked its data.
    pub fn on_read(&mut self, plan: &LoadPlan, range: Range<u64>) -> bool {
        for new in self.covered.insert(plan.data_part(range)) {
            self.count(plan, new);
        }
        self.walked()
    }

    /// Record a read made before the file's plan is known (its header still being stored or
    /// parsed, an ONNX model still being read): [`Walk::planned`] counts it once the plan is,
    /// so a loader that read on meanwhile does not have to walk another tensor's worth first.
    pub fn on_early_read(&mut self, range: Range<u64>) {
        if self.covered.runs() < EARLY_RUNS {
            self.covered.insert(range);
        }
    }

    /// The plan is known: count every read recorded so far against it; true when they have
    /// walked its data. The same reads give the same answer whether they were recorded
    /// before the plan or after it.
    pub fn planned(&mut self, plan: &LoadPlan) -> bool {
        (self.total, self.most) = (0, 0);
        self.per_region.clear();
        let read: Vec<Range<u64>> =
            self.covered.iter().map(|r| plan.data_part(r)).filter(|r| r.start < r.end).collect();
        for r in read {
            self.count(plan, r);
        }
        self.walked()
    }

    /// Count `new`, data bytes no read had covered before.
    fn count(&mut self, plan: &LoadPlan, new: Range<u64>) {
        self.total += new.end - new.start;
        for (region, bytes) in plan.overlaps(new) {
            let got = self.per_region.entry(region).or_default();
            *got += bytes;
            self.most = self.most.max(*got);
        }
    }

    /// Whether reads have covered more than [`WALK_BYTES`] outside the tensor most read.
    pub fn walked(&self) -> bool {
        self.total - self.most > WALK_BYTES
    }

    /// Whether any read has covered a byte of `range`.
    pub fn has_read(&self, range: Range<u64>) -> bool {
        self.covered.intersects(range)
    }
}

/// Disjoint, non-adjacent half-open ranges.
#[derive(Debug, Default, Clone)]
pub struct RangeSet {
    /// start → end.
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Add `range`; returns the parts of it that were not in the set before, ascending.
    pub fn insert(&mut self, range: Range<u64>) -> Vec<Range<u64>> {
        if range.start >= range.end {
            return Vec::new();
        }
        let (mut start, mut end) = (range.start, range.end);
        // Ranges that touch or overlap `range`: the one starting at or before it (if it reaches
        // it) and every one starting inside it or at its end.
        let mut touching: Vec<(u64, u64)> = Vec::new();
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                touching.push((s, e));
            }
        }
        touching.extend(
            self.ranges
                .range((std::ops::Bound::Excluded(start), std::ops::Bound::Included(end)))
                .map(|(&s, &e)| (s, e)),
        );
        let mut new = Vec::new();
        let mut at = range.start;
        for &(s, e) in &touching {
            if s > at {
                new.push(at..s.min(range.end));
            }
            at = at.max(e);
            self.ranges.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        if at < range.end {
            new.push(at..range.end);
        }
        self.ranges.insert(start, end);
        new
    }

    pub fn intersects(&self, range: Range<u64>) -> bool {
        if range.start >= range.end {
            return false;
        }
        self.ranges.range(..range.end).next_back().is_some_and(|(_, &e)| e > range.start)
    }

    /// Separate ranges in the set.
    pub fn runs(&self) -> usize {
        self.ranges.len()
    }

    /// The ranges, ascending.
    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.ranges.iter().map(|(&s, &e)| s..e)
    }

    /// Bytes in the set.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    /// A 4 KiB header and eight 8 MiB tensors after it, in file order.
    fn eight_tensors() -> LoadPlan {
        let layout = Layout {
            header_len: 4096,
            tensors: (0..8)
                .map(|k| tensor(&format!("t{k}"), 4096 + k * 8 * MIB..4096 + (k + 1) * 8 * MIB))
                .collect(),
        };
        LoadPlan::gguf(&layout, 4096 + 64 * MIB)
    }

    fn tensor(name: &str, range: Range<u64>) -> Tensor {
        Tensor { name: name.into(), range }
    }

    /// Three tensors whose file order (b, c, a) is not their name order (a, b, c).
    fn three() -> LoadPlan {
        let layout = Layout {
            header_len: 100,
            tensors: vec![
                tensor("b", 100..10 * MIB),
                tensor("c", 10 * MIB..11 * MIB),
                tensor("a", 11 * MIB..30 * MIB),
            ],
        };
        LoadPlan::safetensors(&layout, 30 * MIB)
    }

    #[test]
    fn safetensors_plans_follow_names_gguf_plans_follow_the_file() {
        let plan = three();
        // a (chunks 2..4 of 8 MiB), then b (0, 1), then c (1, already listed).
        assert_eq!(plan.chunks(8 * MIB), vec![1, 2, 3, 0]);
        let layout = Layout {
            header_len: 100,
            tensors: vec![tensor("b", 100..10 * MIB), tensor("a", 11 * MIB..30 * MIB)],
        };
        assert_eq!(LoadPlan::gguf(&layout, 30 * MIB).chunks(8 * MIB), vec![0, 1, 2, 3]);
        assert_eq!(plan.bytes(), 30 * MIB - 100);
    }

    #[test]
    fn onnx_plans_follow_the_references() {
        let refs = [tensor("w2", 4 * MIB..8 * MIB), tensor("w1", 0..4 * MIB)];
        let plan = LoadPlan::onnx_data(&refs, 8 * MIB);
        assert_eq!(plan.chunks(MIB), vec![4, 5, 6, 7, 0, 1, 2, 3]);
    }

    #[test]
    fn one_tensor_however_large_never_starts_a_plan() {
        let plan = three();
        let mut walk = Walk::default();
        // The header, then all of `a` in kernel-sized reads, with a window of read-ahead
        // spilling into `c` before it and past the file's end.
        assert!(!walk.on_read(&plan, 0..4096));
        let mut at = 11 * MIB - MIB / 2;
        while at < 30 * MIB {
            assert!(!walk.on_read(&plan, at..at + MIB), "at {at}");
            at += MIB;
        }
    }

    #[test]
    fn a_second_tensor_does() {
        let plan = three();
        let mut walk = Walk::default();
        assert!(!walk.on_read(&plan, 11 * MIB..14 * MIB), "one tensor");
        assert!(!walk.on_read(&plan, 100..MIB), "1 MiB of a second");
        assert!(!walk.on_read(&plan, MIB..2 * MIB + 100), "just at the threshold");
        assert!(walk.on_read(&plan, 2 * MIB + 100..2 * MIB + 200), "past it");
        // A file read from its start, as `cat` or a MAP_POPULATE pre-fault reads it.
        let mut walk = Walk::default();
        let first = (0..30).find(|&m| walk.on_read(&plan, m * MIB..(m + 1) * MIB));
        assert_eq!(first, Some(12), "2 MiB into `c`/`a` past all of `b`");
    }

    #[test]
    fn parts_end_where_the_header_and_each_tensor_end() {
        let plan = three();
        assert_eq!(plan.end_of_part(0), 100, "the header");
        assert_eq!(plan.end_of_part(100), 10 * MIB);
        assert_eq!(plan.end_of_part(10 * MIB), 11 * MIB);
        assert_eq!(plan.end_of_part(29 * MIB), 30 * MIB);
        let gap =
            LoadPlan::gguf(&Layout { header_len: 64, tensors: vec![tensor("x", 96..128)] }, 200);
        assert_eq!(
            (gap.end_of_part(70), gap.end_of_part(100), gap.end_of_part(150)),
            (96, 128, 200)
        );
    }

    #[test]
    fn padding_and_header_bytes_are_not_regions() {
        let plan =
            LoadPlan::gguf(&Layout { header_len: 64, tensors: vec![tensor("x", 96..128)] }, 200);
        assert_eq!(plan.overlaps(0..200).collect::<Vec<_>>(), vec![(0, 32)]);
        let mut walk = Walk::default();
        walk.on_read(&plan, 0..200);
        assert_eq!(walk.total, 136, "header excluded, padding and tail counted");
        assert_eq!(walk.most, 32);
    }

    proptest! {
        /// The set's insert reports exactly the bytes it did not hold, and holds the union.
        #[test]
        fn range_set_is_the_union(ops in prop::collection::vec((0u64..200, 0u64..40), 1..40)) {
            let mut set = RangeSet::default();
            let mut bits = [false; 240];
            for (start, len) in ops {
                let new = set.insert(start..start + len);
                let mut expect = Vec::new();
                for b in start..start + len {
                    if !bits[b as usize] {
                        expect.push(b);
                        bits[b as usize] = true;
                    }
                }
                let got: Vec<u64> = new.iter().flat_map(|r| r.clone()).collect();
                prop_assert_eq!(got, expect);
                prop_assert!(new.windows(2).all(|w| w[0].end < w[1].start));
                prop_assert_eq!(set.len(), bits.iter().filter(|b| **b).count() as u64);
                for b in 0..240u64 {
                    prop_assert_eq!(set.intersects(b..b + 1), bits[b as usize]);
                }
            }
            // Disjoint and not adjacent: adjacent ranges were merged.
            let r: Vec<_> = set.ranges.iter().collect();
            prop_assert!(r.windows(2).all(|w| w[0].1 < w[1].0));
        }

        /// Every chunk a region touches is listed once, no other, and the first chunks listed
        /// are those of the first region in load order.
        #[test]
        fn plan_chunks_cover_the_regions_once(
            sizes in prop::collection::vec((0u64..5000, 0u64..3000), 0..30),
            header in 0u64..3000,
            cs in 1u64..4096,
        ) {
            let mut at = header;
            let mut tensors = Vec::new();
            for (k, (gap, len)) in sizes.iter().enumerate() {
                at += gap;
                // Names in reverse file order, so name order is not file order.
                tensors.push(tensor(&format!("t{:03}", 999 - k), at..at + len));
                at += len;
            }
            let size = at + 10;
            let plan = LoadPlan::safetensors(&Layout { header_len: header, tensors: tensors.clone() }, size);
            let chunks = plan.chunks(cs);
            let mut want: Vec<u64> = tensors
                .iter()
                .filter(|t| t.range.start < t.range.end)
                .flat_map(|t| t.range.start / cs..t.range.end.div_ceil(cs))
                .collect();
            want.sort_unstable();
            want.dedup();
            let mut got = chunks.clone();
            got.sort_unstable();
            prop_assert_eq!(got.clone(), want);
            got.dedup();
            prop_assert_eq!(got.len(), chunks.len(), "a chunk listed twice");
            if let Some(first) = tensors.iter().rev().find(|t| t.range.start < t.range.end) {
                prop_assert_eq!(chunks[0], first.range.start / cs);
            }
            prop_assert_eq!(plan.len(), tensors.iter().filter(|t| t.range.start < t.range.end).count());
        }

        /// Reads inside one region (with at most a window of spill on either side) never
        /// trigger; reads covering more than WALK_BYTES outside the most-read region always do.
        #[test]
        fn the_trigger_counts_bytes_outside_the_most_read_tensor(
            reads in prop::collection::vec((0u64..64 * MIB, 1u64..2 * MIB), 1..60),
        ) {
            let plan = eight_tensors();
            let mut walk = Walk::default();
            let mut bits = RangeSet::default();
            for (start, len) in reads {
                let fired = walk.on_read(&plan, start..start + len);
                bits.insert(start.max(4096)..(start + len).min(4096 + 64 * MIB));
                let most = (0..8u64)
                    .map(|k| {
                        let r = 4096 + k * 8 * MIB..4096 + (k + 1) * 8 * MIB;
                        bits.ranges
                            .iter()
                            .map(|(&s, &e)| e.min(r.end).saturating_sub(s.max(r.start)))
                            .sum::<u64>()
                    })
                    .max()
                    .unwrap();
                prop_assert_eq!(fired, bits.len() - most > WALK_BYTES);
            }
        }

        /// Reads made before the plan was known count as if they had been made after it: for
        /// any split of the same reads, the trigger fires at the same read, and what has been
        /// read is the same.
        #[test]
        fn reads_before_the_plan_count_toward_its_trigger(
            reads in prop::collection::vec((0u64..64 * MIB, 1u64..2 * MIB), 1..40),
            split in 0usize..40,
        ) {
            let plan = eight_tensors();
            let split = split.min(reads.len());
            let (mut late, mut early) = (Walk::default(), Walk::default());
            let mut fired_late = false;
            for &(start, len) in &reads[..split] {
                fired_late = late.on_read(&plan, start..start + len);
                early.on_early_read(start..start + len);
            }
            prop_assert_eq!(early.planned(&plan), fired_late);
            for &(start, len) in &reads[split..] {
                prop_assert_eq!(early.on_read(&plan, start..start + len), late.on_read(&plan, start..start + len));
            }
            for &(start, len) in &reads {
                prop_assert!(early.has_read(start..start + len));
            }
            prop_assert_eq!((early.total, early.most), (late.total, late.most));
        }
    }
}
