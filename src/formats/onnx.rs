//! The external data an ONNX model names: every initializer (or other constant tensor) whose
//! `data_location` is EXTERNAL, with the file (`location`), `offset` and `length` its
//! `external_data` entries give. Models over protobuf's 2 GB limit keep their weights in such
//! side files (`model.onnx_data`, one file per tensor, ...); ONNX Runtime parses the model,
//! then reads or mmaps each range in initializer order. [`external_refs`] lists them from the
//! model bytes and [`regions_in`] turns those naming one file into the ranges to prefetch.
//!
//! A small reader of the protobuf wire format is enough (the schema is onnx/onnx.proto): only
//! the fields on the path to a TensorProto are decoded, everything else is skipped by wire
//! type.

use std::collections::HashSet;

use super::{FormatError, Tensor};

const FORMAT: &str = "onnx";

/// How deeply graphs may nest (a Loop's body holding an If's branches ...). Real models nest a
/// handful deep; the bound keeps the recursion of the walk below shallow on any input.
const MAX_GRAPH_DEPTH: u32 = 32;

/// `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL: u64 = 1;

/// One tensor stored outside the model file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRef {
    /// `TensorProto.name` (empty if the model gives none).
    pub tensor: String,
    /// The `location` entry exactly as written: a path relative to the model's directory by
    /// the spec, but a hostile model may give an absolute path or `..` components. This module
    /// keeps it as given; the caller decides what it may name.
    pub location: String,
    /// The `offset` entry; 0 when absent.
    pub offset: u64,
    /// The `length` entry; absent means "to the end of the file" to ONNX Runtime.
    pub length: Option<u64>,
}

fn malformed(what: impl Into<String>) -> FormatError {
    FormatError::Malformed { format: FORMAT, what: what.into() }
}

/// One field's payload on the wire.
enum Wire<'a> {
    Varint(u64),
    /// fixed32 and fixed64: never decoded here, only skipped.
    Fixed,
    Len(&'a [u8]),
}

/// The fields of one message, in wire order.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, FormatError> {
        let mut v = 0u64;
        // A varint is at most 10 bytes (64 bits, 7 a byte); the 10th may only hold bit 63.
        for i in 0..10 {
            let b =
                *self.buf.get(self.pos).ok_or_else(|| malformed("a varint runs past the end"))?;
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(malformed("a varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(malformed("a varint is longer than 10 bytes"))
    }

    fn skip(&mut self, n: u64) -> Result<&'a [u8], FormatError> {
        let rest = &self.buf[self.pos..];
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= rest.len())
            .ok_or_else(|| malformed(format!("a {n}-byte field runs past the end")))?;
        self.pos += n;
        Ok(&rest[..n])
    }

    /// The next field number and payload, or None at the end of the message.
    fn next_field(&mut self) -> Result<Option<(u64, Wire<'a>)>, FormatError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 || number > (1 << 29) - 1 {
            return Err(malformed(format!("field number {number}")));
        }
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.skip(8)?;
                Wire::Fixed
            }
            2 => {
                let n = self.varint()?;
                Wire::Len(self.skip(n)?)
            }
            5 => {
                self.skip(4)?;
                Wire::Fixed
            }
            // 3 and 4: groups, deprecated and absent from onnx.proto; 6 and 7 do not exist.
            w => return Err(malformed(format!("wire type {w} in field {number}"))),
        };
        Ok(Some((number, wire)))
    }
}

/// The payload of a field that onnx.proto declares as a message, string or bytes.
fn len<'a>(w: Wire<'a>, what: &str) -> Result<&'a [u8], FormatError> {
    match w {
        Wire::Len(b) => Ok(b),
        _ => Err(malformed(format!("{what} is not length-delimited"))),
    }
}

fn utf8(b: &[u8], what: &str) -> Result<String, FormatError> {
    std::str::from_utf8(b).map(str::to_owned).map_err(|_| malformed(format!("{what} is not UTF-8")))
}

/// Every external tensor in `model` (a serialized ModelProto), in the order the bytes give
/// them: the main graph's nodes' attribute tensors and subgraphs, its initializers and sparse
/// initializers, depth first. `FunctionProto`s and training graphs are not walked: their
/// tensors are not loaded with the model's weights.
pub fn external_refs(model: &[u8]) -> Result<Vec<ExternalRef>, FormatError> {
    let mut out = Vec::new();
    let mut f = Fields::new(model);
    while let Some((n, w)) = f.next_field()? {
        // ModelProto.graph = 7.
        if n == 7 {
            graph(len(w, "ModelProto.graph")?, 0, &mut out)?;
        }
    }
    Ok(out)
}

fn graph(buf: &[u8], depth: u32, out: &mut Vec<ExternalRef>) -> Result<(), FormatError> {
    if depth >= MAX_GRAPH_DEPTH {
        return Err(malformed(format!("graphs nested over {MAX_GRAPH_DEPTH} deep")));
    }
    let mut f = Fields::new(buf);
    while let Some((n, w)) = f.next_field()? {
        match n {
            // GraphProto.node = 1, .initializer = 5, .sparse_initializer = 15.
            1 => node(len(w, "GraphProto.node")?, depth, out)?,
            5 => tensor(len(w, "GraphProto.initializer")?, out)?,
            15 => sparse(len(w, "GraphProto.sparse_initializer")?, out)?,
            _ => {}
        }
    }
    Ok(())
}

fn node(buf: &[u8], depth: u32, out: &mut Vec<ExternalRef>) -> Result<(), FormatError> {
    let mut f = Fields::new(buf);
    while let Some((n, w)) = f.next_field()? {
        // NodeProto.attribute = 5.
        if n == 5 {
            attribute(len(w, "NodeProto.attribute")?, depth, out)?;
        }
    }
    Ok(())
}

fn attribute(buf: &[u8], depth: u32, out: &mut Vec<ExternalRef>) -> Result<(), FormatError> {
    let mut f = Fields::new(buf);
    while let Some((n, w)) = f.next_field()? {
        match n {
            // AttributeProto.t = 5, .tensors = 10; .g = 6, .graphs = 11;
            // .sparse_tensor = 22, .sparse_tensors = 23.
            5 | 10 => tensor(len(w, "AttributeProto tensor")?, out)?,
            6 | 11 => graph(len(w, "AttributeProto graph")?, depth + 1, out)?,
            22 | 23 => sparse(len(w, "AttributeProto sparse tensor")?, out)?,
            _ => {}
        }
    }
    Ok(())
}

fn sparse(buf: &[u8], out: &mut Vec<ExternalRef>) -> Result<(), FormatError> {
    let mut f = Fields::new(buf);
    while let Some((n, w)) = f.next_field()? {
        // SparseTensorProto.values = 1, .indices = 2.
        if n == 1 || n == 2 {
            tensor(len(w, "SparseTensorProto tensor")?, out)?;
        }
    }
    Ok(())
}

fn tensor(buf: &[u8], out: &mut Vec<ExternalRef>) -> Result<(), FormatError> {
    let mut name = String::new();
    let mut location = None;
    let mut offset = None;
    let mut length = None;
    let mut data_location = 0;
    let mut f = Fields::new(buf);
    // A scalar field given twice takes its last value, as protobuf parsers do.
    while let Some((n, w)) = f.next_field()? {
        match n {
            // TensorProto.name = 8, .external_data = 13, .data_location = 14.
            8 => name = utf8(len(w, "TensorProto.name")?, "a tensor name")?,
            13 => {
                let (k, v) = entry(len(w, "TensorProto.external_data")?)?;
                match k.as_str() {
                    "location" => location = Some(v),
                    "offset" => offset = Some(v),
                    "length" => length = Some(v),
                    _ => {}
                }
            }
            14 => match w {
                Wire::Varint(v) => data_location = v,
                _ => return Err(malformed("TensorProto.data_location is not a varint")),
            },
            _ => {}
        }
    }
    if data_location != EXTERNAL {
        return Ok(());
    }
    let number = |v: Option<String>, what: &str| -> Result<Option<u64>, FormatError> {
        v.map(|s| {
            // Decimal digits only: `u64::from_str` would also take a leading '+'.
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed(format!("{name:?}: {what} {s:?} is not a number")));
            }
            s.parse().map_err(|_| malformed(format!("{name:?}: {what} {s:?} is too large")))
        })
        .transpose()
    };
    let offset = number(offset, "offset")?.unwrap_or(0);
    let length = number(length, "length")?;
    let location =
        location.ok_or_else(|| malformed(format!("{name:?}: external data has no location")))?;
    out.push(ExternalRef { tensor: name, location, offset, length });
    Ok(())
}

/// A StringStringEntryProto: key = 1, value = 2.
fn entry(buf: &[u8]) -> Result<(String, String), FormatError> {
    let (mut k, mut v) = (String::new(), String::new());
    let mut f = Fields::new(buf);
    while let Some((n, w)) = f.next_field()? {
        match n {
            1 => k = utf8(len(w, "an external_data key")?, "an external_data key")?,
            2 => v = utf8(len(w, "an external_data value")?, "an external_data value")?,
            _ => {}
        }
    }
    Ok((k, v))
}

/// `location` without leading "./" components, so "./w.bin" and "w.bin" name one file.
fn normalized(location: &str) -> &str {
    let mut s = location;
    while let Some(rest) = s.strip_prefix("./") {
        s = rest;
    }
    s
}

/// The byte ranges of the file `location` (of `file_size` bytes) that `refs` name, in
/// reference order: the order ONNX Runtime reads its initializers in.
///
/// A ref with no length runs to the next offset any ref gives in this file, or to the end of
/// the file: it cannot extend past where another tensor starts without the two overlapping.
/// Ranges are clamped to the file; empty ones and repeats of an earlier range are dropped.
/// Ranges of different tensors may still overlap if the model says so: this is a read plan,
/// not a [`super::Layout`].
pub fn regions_in(refs: &[ExternalRef], location: &str, file_size: u64) -> Vec<Tensor> {
    let want = normalized(location);
    let mine: Vec<&ExternalRef> = refs.iter().filter(|r| normalized(&r.location) == want).collect();
    let mut offsets: Vec<u64> = mine.iter().map(|r| r.offset).collect();
    offsets.sort_unstable();
    offsets.dedup();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in mine {
        let start = r.offset.min(file_size);
        let end = match r.length {
            Some(n) => r.offset.saturating_add(n),
            None => {
                let i = offsets.partition_point(|&o| o <= r.offset);
                offsets.get(i).copied().unwrap_or(file_size)
            }
        }
        .min(file_size);
        if start < end && seen.insert((start, end)) {
            out.push(Tensor { name: r.tensor.clone(), range: start..end });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // A tiny protobuf encoder.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn field_len(n: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(n << 3 | 2, &mut out);
        varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }
    fn field_varint(n: u64, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(n << 3, &mut out);
        varint(v, &mut out);
        out
    }
    fn kv(k: &str, v: &str) -> Vec<u8> {
        field_len(13, &[field_len(1, k.as_bytes()), field_len(2, v.as_bytes())].concat())
    }

    /// A TensorProto with some inline noise (dims, data_type, doc_string, a fixed32 and a
    /// fixed64 field) around the fields that matter.
    fn tensor_proto(r: &ExternalRef) -> Vec<u8> {
        let mut t = [
            field_varint(1, 4096),
            field_varint(1, 11),
            field_varint(2, 1),
            field_len(8, r.tensor.as_bytes()),
            field_len(12, b"doc"),
            vec![0x25, 1, 2, 3, 4],             // field 4, fixed32
            vec![0x51, 1, 2, 3, 4, 5, 6, 7, 8], // field 10, fixed64
            kv("location", &r.location),
        ]
        .concat();
        if r.offset != 0 || r.tensor.len() % 2 == 0 {
            t.extend(kv("offset", &r.offset.to_string()));
        }
        if let Some(n) = r.length {
            t.extend(kv("length", &n.to_string()));
        }
        t.extend(kv("checksum", "abc"));
        t.extend(field_varint(14, EXTERNAL));
        t
    }
    fn inline_tensor(name: &str) -> Vec<u8> {
        [field_len(8, name.as_bytes()), field_len(9, &[0; 16])].concat()
    }
    fn node(attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut n = [field_len(1, b"x"), field_len(2, b"y"), field_len(4, b"If")].concat();
        for a in attrs {
            n.extend(field_len(5, a));
        }
        n
    }
    fn attr_graph(g: &[u8]) -> Vec<u8> {
        [field_len(1, b"then_branch"), field_varint(20, 5), field_len(6, g)].concat()
    }
    fn model(graph: &[u8]) -> Vec<u8> {
        [
            field_varint(1, 8),
            field_len(2, b"pytorch"),
            field_len(8, &[field_len(1, b""), field_varint(2, 17)].concat()),
            field_len(7, graph),
        ]
        .concat()
    }

    /// Where a generated ref goes: 0 an initializer, 1 a sparse initializer's values, 2 a node
    /// attribute tensor, 3 an initializer of a node's subgraph, 4 in a graphs-list attribute.
    fn place(r: &ExternalRef, how: u8) -> Vec<u8> {
        let t = tensor_proto(r);
        match how {
            0 => field_len(5, &t),
            1 => field_len(15, &[field_len(1, &t), field_len(3, &[2])].concat()),
            2 => field_len(1, &node(&[[field_len(1, b"value"), field_len(5, &t)].concat()])),
            3 => field_len(1, &node(&[attr_graph(&field_len(5, &t))])),
            _ => field_len(
                1,
                &node(&[[field_len(1, b"bodies"), field_len(11, &field_len(5, &t))].concat()]),
            ),
        }
    }

    fn ext_ref() -> impl Strategy<Value = ExternalRef> {
        (
            "[a-z.:/]{0,10}",
            prop_oneof![Just("model.onnx_data"), Just("./model.onnx_data"), Just("other.bin")],
            prop_oneof![Just(0u64), 0u64..100, any::<u64>()],
            proptest::option::of(prop_oneof![0u64..100, any::<u64>()]),
        )
            .prop_map(|(tensor, location, offset, length)| ExternalRef {
                tensor,
                location: location.to_owned(),
                offset,
                length,
            })
    }

    fn encoded() -> impl Strategy<Value = (Vec<ExternalRef>, Vec<u8>)> {
        proptest::collection::vec((ext_ref(), 0u8..5, any::<bool>()), 0..8).prop_map(|items| {
            let mut g = field_len(2, b"main");
            let mut refs = Vec::new();
            for (i, (r, how, inline)) in items.into_iter().enumerate() {
                if inline {
                    g.extend(field_len(5, &inline_tensor(&format!("inline{i}"))));
                }
                g.extend(place(&r, how));
                refs.push(r);
            }
            (refs, model(&g))
        })
    }

    fn check_regions(refs: &[ExternalRef], size: u64) {
        for loc in ["model.onnx_data", "other.bin", "nothing"] {
            let regions = regions_in(refs, loc, size);
            let mut seen = HashSet::new();
            for t in &regions {
                assert!(t.range.start < t.range.end && t.range.end <= size, "{t:?}");
                assert!(seen.insert(t.range.clone()), "{t:?} twice");
            }
            assert!(regions.len() <= refs.len());
        }
    }

    proptest! {
        #[test]
        fn external_refs_recovers_the_encoded_refs((refs, bytes) in encoded()) {
            prop_assert_eq!(external_refs(&bytes).unwrap(), refs.clone());
            check_regions(&refs, 1000);
        }

        #[test]
        fn truncated_and_mutated_models_never_panic(
            (refs, mut bytes) in encoded(),
            cut in any::<prop::sample::Index>(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            if let Ok(got) = external_refs(&bytes[..cut.index(bytes.len() + 1)]) {
                prop_assert!(got.len() <= refs.len());
            }
            for (at, b) in edits {
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] = b;
                }
            }
            if let Ok(got) = external_refs(&bytes) {
                check_regions(&got, 500);
                check_regions(&got, u64::MAX);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Ok(got) = external_refs(&bytes) {
                check_regions(&got, 100);
            }
        }

        #[test]
        fn regions_are_clamped_unique_and_in_reference_order(
            refs in proptest::collection::vec(ext_ref(), 0..12),
            size in 0u64..200,
        ) {
            check_regions(&refs, size);
            let regions = regions_in(&refs, "./model.onnx_data", size);
            // Reference order: each region's name appears in refs after the previous one's.
            let mut at = 0;
            for t in &regions {
                let i = refs[at..].iter().position(|r| r.tensor == t.name && normalized(&r.location) == "model.onnx_data");
                prop_assert!(i.is_some(), "{:?} out of order", t);
                at += i.unwrap() + 1;
            }
        }
    }

    fn r(tensor: &str, location: &str, offset: u64, length: Option<u64>) -> ExternalRef {
        ExternalRef { tensor: tensor.into(), location: location.into(), offset, length }
    }

    /// ir_version 8, producer "pytorch", opset 17, and a graph of: an inline initializer
    /// "bias" (whose stray location entry does not make it external), an If node whose
    /// then_branch holds external "sub" (sub.bin @32, 16 bytes), then external "w.1"
    /// (./model.onnx_data @4096, no length) and "w.0" (model.onnx_data, no offset).
    const GOLDEN: &[u8] = b"\x08\x08\x12\x07pytorchB\x04\n\x00\x10\x11:\xd5\x01*\x1bB\x04biasj\r\n\x08location\x12\x01xJ\x04\x00\x00\x00\x00\nX\n\x01x\x12\x01y\"\x02If*L\n\x0bthen_branch\xa0\x01\x052:*8B\x03subj\x13\n\x08location\x12\x07sub.binj\x0c\n\x06offset\x12\x0232j\x0c\n\x06length\x12\x0216p\x01*6B\x03w.1j\x1d\n\x08location\x12\x11./model.onnx_dataj\x0e\n\x06offset\x12\x044096p\x01*$B\x03w.0j\x1b\n\x08location\x12\x0fmodel.onnx_datap\x01";

    #[test]
    fn golden() {
        let refs = external_refs(GOLDEN).unwrap();
        assert_eq!(
            refs,
            [
                r("sub", "sub.bin", 32, Some(16)),
                r("w.1", "./model.onnx_data", 4096, None),
                r("w.0", "model.onnx_data", 0, None),
            ]
        );
        let t = |name: &str, range| Tensor { name: name.to_owned(), range };
        assert_eq!(
            regions_in(&refs, "model.onnx_data", 10_000),
            [t("w.1", 4096..10_000), t("w.0", 0..4096)]
        );
        assert_eq!(regions_in(&refs, "./sub.bin", 40), [t("sub", 32..40)]);
        assert_eq!(regions_in(&refs, "sub.bin", 30), []);
    }

    /// The test encoder builds the golden model byte for byte.
    #[test]
    fn encoder_matches_golden() {
        let sub_t = [
            field_len(8, b"sub"),
            kv("location", "sub.bin"),
            kv("offset", "32"),
            kv("length", "16"),
            field_varint(14, 1),
        ]
        .concat();
        let w0 =
            [field_len(8, b"w.0"), kv("location", "model.onnx_data"), field_varint(14, 1)].concat();
        let w1 = [
            field_len(8, b"w.1"),
            kv("location", "./model.onnx_data"),
            kv("offset", "4096"),
            field_varint(14, 1),
        ]
        .concat();
        // A location entry, but data_location DEFAULT: not external.
        let inline = [field_len(8, b"bias"), kv("location", "x"), field_len(9, &[0; 4])].concat();
        let graph = [
            field_len(5, &inline),
            field_len(1, &node(&[attr_graph(&field_len(5, &sub_t))])),
            field_len(5, &w1),
            field_len(5, &w0),
        ]
        .concat();
        assert_eq!(model(&graph), GOLDEN);
    }

    #[test]
    fn malformed_models() {
        let bad = |bytes: &[u8], needle: &str| match external_refs(bytes) {
            Err(FormatError::Malformed { format, what }) => {
                assert_eq!(format, "onnx");
                assert!(what.contains(needle), "{what:?} lacks {needle:?}");
            }
            other => panic!("{other:?}, wanted Malformed({needle})"),
        };
        let ext = |extra: &[u8]| {
            let t = [field_len(8, b"t"), kv("location", "d"), extra.to_vec(), field_varint(14, 1)];
            model(&field_len(5, &t.concat()))
        };
        // Groups (wire types 3 and 4), and the undefined wire types.
        bad(&[0x0b], "wire type 3");
        bad(&[0x0c], "wire type 4");
        bad(&[0x0e], "wire type 6");
        bad(&model(&[0x2b, 0x2c]), "wire type 3");
        // Truncations: a length past the end, a varint cut short, a fixed64 cut short.
        bad(&[0x3a, 0x05, 0x00], "runs past");
        bad(&[0x08, 0x80], "varint runs past");
        bad(&[0x09, 1, 2, 3], "runs past");
        bad(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], "overflows");
        bad(&[0x00, 0x00], "field number 0");
        // The graph as a varint.
        bad(&field_varint(7, 3), "not length-delimited");
        // Bad numbers, a missing location.
        bad(&ext(&kv("offset", "-1")), "not a number");
        bad(&ext(&kv("offset", "+1")), "not a number");
        bad(&ext(&kv("length", "")), "not a number");
        bad(&ext(&kv("length", "18446744073709551616")), "too large");
        let t = [field_len(8, b"t"), kv("offset", "0"), field_varint(14, 1)].concat();
        bad(&model(&field_len(5, &t)), "no location");
        bad(&ext(&field_len(8, &[0xff])), "not UTF-8");
        // Subgraphs nested past the bound; one level less is fine.
        let nest = |levels: u32| {
            let mut g = field_len(5, &tensor_proto(&r("deep", "d", 0, None)));
            for _ in 1..levels {
                g = field_len(1, &node(&[attr_graph(&g)]));
            }
            model(&g)
        };
        bad(&nest(MAX_GRAPH_DEPTH + 1), "nested");
        assert_eq!(external_refs(&nest(MAX_GRAPH_DEPTH)).unwrap().len(), 1);
    }

    #[test]
    fn missing_lengths_run_to_the_next_offset_and_ranges_are_clamped() {
        let refs = [
            r("a", "d", 100, None),
            r("b", "./d", 0, None),
            r("c", "d", 50, Some(10)),
            r("dup", "d", 50, Some(10)),
            r("empty", "d", 60, Some(0)),
            r("past", "d", 500, Some(10)),
            r("huge", "d", 150, Some(u64::MAX)),
            r("elsewhere", "e", 0, None),
        ];
        let t = |name: &str, range| Tensor { name: name.to_owned(), range };
        assert_eq!(
            regions_in(&refs, "d", 200),
            [t("a", 100..150), t("b", 0..50), t("c", 50..60), t("huge", 150..200)]
        );
    }
}
