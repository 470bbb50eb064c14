//! Model files written byte by byte for the tests of load plans (tests/loads.rs): safetensors,
//! GGUF and an ONNX model that names external data. Written here from the formats' own
//! descriptions, not with modelfs's parsers, so that a parser bug cannot hide in a test
//! that uses it on both sides.

#![allow(dead_code)]

/// One tensor: name and its bytes (its dtype is F32, one dimension).
pub struct T {
    pub name: String,
    pub data: Vec<u8>,
}

impl T {
    pub fn new(name: &str, data: Vec<u8>) -> T {
        assert_eq!(data.len() % 4, 0, "F32 data");
        T { name: name.to_owned(), data }
    }
}

/// A safetensors file with `tensors` in this file order; returns the file and each tensor's
/// absolute byte range.
pub fn safetensors(tensors: &[T]) -> (Vec<u8>, Vec<std::ops::Range<u64>>) {
    let mut header = serde_json::Map::new();
    let mut at = 0u64;
    let mut offsets = Vec::new();
    for t in tensors {
        let end = at + t.data.len() as u64;
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": "F32", "shape": [t.data.len() / 4], "data_offsets": [at, end]}),
        );
        offsets.push(at..end);
        at = end;
    }
    let mut json = serde_json::to_vec(&header).unwrap();
    // The format pads the header with spaces to a multiple of 8.
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let data_start = 8 + json.len() as u64;
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    for t in tensors {
        out.extend_from_slice(&t.data);
    }
    (out, offsets.into_iter().map(|r| r.start + data_start..r.end + data_start).collect())
}

/// `*.safetensors.index.json` mapping each tensor to its shard.
pub fn shard_index(map: &[(&str, &str)]) -> Vec<u8> {
    let weight_map: serde_json::Map<String, serde_json::Value> =
        map.iter().map(|(t, s)| (t.to_string(), serde_json::json!(s))).collect();
    serde_json::to_vec(&serde_json::json!({"metadata": {}, "weight_map": weight_map})).unwrap()
}

fn gguf_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A GGUF v3 file with `tensors` (F32, one dimension) in this file order, aligned to 32; returns
/// the file and each tensor's absolute byte range.
pub fn gguf(tensors: &[T]) -> (Vec<u8>, Vec<std::ops::Range<u64>>) {
    const ALIGN: u64 = 32;
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&2u64.to_le_bytes());
    gguf_string(&mut out, "general.architecture");
    out.extend_from_slice(&8u32.to_le_bytes());
    gguf_string(&mut out, "llama");
    gguf_string(&mut out, "general.alignment");
    out.extend_from_slice(&4u32.to_le_bytes());
    out.extend_from_slice(&(ALIGN as u32).to_le_bytes());
    let mut rel = Vec::new();
    let mut at = 0u64;
    for t in tensors {
        gguf_string(&mut out, &t.name);
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&((t.data.len() / 4) as u64).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // F32
        out.extend_from_slice(&at.to_le_bytes());
        rel.push(at..at + t.data.len() as u64);
        at = (at + t.data.len() as u64).next_multiple_of(ALIGN);
    }
    let data_start = (out.len() as u64).next_multiple_of(ALIGN);
    out.resize(data_start as usize, 0);
    for (t, r) in tensors.iter().zip(&rel) {
        out.resize((data_start + r.start) as usize, 0);
        out.extend_from_slice(&t.data);
    }
    (out, rel.into_iter().map(|r| r.start + data_start..r.end + data_start).collect())
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn field_varint(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

/// An ONNX ModelProto whose graph's initializers (F32, one dimension) all live in the
/// external data file `location`, at the given (offset, length), in this order.
pub fn onnx_external(location: &str, initializers: &[(&str, u64, u64)]) -> Vec<u8> {
    let mut graph = Vec::new();
    field_bytes(&mut graph, 2, b"g"); // GraphProto.name
    for (name, offset, length) in initializers {
        let mut tensor = Vec::new();
        field_varint(&mut tensor, 1, length / 4); // dims
        field_varint(&mut tensor, 2, 1); // data_type FLOAT
        field_bytes(&mut tensor, 8, name.as_bytes()); // name
        for (k, v) in [
            ("location", location.to_string()),
            ("offset", offset.to_string()),
            ("length", length.to_string()),
        ] {
            let mut entry = Vec::new();
            field_bytes(&mut entry, 1, k.as_bytes());
            field_bytes(&mut entry, 2, v.as_bytes());
            field_bytes(&mut tensor, 13, &entry); // external_data
        }
        field_varint(&mut tensor, 14, 1); // data_location EXTERNAL
        field_bytes(&mut graph, 5, &tensor); // GraphProto.initializer
    }
    let mut model = Vec::new();
    field_varint(&mut model, 1, 8); // ir_version
    field_bytes(&mut model, 7, &graph); // ModelProto.graph
    model
}
