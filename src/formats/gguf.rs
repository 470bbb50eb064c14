//! The GGUF header (versions 2 and 3, little-endian): magic, version, counts, the metadata
//! key-value pairs, and one info per tensor (name, dimensions, ggml type, offset into the
//! data section). llama.cpp and its kin read all of it, align the end to `general.alignment`
//! to find the data section, then mmap and touch each tensor's bytes; [`parse`] gives those
//! ranges, and says how many header bytes it still needs when the prefix stops short.

use super::safetensors::sort_and_check;
use super::{FormatError, Layout, Tensor};

/// The largest header (metadata and tensor infos) accepted: 256 MiB. Headers are big because
/// tokenizers live in the metadata: a 150k-token vocabulary with its merges and scores is tens
/// of MB; 256 MiB leaves room for the largest seen while bounding what a hostile file can make
/// a caller read before any tensor.
pub const MAX_HEADER: u64 = 256 * 1024 * 1024;

const FORMAT: &str = "gguf";
const MAGIC: &[u8; 4] = b"GGUF";
/// The alignment of the data section and of each tensor when the file names none, as the GGUF
/// spec (and `GGUF_DEFAULT_ALIGNMENT` in ggml) defines it.
const DEFAULT_ALIGNMENT: u64 = 32;
/// More dimensions than ggml has ever used (`GGML_MAX_DIMS` is 4): beyond this a file is not
/// one a loader accepts, and the bound keeps a tensor info fixed-size.
const MAX_DIMS: u32 = 8;
/// Arrays may hold arrays; no writer nests more than once, and the bound keeps the recursion
/// of [`skip_value`] shallow whatever the file says.
const MAX_ARRAY_DEPTH: u32 = 8;

/// The smallest tensor info: name length, n_dims, type, offset.
const MIN_TENSOR_INFO: u64 = 8 + 4 + 4 + 8;
/// The smallest key-value pair: key length, value type, a one-byte value.
const MIN_KV: u64 = 8 + 4 + 1;

const TYPE_STRING: u32 = 8;
const TYPE_ARRAY: u32 = 9;
const TYPE_U32: u32 = 4;

/// Why parsing stopped: the prefix ended before position `Short(end)`, or the file is bad.
enum Stop {
    Short(u64),
    Bad(String),
}

fn bad(what: impl Into<String>) -> Stop {
    Stop::Bad(what.into())
}

/// A cursor over the prefix that knows the file size, so a read is either satisfied, past the
/// prefix (more bytes would help) or past the file (nothing will).
struct Reader<'a> {
    buf: &'a [u8],
    pos: u64,
    file_size: u64,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], Stop> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.file_size).ok_or_else(|| {
            bad(format!(
                "{n} bytes at offset {} run past the {}-byte file",
                self.pos, self.file_size
            ))
        })?;
        // pos <= buf.len() always, so both ends fit a usize when `end` is within the buffer.
        let slice = usize::try_from(end)
            .ok()
            .and_then(|e| self.buf.get(self.pos as usize..e))
            .ok_or(Stop::Short(end))?;
        self.pos = end;
        Ok(slice)
    }

    fn u32(&mut self) -> Result<u32, Stop> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, Stop> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn string(&mut self) -> Result<&'a [u8], Stop> {
        let n = self.u64()?;
        self.take(n)
    }

    /// Refuse a count of items of at least `min` bytes each that the rest of the file cannot
    /// hold, before looping over it or storing anything for it.
    fn check_count(&self, count: u64, min: u64, what: &str) -> Result<(), Stop> {
        let room = self.file_size - self.pos;
        if count.checked_mul(min).is_none_or(|b| b > room) {
            return Err(bad(format!("{count} {what} cannot fit in the {room} bytes left")));
        }
        Ok(())
    }
}

/// Size of a fixed-size metadata value type.
fn fixed_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1, // u8, i8, bool
        2 | 3 => 2,     // u16, i16
        4..=6 => 4,     // u32, i32, f32
        10..=12 => 8,   // u64, i64, f64
        _ => return None,
    })
}

fn skip_value(r: &mut Reader<'_>, ty: u32, depth: u32) -> Result<(), Stop> {
    if let Some(n) = fixed_size(ty) {
        r.take(n)?;
        return Ok(());
    }
    match ty {
        TYPE_STRING => {
            r.string()?;
        }
        TYPE_ARRAY => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(bad(format!("arrays nested over {MAX_ARRAY_DEPTH} deep")));
            }
            let elem = r.u32()?;
            let count = r.u64()?;
            if let Some(n) = fixed_size(elem) {
                // One skip for the whole array: vocabulary scores are 100k+ floats.
                let total = count
                    .checked_mul(n)
                    .ok_or_else(|| bad(format!("array of {count} elements overflows")))?;
                r.take(total)?;
            } else {
                let min = match elem {
                    TYPE_STRING => 8,
                    TYPE_ARRAY => 4 + 8,
                    _ => return Err(bad(format!("unknown array element type {elem}"))),
                };
                r.check_count(count, min, "array elements")?;
                for _ in 0..count {
                    skip_value(r, elem, depth + 1)?;
                }
            }
        }
        _ => return Err(bad(format!("unknown metadata value type {ty}"))),
    }
    Ok(())
}

/// (elements per block, bytes per block) of each ggml type, as `GGML_QUANT_SIZES` in the
/// `gguf` Python package (llama.cpp gguf-py/gguf/constants.py) lists them.
fn ggml_type_size(ty: u32) -> Option<(u64, u64)> {
    Some(match ty {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        16 => (256, 66),  // IQ2_XXS
        17 => (256, 74),  // IQ2_XS
        18 => (256, 98),  // IQ3_XXS
        19 => (256, 50),  // IQ1_S
        20 => (32, 18),   // IQ4_NL
        21 => (256, 110), // IQ3_S
        22 => (256, 82),  // IQ2_S
        23 => (256, 136), // IQ4_XS
        24 => (1, 1),     // I8
        25 => (1, 2),     // I16
        26 => (1, 4),     // I32
        27 => (1, 8),     // I64
        28 => (1, 8),     // F64
        29 => (256, 56),  // IQ1_M
        30 => (1, 2),     // BF16
        34 => (256, 54),  // TQ1_0
        35 => (256, 66),  // TQ2_0
        _ => return None,
    })
}

struct Info {
    name: String,
    dims: [u64; MAX_DIMS as usize],
    ty: u32,
    offset: u64,
}

/// Bytes of a tensor of a known type: whole blocks along `dims[0]`, times the other dims.
fn known_size(info: &Info, block: u64, block_bytes: u64) -> Result<u64, Stop> {
    let ne0 = info.dims[0];
    if ne0 % block != 0 {
        return Err(bad(format!(
            "{:?}: {ne0} elements per row is not a multiple of type {}'s block of {block}",
            info.name, info.ty
        )));
    }
    let rest = &info.dims[1..];
    let rows = if rest.contains(&0) {
        Some(0)
    } else {
        rest.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
    };
    (ne0 / block)
        .checked_mul(block_bytes)
        .zip(rows)
        .and_then(|(row, rows)| row.checked_mul(rows))
        .ok_or_else(|| bad(format!("{:?}: size overflows", info.name)))
}

fn parse_header(r: &mut Reader<'_>) -> Result<Layout, Stop> {
    let magic = r.take(4)?;
    if magic != MAGIC {
        return Err(bad(format!("magic {magic:02x?} is not \"GGUF\"")));
    }
    let version = r.u32()?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(bad("version 1 (32-bit counts and lengths) is not supported; only 2 and 3"))
        }
        v if matches!(v.swap_bytes(), 2 | 3) => {
            return Err(bad(format!(
                "version {v:#x} is big-endian version {}; only little-endian files are supported",
                v.swap_bytes()
            )))
        }
        v => return Err(bad(format!("version {v} is not supported; only 2 and 3"))),
    }
    let tensor_count = r.u64()?;
    let kv_count = r.u64()?;
    r.check_count(kv_count, MIN_KV, "metadata entries")?;
    let mut alignment = None;
    for _ in 0..kv_count {
        let key = r.string()?;
        let ty = r.u32()?;
        if key == b"general.alignment" {
            if ty != TYPE_U32 {
                return Err(bad(format!("general.alignment has type {ty}, not u32")));
            }
            let a = r.u32()?;
            // llama.cpp also wants a power of two, the spec a multiple of 8; any nonzero value
            // still places the data section unambiguously, so only 0 is refused here.
            if a == 0 {
                return Err(bad("general.alignment is 0"));
            }
            if alignment.replace(u64::from(a)).is_some() {
                return Err(bad("general.alignment is given twice"));
            }
        } else {
            skip_value(r, ty, 0)?;
        }
    }
    let alignment = alignment.unwrap_or(DEFAULT_ALIGNMENT);

    r.check_count(tensor_count, MIN_TENSOR_INFO, "tensor infos")?;
    // Grows with what is read, not with the count: the count was only checked against the
    // file size, which can be far beyond the prefix.
    let mut infos = Vec::new();
    for _ in 0..tensor_count {
        let name = r.string()?;
        let name =
            std::str::from_utf8(name).map_err(|_| bad("a tensor name is not UTF-8"))?.to_owned();
        let n_dims = r.u32()?;
        if n_dims > MAX_DIMS {
            return Err(bad(format!("{name:?} has {n_dims} dimensions, over {MAX_DIMS}")));
        }
        // Missing dimensions are 1, as in ggml, so a 0-d tensor is one element.
        let mut dims = [1u64; MAX_DIMS as usize];
        for d in dims.iter_mut().take(n_dims as usize) {
            *d = r.u64()?;
        }
        let ty = r.u32()?;
        let offset = r.u64()?;
        infos.push(Info { name, dims, ty, offset });
    }

    let file_size = r.file_size;
    let data_start = r
        .pos
        .div_ceil(alignment)
        .checked_mul(alignment)
        .ok_or_else(|| bad("data start overflows"))?;
    let mut starts = Vec::with_capacity(infos.len());
    for info in &infos {
        match data_start.checked_add(info.offset) {
            Some(s) if s <= file_size => starts.push(s),
            _ => {
                return Err(bad(format!(
                    "{:?}: offset {} is past the {file_size}-byte file",
                    info.name, info.offset
                )))
            }
        }
    }
    // For tensors of unknown type: the next start in file order bounds them.
    let mut sorted_starts = starts.clone();
    sorted_starts.sort_unstable();

    let mut tensors = Vec::with_capacity(infos.len());
    for (info, start) in infos.into_iter().zip(starts) {
        let end = match ggml_type_size(info.ty) {
            Some((block, bytes)) => start
                .checked_add(known_size(&info, block, bytes)?)
                .filter(|&e| e <= file_size)
                .ok_or_else(|| {
                    bad(format!("{:?} at {start} runs past the {file_size}-byte file", info.name))
                })?,
            None => {
                let i = sorted_starts.partition_point(|&s| s <= start);
                sorted_starts.get(i).copied().unwrap_or(file_size)
            }
        };
        tensors.push(Tensor { name: info.name, range: start..end });
    }

    let mut names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(bad(format!("tensor {:?} is listed twice", w[0])));
    }
    drop(names);
    sort_and_check(&mut tensors).map_err(Stop::Bad)?;
    Ok(Layout {
        // Past the file only when there are no tensors (any tensor starts at or after it and
        // was checked to lie inside): a file may end without the final padding.
        header_len: data_start.min(file_size),
        tensors,
    })
}

/// The layout of a GGUF file of `file_size` bytes from its first bytes `prefix`.
///
/// When the tensor infos go on past `prefix`, `NeedMore(n)`: at least the end of the field
/// that did not fit, and at least twice `prefix.len()` so that a caller looping on it reads
/// a header of H bytes in O(log H) rounds; never more than the file or [`MAX_HEADER`]. The
/// padding after the infos is not needed. A header that needs more than [`MAX_HEADER`] bytes
/// is malformed.
pub fn parse(prefix: &[u8], file_size: u64) -> Result<Layout, FormatError> {
    // Bytes past the stated end of the file are not part of it.
    let prefix = match usize::try_from(file_size) {
        Ok(n) if n < prefix.len() => &prefix[..n],
        _ => prefix,
    };
    // A wrong magic is known from the first byte, not after a round trip for four.
    if !MAGIC.starts_with(&prefix[..prefix.len().min(4)]) {
        return Err(FormatError::Malformed {
            format: FORMAT,
            what: format!("magic {:02x?} is not \"GGUF\"", &prefix[..prefix.len().min(4)]),
        });
    }
    let mut r = Reader { buf: prefix, pos: 0, file_size };
    let have = prefix.len() as u64;
    match parse_header(&mut r) {
        Ok(layout) => Ok(layout),
        Err(Stop::Short(needed)) if needed > MAX_HEADER => Err(FormatError::Malformed {
            format: FORMAT,
            what: format!("the header goes on past {MAX_HEADER} bytes"),
        }),
        // `needed` > have (the read ran past the prefix) and <= file_size (a read past the file
        // is Bad), so the result is in (have, file_size].
        Err(Stop::Short(needed)) => Err(FormatError::NeedMore(
            needed.max(have.saturating_mul(2)).min(file_size).min(MAX_HEADER),
        )),
        Err(Stop::Bad(what)) => Err(FormatError::Malformed { format: FORMAT, what }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The known types the encoder uses, with their sizes, plus 200 for an unknown one.
    const TYPES: &[u32] = &[0, 1, 2, 8, 10, 12, 14, 16, 19, 23, 24, 28, 29, 30, 34, 35, 200];

    #[derive(Debug, Clone)]
    enum Value {
        U8(u8),
        U32(u32),
        F64(f64),
        Str(String),
        Arr(u32, Vec<Value>),
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<u8>().prop_map(Value::U8),
            any::<u32>().prop_map(Value::U32),
            any::<f64>().prop_map(Value::F64),
            "[a-z ]{0,12}".prop_map(Value::Str),
            proptest::collection::vec(any::<u32>(), 0..6)
                .prop_map(|v| Value::Arr(4, v.into_iter().map(Value::U32).collect())),
            proptest::collection::vec("[a-z]{0,5}", 0..6)
                .prop_map(|v| Value::Arr(8, v.into_iter().map(Value::Str).collect())),
        ];
        // Arrays of arrays: every element of a type-9 array must itself be an array, so a
        // scalar drawn for one becomes an empty u32 array.
        leaf.prop_recursive(2, 12, 3, |inner| {
            proptest::collection::vec(inner, 0..3).prop_map(|v| {
                let arrays = v
                    .into_iter()
                    .map(|x| match x {
                        a @ Value::Arr(..) => a,
                        _ => Value::Arr(4, vec![]),
                    })
                    .collect();
                Value::Arr(9, arrays)
            })
        })
    }

    impl Value {
        fn ty(&self) -> u32 {
            match self {
                Value::U8(_) => 0,
                Value::U32(_) => 4,
                Value::F64(_) => 12,
                Value::Str(_) => 8,
                Value::Arr(..) => 9,
            }
        }
        fn put(&self, out: &mut Vec<u8>) {
            match self {
                Value::U8(v) => out.push(*v),
                Value::U32(v) => out.extend(v.to_le_bytes()),
                Value::F64(v) => out.extend(v.to_le_bytes()),
                Value::Str(s) => put_str(out, s),
                Value::Arr(ty, items) => {
                    out.extend(ty.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    for i in items {
                        i.put(out);
                    }
                }
            }
        }
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    /// A tensor: type index into TYPES, blocks along dim 0, the other dims, gap (in alignment
    /// units) before its data.
    #[derive(Debug, Clone)]
    struct Spec {
        ty: usize,
        blocks: u64,
        dims: Vec<u64>,
        gap: u64,
    }

    #[derive(Debug, Clone)]
    struct File {
        version: u32,
        kvs: Vec<(String, Value)>,
        alignment: Option<u32>,
        tensors: Vec<Spec>,
        /// Info order: a permutation of the tensors (data is in spec order).
        order: Vec<usize>,
        tail: u64,
    }

    fn file() -> impl Strategy<Value = File> {
        let spec = (0..TYPES.len(), 0u64..3, proptest::collection::vec(0u64..3, 0..3), 0u64..3)
            .prop_map(|(ty, blocks, dims, gap)| Spec { ty, blocks, dims, gap });
        (
            prop_oneof![Just(2u32), Just(3u32)],
            proptest::collection::vec(("[a-z.]{1,10}", value()), 0..5),
            proptest::option::of(prop_oneof![Just(1u32), Just(8), Just(32), Just(64), Just(48)]),
            proptest::collection::vec(spec, 0..6),
            0u64..40,
        )
            .prop_flat_map(|(version, kvs, alignment, tensors, tail)| {
                let order: Vec<usize> = (0..tensors.len()).collect();
                (Just(order).prop_shuffle(), Just((version, kvs, alignment, tensors, tail)))
            })
            .prop_map(|(order, (version, kvs, alignment, tensors, tail))| File {
                version,
                kvs,
                alignment,
                tensors,
                order,
                tail,
            })
    }

    /// The whole file (data zeroed) and the layout it must parse to.
    fn encode(f: &File) -> (Vec<u8>, Layout) {
        let align = u64::from(f.alignment.unwrap_or(32));
        let mut out = b"GGUF".to_vec();
        out.extend(f.version.to_le_bytes());
        out.extend((f.tensors.len() as u64).to_le_bytes());
        out.extend((f.kvs.len() as u64 + u64::from(f.alignment.is_some())).to_le_bytes());
        for (i, (k, v)) in f.kvs.iter().enumerate() {
            put_str(&mut out, &format!("{k}{i}"));
            out.extend(v.ty().to_le_bytes());
            v.put(&mut out);
            // The alignment somewhere in the middle.
            if i == f.kvs.len() / 2 {
                if let Some(a) = f.alignment {
                    put_str(&mut out, "general.alignment");
                    out.extend(TYPE_U32.to_le_bytes());
                    out.extend(a.to_le_bytes());
                }
            }
        }
        if f.kvs.is_empty() {
            if let Some(a) = f.alignment {
                put_str(&mut out, "general.alignment");
                out.extend(TYPE_U32.to_le_bytes());
                out.extend(a.to_le_bytes());
            }
        }
        // Place the data: each tensor at an aligned offset after the previous, plus a gap;
        // an unknown type gets `blocks + 1` alignment units.
        let mut offsets = Vec::new();
        let mut pos = 0u64;
        for s in &f.tensors {
            pos = pos.div_ceil(align) * align + s.gap * align;
            offsets.push(pos);
            pos += match ggml_type_size(TYPES[s.ty]) {
                Some((_, bytes)) => s.blocks * bytes * s.dims.iter().product::<u64>(),
                None => (s.blocks + 1) * align,
            };
        }
        let data_len = pos + f.tail;
        for &i in &f.order {
            let s = &f.tensors[i];
            put_str(&mut out, &format!("blk.{i}.weight"));
            out.extend((1 + s.dims.len() as u32).to_le_bytes());
            let block = ggml_type_size(TYPES[s.ty]).map_or(1, |t| t.0);
            out.extend((s.blocks * block).to_le_bytes());
            for d in &s.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(TYPES[s.ty].to_le_bytes());
            out.extend(offsets[i].to_le_bytes());
        }
        let data_start = (out.len() as u64).div_ceil(align) * align;
        let file_size = data_start + data_len;
        out.resize(file_size as usize, 0);

        let starts: Vec<u64> = offsets.iter().map(|o| data_start + o).collect();
        let mut sorted = starts.clone();
        sorted.sort_unstable();
        let mut tensors: Vec<Tensor> = f
            .tensors
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let start = starts[i];
                let end = match ggml_type_size(TYPES[s.ty]) {
                    Some((_, bytes)) => start + s.blocks * bytes * s.dims.iter().product::<u64>(),
                    None => sorted.iter().copied().find(|&x| x > start).unwrap_or(file_size),
                };
                Tensor { name: format!("blk.{i}.weight"), range: start..end }
            })
            .collect();
        sort_and_check(&mut tensors).unwrap();
        (out, Layout { header_len: data_start, tensors })
    }

    /// Where the tensor infos end in an encoded file: the shortest prefix that parses.
    fn infos_end(bytes: &[u8]) -> usize {
        (0..=bytes.len()).find(|&n| parse(&bytes[..n], bytes.len() as u64).is_ok()).unwrap()
    }

    fn check_any(bytes: &[u8], size: u64) {
        match parse(bytes, size) {
            Ok(l) => l.check(size).unwrap(),
            Err(FormatError::NeedMore(n)) => {
                assert!(n > bytes.len() as u64 && n <= size && n <= MAX_HEADER)
            }
            Err(FormatError::Malformed { format, .. }) => assert_eq!(format, "gguf"),
        }
    }

    proptest! {
        #[test]
        fn parse_recovers_the_encoded_layout(f in file()) {
            let (bytes, want) = encode(&f);
            let got = parse(&bytes, bytes.len() as u64).unwrap();
            got.check(bytes.len() as u64).unwrap();
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(parse(&bytes[..want.header_len as usize], bytes.len() as u64), Ok(want));
        }

        #[test]
        fn every_truncation_asks_for_more_and_the_loop_ends(f in file()) {
            let (bytes, want) = encode(&f);
            let end = infos_end(&bytes);
            prop_assert!(end as u64 <= want.header_len);
            for cut in 0..end {
                match parse(&bytes[..cut], bytes.len() as u64) {
                    Err(FormatError::NeedMore(n)) => prop_assert!(n > cut as u64),
                    other => prop_assert!(false, "{:?} at {}", other, cut),
                }
                let (got, rounds) = crate::formats::parse_loop(parse, &bytes, cut);
                prop_assert_eq!(got, Ok(want.clone()));
                // Doubling from at least one byte (or jumping to a known end) reaches any
                // header in about log2 of its length.
                let bound = 2 + (usize::BITS - end.leading_zeros()) as usize;
                prop_assert!(rounds <= bound, "{} rounds from {} to {}", rounds, cut, end);
            }
        }

        #[test]
        fn mutated_files_never_panic_and_ok_keeps_the_invariants(
            f in file(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let (mut bytes, _) = encode(&f);
            for (at, b) in edits {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            check_any(&bytes, bytes.len() as u64);
            check_any(&bytes, bytes.len() as u64 + 4096);
            check_any(&bytes, u64::MAX);
        }

        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..96), extra in 0u64..100) {
            check_any(&bytes, bytes.len() as u64 + extra);
            // And with the magic right, to get past the first check.
            bytes.splice(0..bytes.len().min(4), *b"GGUF");
            check_any(&bytes, bytes.len() as u64 + extra);
        }
    }

    fn u32le(v: u32) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }
    fn u64le(v: u64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }
    fn gstr(s: &str) -> Vec<u8> {
        [u64le(s.len() as u64), s.as_bytes().to_vec()].concat()
    }

    #[test]
    fn golden() {
        let header = [
            b"GGUF".to_vec(),
            u32le(3),
            u64le(3), // tensors
            u64le(2), // metadata entries
            gstr("general.architecture"),
            u32le(8),
            gstr("llama"),
            gstr("general.alignment"),
            u32le(4),
            u32le(64),
            // Infos, not in file order.
            gstr("output.weight"),
            u32le(2),
            u64le(256),
            u64le(2),
            u32le(12), // Q4_K: 144 bytes a row of 256
            u64le(128),
            gstr("token_embd.weight"),
            u32le(2),
            u64le(32),
            u64le(3),
            u32le(8), // Q8_0: 34 bytes a row of 32
            u64le(0),
            gstr("norm"),
            u32le(1),
            u64le(16),
            u32le(0), // F32
            u64le(448),
        ]
        .concat();
        assert_eq!(header.len(), 248);
        let file_size = 256 + 448 + 64;
        let t = |name: &str, range| Tensor { name: name.to_owned(), range };
        let want = Layout {
            header_len: 256,
            tensors: vec![
                t("token_embd.weight", 256..358),
                t("output.weight", 384..672),
                t("norm", 704..768),
            ],
        };
        assert_eq!(parse(&header, file_size), Ok(want));
        assert_eq!(parse(&header[..100], file_size), Err(FormatError::NeedMore(200)));
        assert_eq!(parse(&header[..200], file_size), Err(FormatError::NeedMore(400)));
        assert_eq!(parse(&header[..3], file_size), Err(FormatError::NeedMore(6)));
        assert_eq!(parse(&header[..0], file_size), Err(FormatError::NeedMore(4)));
    }

    fn assert_malformed(bytes: &[u8], size: u64, needle: &str) {
        match parse(bytes, size) {
            Err(FormatError::Malformed { format, what }) => {
                assert_eq!(format, "gguf");
                assert!(what.contains(needle), "{what:?} lacks {needle:?}");
            }
            other => panic!("{other:?}, wanted Malformed({needle})"),
        }
    }

    fn head(version: u32, tensors: u64, kvs: u64) -> Vec<u8> {
        [b"GGUF".to_vec(), u32le(version), u64le(tensors), u64le(kvs)].concat()
    }

    fn info(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
        let mut v = gstr(name);
        v.extend(u32le(dims.len() as u32));
        for d in dims {
            v.extend(u64le(*d));
        }
        v.extend(u32le(ty));
        v.extend(u64le(offset));
        v
    }

    #[test]
    fn malformed_headers() {
        assert_malformed(b"GGUG", 100, "magic");
        assert_malformed(b"ggml\0\0\0\0", 100, "magic");
        assert_malformed(b"X", 100, "magic");
        assert_malformed(&head(1, 0, 0), 100, "version 1");
        assert_malformed(&head(4, 0, 0), 100, "version 4");
        assert_malformed(&head(3u32.swap_bytes(), 0, 0), 100, "big-endian");
        // Huge counts in a tiny input.
        assert_malformed(&head(3, u64::MAX, 0), 1 << 20, "tensor infos cannot fit");
        assert_malformed(&head(3, 0, 1 << 40), 1 << 20, "metadata entries cannot fit");
        let arr = [head(3, 0, 1), gstr("k"), u32le(9), u32le(8), u64le(u64::MAX)].concat();
        assert_malformed(&arr, 1 << 20, "array elements cannot fit");
        let arr = [head(3, 0, 1), gstr("k"), u32le(9), u32le(12), u64le(u64::MAX)].concat();
        assert_malformed(&arr, 1 << 20, "overflows");
        let s = [head(3, 0, 1), u64le(u64::MAX - 3)].concat();
        assert_malformed(&s, 1 << 20, "run past");
        // Nested arrays too deep.
        let mut deep = [head(3, 0, 1), gstr("k"), u32le(9)].concat();
        for _ in 0..MAX_ARRAY_DEPTH {
            deep.extend([u32le(9), u64le(1)].concat());
        }
        deep.extend([u32le(4), u64le(0)].concat());
        assert_malformed(&deep, 1 << 20, "nested");
        // One level less is fine.
        let mut ok = [head(3, 0, 1), gstr("k"), u32le(9)].concat();
        for _ in 1..MAX_ARRAY_DEPTH {
            ok.extend([u32le(9), u64le(1)].concat());
        }
        ok.extend([u32le(4), u64le(0)].concat());
        assert!(parse(&ok, 1 << 20).is_ok());
        // Unknown value types.
        let kv = [head(3, 0, 1), gstr("k"), u32le(13)].concat();
        assert_malformed(&kv, 1 << 20, "unknown metadata value type 13");
        // Alignment: wrong type, zero, twice.
        let a = [head(3, 0, 1), gstr("general.alignment"), u32le(10), u64le(32)].concat();
        assert_malformed(&a, 1 << 20, "not u32");
        let a = [head(3, 0, 1), gstr("general.alignment"), u32le(4), u32le(0)].concat();
        assert_malformed(&a, 1 << 20, "is 0");
        let one = [gstr("general.alignment"), u32le(4), u32le(8)].concat();
        let a = [head(3, 0, 2), one.clone(), one].concat();
        assert_malformed(&a, 1 << 20, "twice");
        // Too many dimensions.
        let t = [head(3, 1, 0), info("t", &[1; 9], 0, 0)].concat();
        assert_malformed(&t, 1 << 20, "9 dimensions");
        // Row not a whole number of blocks.
        let t = [head(3, 1, 0), info("t", &[33, 2], 2, 0)].concat();
        assert_malformed(&t, 1 << 20, "not a multiple");
        // An offset past the file, a tensor running past it, a size overflowing.
        let t = [head(3, 1, 0), info("t", &[4], 0, 1000)].concat();
        assert_malformed(&t, 1000, "past the 1000-byte file");
        let t = [head(3, 1, 0), info("t", &[400], 0, 0)].concat();
        assert_malformed(&t, 1000, "runs past");
        let t = [head(3, 1, 0), info("t", &[1 << 40, 1 << 40], 0, 0)].concat();
        assert_malformed(&t, u64::MAX, "overflows");
        // Overlap, and a name twice.
        let t = [head(3, 2, 0), info("a", &[8], 0, 0), info("b", &[8], 0, 16)].concat();
        assert_malformed(&t, 1000, "overlap");
        let t = [head(3, 2, 0), info("a", &[8], 0, 0), info("a", &[8], 0, 32)].concat();
        assert_malformed(&t, 1000, "twice");
        // A non-UTF-8 name.
        let t = [head(3, 1, 0), u64le(1), vec![0xff], u32le(0), u32le(0), u64le(0)].concat();
        assert_malformed(&t, 1000, "UTF-8");
        // The whole file given, and it stops mid-header.
        let t = [head(3, 0, 1), gstr("abc"), vec![4, 0]].concat();
        assert_malformed(&t, t.len() as u64, "run past");
    }

    #[test]
    fn unknown_types_end_at_the_next_tensor_or_the_file() {
        let t = [
            head(3, 3, 0),
            info("u1", &[7], 200, 0),
            info("f", &[4], 0, 64),
            info("u2", &[1], 201, 96),
        ]
        .concat();
        let l = parse(&t, 1000).unwrap();
        let ranges: Vec<_> = l.tensors.iter().map(|t| (t.name.as_str(), t.range.clone())).collect();
        let d = l.header_len;
        assert_eq!(ranges, [("u1", d..d + 64), ("f", d + 64..d + 80), ("u2", d + 96..1000)]);
    }

    #[test]
    fn need_more_is_capped_by_the_limit_and_the_file() {
        // A 300 MiB string: past MAX_HEADER.
        let t = [head(3, 0, 1), u64le(300 << 20)].concat();
        assert_malformed(&t, 1 << 40, "past");
        // Doubling is capped by the file size.
        let t = [head(3, 0, 1), u64le(10)].concat();
        assert_eq!(parse(&t, 60), Err(FormatError::NeedMore(60)));
        // No tensors, and the file ends before the padding: header_len is the file.
        let t = head(3, 0, 0);
        assert_eq!(parse(&t, 24), Ok(Layout { header_len: 24, tensors: vec![] }));
    }
}
