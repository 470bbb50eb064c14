//! Quant detection from file names: which quantization variant a file belongs to.
//! Pure functions, table-tested against real-world Hub file names.
//!
//! A repo's quant views (`/<org>/<repo>/<quant>/`) are derived from nothing but its file
//! paths, so that a cached manifest gives the same views offline as online, and so that every
//! rule here can be checked against real listings without a Hub. Two families are named:
//!
//! - ONNX, by the transformers.js `dtype` a file serves (`model_q4f16.onnx` is `q4f16`),
//!   external data following its model file;
//! - GGUF, by the llama.cpp quant type at the end of the file (or folder) name, spelled as the
//!   repo spells it, since that is what users type and see on the Hub.
//!
//! Everything else is either shared by all views (configs, tokenizers, projectors) or weights
//! of no detected quant, which only the whole-repo `all` view shows. Matching is ASCII
//! case-insensitive throughout; ASCII case folding keeps byte offsets, so a match found in
//! the folded name slices the original spelling out of the path.

/// The view that shows every file of a repo. No quant may be named so (any case), or the
/// quant would shadow it.
pub const ALL_VIEW: &str = "all";

/// Where a file shows up in a repo's views.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Belongs to the named quant only (spelled as the repo spells it, e.g. `Q4_K_M`, `q4f16`).
    Quant(String),
    /// Shared by every quant view (config, tokenizer, README, `mmproj-*`, ...).
    Shared,
    /// Model weights of no detected quant (safetensors, bin, ...): shown only under `all`.
    Unsorted,
}

impl Variant {
    /// Whether a file of this variant is listed in the view named `view` (a quant name, or
    /// [`ALL_VIEW`]); quant names compare case-insensitively, as lookups do.
    pub fn shown_in(&self, view: &str) -> bool {
        if view.eq_ignore_ascii_case(ALL_VIEW) {
            return true;
        }
        match self {
            Variant::Quant(quant) => quant.eq_ignore_ascii_case(view),
            Variant::Shared => true,
            Variant::Unsorted => false,
        }
    }
}

/// The transformers.js dtypes, by the suffix a model file's stem carries (`<base><suffix>.onnx`).
/// Longest suffix first: a stem may end in several of these only if one is a suffix of another,
/// and the longer one is then the file's real dtype. A stem with none of them is `fp32`.
const ONNX_DTYPE_SUFFIXES: [(&str, &str); 9] = [
    ("_quantized", "q8"),
    ("_uint8f16", "uint8f16"),
    ("_q4f16", "q4f16"),
    ("_q8f16", "q8f16"),
    ("_uint8", "uint8"),
    ("_fp16", "fp16"),
    ("_int8", "int8"),
    ("_bnb4", "bnb4"),
    ("_q4", "q4"),
];

/// The dtype of an ONNX model file whose stem carries no dtype suffix.
const ONNX_DEFAULT_DTYPE: &str = "fp32";

/// Every name [`classify`] can give an ONNX file.
pub const ONNX_DTYPES: [&str; 10] =
    ["fp32", "fp16", "int8", "uint8", "q8", "q4", "q4f16", "bnb4", "q8f16", "uint8f16"];

/// File extensions (lowercase, with the dot) of model weights that are not ONNX or GGUF: they
/// are shown only in the `all` view, since nothing in their name says which variant they are.
const OTHER_WEIGHT_EXTENSIONS: [&str; 16] = [
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".ot",
    ".tflite",
    ".mlmodel",
    ".npz",
    ".pb",
    ".keras",
    ".ggml",
    ".llamafile",
    ".nemo",
];

/// Classify one repo path.
pub fn classify(path: &str) -> Variant {
    let file_name = path.rsplit('/').next().unwrap_or(path);
    let folded = file_name.to_ascii_lowercase();

    if let Some(stem_len) = onnx_model_stem_len(&folded) {
        return Variant::Quant(onnx_dtype(&folded[..stem_len]).to_owned());
    }
    if let Some(stem_len) = gguf_stem_len(&folded) {
        // Projectors (`mmproj-model-f16.gguf`) carry a quant of their own, but every language
        // model quant of the repo needs the same one, so they belong to all views.
        if folded.contains("mmproj") {
            return Variant::Shared;
        }
        return match gguf_quant(&file_name[..stem_len]).or_else(|| gguf_folder_quant(path)) {
            Some(quant) => Variant::Quant(quant.to_owned()),
            None => Variant::Unsorted,
        };
    }
    if OTHER_WEIGHT_EXTENSIONS.iter().any(|ext| folded.ends_with(ext)) {
        return Variant::Unsorted;
    }
    Variant::Shared
}

/// The quants of a repo, in a stable order (sorted case-insensitively), each spelled as the
/// repo first spells it; quants that differ only in case are one quant.
pub fn quants<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    // Keyed by the folded name, so the first spelling met is the one kept, and the map's
    // order is the case-insensitive order.
    let mut by_folded = std::collections::BTreeMap::new();
    for path in paths {
        if let Variant::Quant(quant) = classify(path) {
            by_folded.entry(quant.to_ascii_lowercase()).or_insert(quant);
        }
    }
    by_folded.into_values().collect()
}

/// If `folded` (a lowercase file name) is an ONNX model file or one of its external data
/// files, the length of the model's stem: `model_fp16` for `model_fp16.onnx`,
/// `model_fp16.onnx_data`, `model_fp16.onnx_data_3` and `model_fp16.onnx.data` alike, so
/// external data always lands in the same view as the graph that references it.
fn onnx_model_stem_len(folded: &str) -> Option<usize> {
    if let Some(stem) = folded.strip_suffix(".onnx").or_else(|| folded.strip_suffix(".onnx.data")) {
        return Some(stem.len());
    }
    if let Some(stem) = folded.strip_suffix(".onnx_data") {
        return Some(stem.len());
    }
    // `.onnx_data_<N>`: the extra shards ONNX Runtime GenAI and transformers.js write.
    let (head, index) = folded.rsplit_once('_')?;
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    head.strip_suffix(".onnx_data").map(str::len)
}

/// The transformers.js dtype of a (lowercase) ONNX model stem.
fn onnx_dtype(folded_stem: &str) -> &'static str {
    ONNX_DTYPE_SUFFIXES
        .iter()
        .find(|(suffix, _)| folded_stem.ends_with(suffix))
        .map_or(ONNX_DEFAULT_DTYPE, |&(_, dtype)| dtype)
}

/// If `folded` (a lowercase file name) is a GGUF file, the length of its stem. Besides
/// `X.gguf`, this takes the `X.gguf.partNofM` pieces some uploaders split large files into
/// (they are of `X`'s quant, and only useful together).
fn gguf_stem_len(folded: &str) -> Option<usize> {
    if let Some(stem) = folded.strip_suffix(".gguf") {
        return Some(stem.len());
    }
    let (head, part) = folded.rsplit_once(".part")?;
    let (index, count) = part.split_once("of")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(index) && digits(count)).then_some(())?;
    head.strip_suffix(".gguf").map(str::len)
}

/// `stem` without a llama.cpp split suffix (`-00001-of-00003`, any case, any digit count).
fn strip_split_suffix(stem: &str) -> &str {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let Some((head, count)) = stem.rsplit_once('-') else {
        return stem;
    };
    // Compared as bytes: `head` may end in a multi-byte character, but a match is ASCII,
    // so cutting before it is on a character boundary.
    let Some(of_start) = head.len().checked_sub(3) else {
        return stem;
    };
    if !head.as_bytes()[of_start..].eq_ignore_ascii_case(b"-of") {
        return stem;
    }
    let head = &head[..of_start];
    match head.rsplit_once('-') {
        Some((base, index)) if digits(index) && digits(count) => base,
        _ => stem,
    }
}

/// The quant a GGUF file or folder name (without extension) ends in, as spelled there.
///
/// The quant is the last `-`/`.`-separated token (`llama-2-7b.Q4_K_M`,
/// `Llama-3.2-1B-Instruct-Q4_K_M-00001-of-00002`), taking unsloth's `UD-` prefix with it
/// (`UD-Q4_K_XL`). If that token is not a quant, an `_`-separated tail of it is tried, longest
/// first (`Model_Q4_K_M`), since quant names themselves contain `_`.
fn gguf_quant(stem: &str) -> Option<&str> {
    let stem = strip_split_suffix(stem);
    let start = stem.rfind(['-', '.']).map_or(0, |i| i + 1);
    let token = &stem[start..];
    if is_gguf_quant_token(token) {
        return Some(with_ud_prefix(stem, start));
    }
    token.match_indices('_').map(|(i, _)| &token[i + 1..]).find(|tail| is_gguf_quant_token(tail))
}

/// Extends the quant starting at `start` in `stem` to include a preceding `UD-` token
/// (unsloth's "dynamic" quants are a distinct variant of the same type: `UD-Q4_K_XL`).
fn with_ud_prefix(stem: &str, start: usize) -> &str {
    let Some(before) = stem[..start].strip_suffix('-') else {
        return &stem[start..];
    };
    // Compared as bytes, as in `strip_split_suffix`: a match is ASCII, so slicing at it is safe.
    let ud_start = before.len().saturating_sub(2);
    let is_ud = before.len() >= 2
        && before.as_bytes()[ud_start..].eq_ignore_ascii_case(b"ud")
        && (ud_start == 0 || matches!(before.as_bytes()[ud_start - 1], b'-' | b'.' | b'_'));
    if is_ud {
        &stem[ud_start..]
    } else {
        &stem[start..]
    }
}

/// For a GGUF file whose name carries no quant, the quant of the nearest enclosing folder that
/// names one (`Q4_K_M/model-00001-of-00002.gguf`).
fn gguf_folder_quant(path: &str) -> Option<&str> {
    let mut folders = path.split('/').rev();
    folders.next();
    folders.find_map(gguf_quant)
}

/// Whether `token` names a llama.cpp quant type, any case: `Q4_K_M`, `Q4_0_4_4`, `Q6_K_L`,
/// `IQ2_XXS`, `TQ1_0`, `F16`, `BF16`, `F32`, `FP16`, `MXFP4`, ... The `Q`/`IQ`/`TQ` family is
/// matched by shape (one digit, then 1 to 4 `_`-separated groups of 1 to 3 letters or digits)
/// rather than by list, so new types and uploaders' variants (`Q3_K_XL`) are found too.
/// Never `all`, which is reserved for the whole-repo view.
fn is_gguf_quant_token(token: &str) -> bool {
    /// Float types llama.cpp writes whole models in, as uploaders spell them.
    const FLOAT_TYPES: [&str; 7] = ["f16", "bf16", "f32", "fp16", "fp32", "mxfp4", "f64"];
    if FLOAT_TYPES.iter().any(|t| token.eq_ignore_ascii_case(t)) {
        return true;
    }
    let bytes = token.as_bytes();
    let rest = match bytes {
        [b'i' | b'I' | b't' | b'T', b'q' | b'Q', rest @ ..] => rest,
        [b'q' | b'Q', rest @ ..] => rest,
        _ => return false,
    };
    let [digit, b'_', groups @ ..] = rest else {
        return false;
    };
    if !digit.is_ascii_digit() {
        return false;
    }
    let mut count = 0;
    for group in groups.split(|&b| b == b'_') {
        count += 1;
        if group.is_empty() || group.len() > 3 || !group.iter().all(u8::is_ascii_alphanumeric) {
            return false;
        }
    }
    count <= 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(name: &str) -> Variant {
        Variant::Quant(name.to_owned())
    }

    /// Real file names from Hub repos, with the variant each must get.
    #[test]
    fn classifies_real_world_files() {
        let table: &[(&str, Variant)] = &[
            // onnx-community/Phi-3.5-mini-instruct-onnx-web
            ("onnx/model_q4f16.onnx", q("q4f16")),
            ("onnx/model_q4f16.onnx_data", q("q4f16")),
            ("onnx/model_q4.onnx", q("q4")),
            ("onnx/model_q4.onnx_data", q("q4")),
            ("config.json", Variant::Shared),
            ("generation_config.json", Variant::Shared),
            ("tokenizer.json", Variant::Shared),
            ("tokenizer.model", Variant::Shared),
            ("added_tokens.json", Variant::Shared),
            // Xenova/all-MiniLM-L6-v2
            ("onnx/model.onnx", q("fp32")),
            ("onnx/model_bnb4.onnx", q("bnb4")),
            ("onnx/model_fp16.onnx", q("fp16")),
            ("onnx/model_int8.onnx", q("int8")),
            ("onnx/model_uint8.onnx", q("uint8")),
            ("onnx/model_quantized.onnx", q("q8")),
            ("vocab.txt", Variant::Shared),
            ("special_tokens_map.json", Variant::Shared),
            ("quantize_config.json", Variant::Shared),
            (".gitattributes", Variant::Shared),
            ("README.md", Variant::Shared),
            // onnx-community/whisper-base
            ("onnx/encoder_model.onnx", q("fp32")),
            ("onnx/encoder_model_fp16.onnx", q("fp16")),
            ("onnx/encoder_model_q4f16.onnx", q("q4f16")),
            ("onnx/encoder_model_quantized.onnx", q("q8")),
            ("onnx/decoder_model_merged.onnx", q("fp32")),
            ("onnx/decoder_model_merged_q4.onnx", q("q4")),
            ("onnx/decoder_model_merged_uint8.onnx", q("uint8")),
            ("onnx/decoder_with_past_model_int8.onnx", q("int8")),
            ("preprocessor_config.json", Variant::Shared),
            ("normalizer.json", Variant::Shared),
            // onnx-community multimodal repos (gemma-3, Qwen2-VL): several base names, shards
            ("onnx/embed_tokens_q4f16.onnx", q("q4f16")),
            ("onnx/vision_encoder_q8f16.onnx", q("q8f16")),
            ("onnx/decoder_model_merged_uint8f16.onnx", q("uint8f16")),
            ("onnx/model.onnx_data", q("fp32")),
            ("onnx/model.onnx_data_1", q("fp32")),
            ("onnx/model_fp16.onnx_data_12", q("fp16")),
            ("onnx/model_fp16.onnx.data", q("fp16")),
            ("onnx/MODEL_FP16.ONNX", q("fp16")),
            // sentence-transformers/all-MiniLM-L6-v2 (optimum exports have no dtype suffix)
            ("model.safetensors", Variant::Unsorted),
            ("pytorch_model.bin", Variant::Unsorted),
            ("rust_model.ot", Variant::Unsorted),
            ("tf_model.h5", Variant::Unsorted),
            ("onnx/model_O4.onnx", q("fp32")),
            ("openvino/openvino_model.bin", Variant::Unsorted),
            ("openvino/openvino_model.xml", Variant::Shared),
            ("1_Pooling/config.json", Variant::Shared),
            ("modules.json", Variant::Shared),
            // bartowski/Llama-3.2-1B-Instruct-GGUF
            ("Llama-3.2-1B-Instruct-f16.gguf", q("f16")),
            ("Llama-3.2-1B-Instruct-Q8_0.gguf", q("Q8_0")),
            ("Llama-3.2-1B-Instruct-Q6_K_L.gguf", q("Q6_K_L")),
            ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", q("Q4_K_M")),
            ("Llama-3.2-1B-Instruct-Q4_0_4_4.gguf", q("Q4_0_4_4")),
            ("Llama-3.2-1B-Instruct-IQ4_XS.gguf", q("IQ4_XS")),
            ("Llama-3.2-1B-Instruct-IQ3_M.gguf", q("IQ3_M")),
            ("Llama-3.2-1B-Instruct-Q3_K_XL.gguf", q("Q3_K_XL")),
            ("Llama-3.2-1B-Instruct.imatrix", Variant::Shared),
            // TheBloke/Llama-2-7B-GGUF
            ("llama-2-7b.Q2_K.gguf", q("Q2_K")),
            ("llama-2-7b.Q3_K_S.gguf", q("Q3_K_S")),
            ("llama-2-7b.Q4_K_M.gguf", q("Q4_K_M")),
            ("llama-2-7b.Q5_0.gguf", q("Q5_0")),
            ("LICENSE.txt", Variant::Shared),
            ("USE_POLICY.md", Variant::Shared),
            // unsloth/*-GGUF
            ("Qwen3-30B-A3B-UD-Q4_K_XL.gguf", q("UD-Q4_K_XL")),
            ("Qwen3-30B-A3B-Q4_K_M.gguf", q("Q4_K_M")),
            ("BF16/Qwen3-30B-A3B-BF16-00001-of-00002.gguf", q("BF16")),
            ("UD-IQ1_S/DeepSeek-R1-0528-UD-IQ1_S-00001-of-00004.gguf", q("UD-IQ1_S")),
            ("UD-TQ1_0/Kimi-K2-Instruct-UD-TQ1_0-00001-of-00005.gguf", q("UD-TQ1_0")),
            ("Q4_K_M/Kimi-K2-Instruct-Q4_K_M-00001-of-00013.gguf", q("Q4_K_M")),
            ("DeepSeek-R1-Q2_K_XS/DeepSeek-R1-Q2_K_XS-00001-of-00005.gguf", q("Q2_K_XS")),
            ("gpt-oss-20b-F16.gguf", q("F16")),
            ("imatrix_unsloth.dat", Variant::Shared),
            // Qwen/Qwen2.5-7B-Instruct-GGUF
            ("qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf", q("q4_k_m")),
            ("qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf", q("q4_k_m")),
            ("qwen2.5-7b-instruct-fp16-00001-of-00004.gguf", q("fp16")),
            ("qwen2.5-7b-instruct-q8_0-00003-of-00003.gguf", q("q8_0")),
            // ggml-org vision and other repos
            ("gemma-3-4b-it-Q4_K_M.gguf", q("Q4_K_M")),
            ("mmproj-model-f16.gguf", Variant::Shared),
            ("SmolVLM-256M-Instruct-Q8_0.gguf", q("Q8_0")),
            ("mmproj-SmolVLM-256M-Instruct-Q8_0.gguf", Variant::Shared),
            ("MMPROJ-Model-F16.GGUF", Variant::Shared),
            ("gpt-oss-20b-mxfp4.gguf", q("mxfp4")),
            ("ggml-model-f16.gguf", q("f16")),
            ("ggml-model-Q4_K_M.gguf", q("Q4_K_M")),
            ("Model-IQ2_XXS.gguf", q("IQ2_XXS")),
            ("Model-TQ2_0.gguf", q("TQ2_0")),
            ("Model-IQ4_NL.gguf", q("IQ4_NL")),
            // mradermacher: `.i1-` imatrix prefix, `.gguf.partNofM` pieces
            ("Model.i1-Q4_K_M.gguf", q("Q4_K_M")),
            ("Model.Q8_0.gguf.part1of2", q("Q8_0")),
            // quants named only by their folder, or not at all
            ("Q5_K_M/model-00001-of-00002.gguf", q("Q5_K_M")),
            ("gguf/q4_0/model.gguf", q("q4_0")),
            ("Meta-Llama-3-8B-Instruct_Q4_K_M.gguf", q("Q4_K_M")),
            ("llama-2-7b.gguf", Variant::Unsorted),
            ("model.gguf", Variant::Unsorted),
            ("all/model.gguf", Variant::Unsorted),
            // safetensors / bin repos: meta-llama/Llama-3.2-1B, Qwen/Qwen2.5-7B-Instruct, gpt2
            ("original/consolidated.00.pth", Variant::Unsorted),
            ("original/params.json", Variant::Shared),
            ("model-00001-of-00004.safetensors", Variant::Unsorted),
            ("model.safetensors.index.json", Variant::Shared),
            ("pytorch_model.bin.index.json", Variant::Shared),
            ("flax_model.msgpack", Variant::Unsorted),
            ("64-8bits.tflite", Variant::Unsorted),
            ("coreml/text-generation/float32_model.mlpackage/Manifest.json", Variant::Shared),
            ("onnx/decoder_with_past_model.onnx", q("fp32")),
            ("merges.txt", Variant::Shared),
            ("images/architecture.png", Variant::Shared),
        ];
        assert!(table.len() >= 60);
        for (path, expected) in table {
            assert_eq!(&classify(path), expected, "{path}");
        }
    }

    #[test]
    fn lists_quants_of_real_repos() {
        let whisper = [
            "onnx/encoder_model.onnx",
            "onnx/encoder_model_fp16.onnx",
            "onnx/encoder_model_q4f16.onnx",
            "onnx/decoder_model_merged.onnx",
            "onnx/decoder_model_merged_fp16.onnx",
            "onnx/decoder_model_merged_q4f16.onnx",
            "onnx/decoder_model_merged_quantized.onnx",
            "config.json",
        ];
        assert_eq!(quants(whisper), ["fp16", "fp32", "q4f16", "q8"]);

        let thebloke = [
            "llama-2-7b.Q4_K_M.gguf",
            "llama-2-7b.Q2_K.gguf",
            "llama-2-7b.Q8_0.gguf",
            "llama-2-7b.Q3_K_L.gguf",
            "README.md",
        ];
        assert_eq!(quants(thebloke), ["Q2_K", "Q3_K_L", "Q4_K_M", "Q8_0"]);

        let qwen = [
            "qwen2.5-7b-instruct-q4_k_m-00001-of-00002.gguf",
            "qwen2.5-7b-instruct-q4_k_m-00002-of-00002.gguf",
            "qwen2.5-7b-instruct-fp16-00001-of-00004.gguf",
            "qwen2.5-7b-instruct-q2_k.gguf",
        ];
        assert_eq!(quants(qwen), ["fp16", "q2_k", "q4_k_m"]);

        let unsloth = [
            "BF16/Qwen3-30B-A3B-BF16-00001-of-00002.gguf",
            "BF16/Qwen3-30B-A3B-BF16-00002-of-00002.gguf",
            "Qwen3-30B-A3B-UD-Q4_K_XL.gguf",
            "Qwen3-30B-A3B-Q4_K_M.gguf",
            "Qwen3-30B-A3B-IQ4_XS.gguf",
            "mmproj-F16.gguf",
        ];
        assert_eq!(quants(unsloth), ["BF16", "IQ4_XS", "Q4_K_M", "UD-Q4_K_XL"]);

        let safetensors_only = [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "config.json",
        ];
        assert!(quants(safetensors_only).is_empty());
    }

    #[test]
    fn quants_differing_in_case_are_one_first_spelling_wins() {
        let paths = ["a-q4_k_m.gguf", "Q4_K_M/b-Q4_K_M.gguf", "c-F16.gguf", "d-f16.gguf"];
        assert_eq!(quants(paths), ["F16", "q4_k_m"]);
        let reversed = ["d-f16.gguf", "c-F16.gguf", "Q4_K_M/b-Q4_K_M.gguf", "a-q4_k_m.gguf"];
        assert_eq!(quants(reversed), ["f16", "Q4_K_M"]);
    }

    #[test]
    fn views_show_their_quant_shared_files_and_all() {
        assert!(q("Q4_K_M").shown_in("q4_k_m"));
        assert!(!q("Q4_K_M").shown_in("Q8_0"));
        assert!(q("Q4_K_M").shown_in("ALL"));
        assert!(Variant::Shared.shown_in("q4f16"));
        assert!(Variant::Unsorted.shown_in("all"));
        assert!(!Variant::Unsorted.shown_in("fp32"));
    }

    /// Multi-byte characters right before an ASCII match must not be sliced through.
    #[test]
    fn non_ascii_names_next_to_matches() {
        assert_eq!(classify("aé-Q4_K_M.gguf"), q("Q4_K_M"));
        assert_eq!(classify("é-UD-Q4_K_XL.gguf"), q("UD-Q4_K_XL"));
        assert_eq!(classify("éud-Q4_K_M.gguf"), q("Q4_K_M"));
        assert_eq!(classify("ü-Q8_0-1-of-2.gguf"), q("Q8_0"));
        assert_eq!(classify("é-of-3.gguf"), Variant::Unsorted);
        assert_eq!(classify("é.gguf"), Variant::Unsorted);
        assert_eq!(classify("Q4_K_M/модель.gguf"), q("Q4_K_M"));
        assert_eq!(classify("模型_fp16.onnx_data_1"), q("fp16"));
        assert_eq!(strip_split_suffix("é-1-oé"), "é-1-oé");
    }

    #[test]
    fn split_suffixes() {
        assert_eq!(strip_split_suffix("m-Q4_K_M-00001-of-00003"), "m-Q4_K_M");
        assert_eq!(strip_split_suffix("m-Q4_K_M-1-OF-3"), "m-Q4_K_M");
        assert_eq!(strip_split_suffix("m-Q4_K_M-00001-of-"), "m-Q4_K_M-00001-of-");
        assert_eq!(strip_split_suffix("m-Q4_K_M-x-of-3"), "m-Q4_K_M-x-of-3");
        assert_eq!(strip_split_suffix("00001-of-00003"), "00001-of-00003");
        assert_eq!(strip_split_suffix("-of-"), "-of-");
    }

    #[test]
    fn quant_tokens() {
        for token in [
            "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_0", "Q4_1", "Q4_K_S", "Q4_K_M", "Q5_0",
            "Q5_1", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0", "Q4_0_4_4", "Q4_0_8_8", "IQ1_S", "IQ1_M",
            "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ4_XS",
            "IQ4_NL", "TQ1_0", "TQ2_0", "F16", "BF16", "F32", "q4_k_m", "bf16",
        ] {
            assert!(is_gguf_quant_token(token), "{token}");
        }
        for token in [
            "",
            "Q",
            "Q4",
            "Q4_",
            "Q_4",
            "QK_M",
            "Q4_K_MMMM",
            "Q4_0_4_4_4_4",
            "F8",
            "all",
            "ALL",
            "7b",
            "Instruct",
            "IQ",
            "XQ4_0",
            "Q4__0",
            "Q4_K-M",
        ] {
            assert!(!is_gguf_quant_token(token), "{token}");
        }
    }

    proptest! {
        #[test]
        fn classify_never_panics(path in any::<String>()) {
            let _ = classify(&path);
        }

        #[test]
        fn classify_never_panics_on_near_misses(
            path in "[a-zA-Z0-9_./-]{0,10}(-|\\.|_)?(ud-|UD-)?(i|I|t|T)?[qQ]?[0-9]?(_[a-zA-Z0-9]{0,4}){0,5}(-[0-9]{1,3}-of-[0-9]{0,3})?\\.(gguf|GGUF|onnx|onnx_data|onnx_data_[0-9]?|gguf\\.part[0-9]of[0-9]?)"
        ) {
            let variant = classify(&path);
            if let Variant::Quant(quant) = variant {
                prop_assert!(!quant.is_empty());
                prop_assert!(!quant.eq_ignore_ascii_case(ALL_VIEW));
            }
        }

        #[test]
        fn onnx_quants_are_transformers_js_dtypes(
            dir in "(onnx/)?", base in "[a-zA-Z0-9_.]{0,20}", ext in "\\.(onnx|ONNX|onnx_data|onnx\\.data|onnx_data_[0-9]{1,2})"
        ) {
            let path = format!("{dir}{base}{ext}");
            match classify(&path) {
                Variant::Quant(quant) => prop_assert!(ONNX_DTYPES.contains(&quant.as_str()), "{}", quant),
                other => prop_assert!(false, "{path} gave {other:?}"),
            }
        }

        #[test]
        fn onnx_suffixes_name_their_dtype(
            base in "[a-zA-Z0-9_]{1,20}", index in 0usize..ONNX_DTYPE_SUFFIXES.len()
        ) {
            let (suffix, dtype) = ONNX_DTYPE_SUFFIXES[index];
            prop_assert_eq!(classify(&format!("onnx/{base}{suffix}.onnx")), q(dtype));
            prop_assert_eq!(
                classify(&format!("onnx/{base}{}.onnx", suffix.to_ascii_uppercase())),
                q(dtype)
            );
        }

        #[test]
        fn external_data_follows_its_model(stem in any::<String>(), n in 0u32..100) {
            let model = classify(&format!("{stem}.onnx"));
            prop_assert_eq!(&classify(&format!("{stem}.onnx_data")), &model);
            prop_assert_eq!(&classify(&format!("{stem}.onnx_data_{n}")), &model);
            prop_assert_eq!(&classify(&format!("{stem}.onnx.data")), &model);
        }

        #[test]
        fn gguf_detection_ignores_case_except_spelling(
            path in "([a-zA-Z0-9_]{1,8}/)?[a-zA-Z0-9._-]{0,12}(-|\\.)?(UD-|ud-)?[a-zA-Z0-9_]{0,9}(-0000[1-3]-of-00003)?\\.(gguf|GGUF)"
        ) {
            let lower = classify(&path.to_ascii_lowercase());
            let upper = classify(&path.to_ascii_uppercase());
            let same = classify(&path);
            for other in [&lower, &upper] {
                match (&same, other) {
                    (Variant::Quant(a), Variant::Quant(b)) => prop_assert!(a.eq_ignore_ascii_case(b)),
                    (a, b) => prop_assert_eq!(a, b),
                }
            }
        }

        #[test]
        fn gguf_quants_are_found_with_any_prefix_and_split(
            model in "[a-zA-Z0-9._-]{0,20}[a-zA-Z0-9]",
            sep in "[-.]",
            token in "(Q[2-8]_(K|0|1)(_[SML])?|IQ[1-4]_(XXS|XS|S|M|NL)|TQ[12]_0|F16|BF16|F32)",
            lowercase in any::<bool>(),
            split in prop::option::of((1u32..10, 10u32..99)),
        ) {
            let token = if lowercase { token.to_ascii_lowercase() } else { token };
            let split = split.map_or(String::new(), |(i, n)| format!("-{i:05}-of-{n:05}"));
            let path = format!("{model}{sep}{token}{split}.gguf");
            prop_assume!(!path.to_ascii_lowercase().contains("mmproj"));
            // A model name ending in `UD` would make the quant unsloth's `UD-` variant.
            prop_assume!(!(sep == "-" && model.to_ascii_lowercase().ends_with("ud")));
            prop_assert_eq!(classify(&path), q(&token));
            prop_assert_eq!(classify(&format!("{token}/{path}")), q(&token));
        }

        #[test]
        fn mmproj_is_always_shared(prefix in "(mmproj|MMPROJ|Mmproj)", rest in "[a-zA-Z0-9._-]{0,30}") {
            prop_assert_eq!(classify(&format!("{prefix}-{rest}.gguf")), Variant::Shared);
        }

        #[test]
        fn quants_are_sorted_distinct_and_never_all(paths in prop::collection::vec(
            "([a-zA-Z0-9_]{1,6}/)?[a-zA-Z0-9._-]{0,10}(-|\\.|_)(all|ALL|Q4_K_M|q4_k_m|F16|IQ2_XS)?\\.(gguf|onnx|bin|json)",
            0..12,
        )) {
            let list = quants(paths.iter().map(String::as_str));
            let folded: Vec<String> = list.iter().map(|q| q.to_ascii_lowercase()).collect();
            let mut sorted = folded.clone();
            sorted.sort();
            sorted.dedup();
            prop_assert_eq!(&folded, &sorted);
            prop_assert!(!folded.iter().any(|q| q == ALL_VIEW));
            for path in &paths {
                if let Variant::Quant(quant) = classify(path) {
                    prop_assert!(folded.contains(&quant.to_ascii_lowercase()));
                }
            }
        }
    }
}
