#!/usr/bin/env python3
"""Model repos for the cold-load rows of scripts/bench.sh (scripts/bench/loaders.sh).

    gen_models.py FILES_DIR SEED SCALE      SCALE: full | small (about 1/8 of the sizes)

writes, under FILES_DIR (the mock Hub's --dir, nginx's /files/), four repos:

    bench/loader-safetensors/  model-0000K-of-0000N.safetensors, model.safetensors.index.json,
                               config.json: a sharded LLM-shaped checkpoint (>= 1 GiB at full)
    bench/loader-gguf/         model-Q8_0.gguf (>= 256 MiB at full, ~200 tensors)
    bench/loader-gguf-split/   model-Q8_0-0000K-of-00003.gguf: a GGUF of the same shape in
                               three splits, as `gguf-split` writes them
    bench/loader-onnx/         model.onnx + model.onnx_data (>= 256 MiB of initializers)

Deterministic from SEED (the same bytes on every machine and run); numpy, plus the `gguf` and
`onnx` packages to write their formats. Changing what this writes needs LOADER_GEN_VERSION in
scripts/bench/loaders.sh bumped, or the old data is reused.
"""

import json
import os
import struct
import sys

import numpy as np

# Dimensions per scale. Full: a ~0.55B-parameter decoder (1.03 GiB in 16-bit), small: a quarter of
# the width and half the depth, so every file still spans several 8 MiB chunks.
SCALES = {
    "full": {
        "st": dict(hidden=1024, inter=4096, vocab=32768, layers=29, shards=3),
        "gguf": dict(hidden=1024, inter=2048, vocab=32000, layers=22),
        "onnx": dict(dim=2048, layers=17),
    },
    "small": {
        "st": dict(hidden=512, inter=2048, vocab=16000, layers=14, shards=3),
        "gguf": dict(hidden=512, inter=1024, vocab=8000, layers=16),
        "onnx": dict(dim=1024, layers=9),
    },
}

# Clearing bit 14 of a float16 or bfloat16 keeps its exponent below the maximum: |x| < 2, no
# inf or NaN, so the random weights look like weights to anything that decodes them.
HALF_MASK = np.uint16(0xBFFF)


def half_bits(rng, count):
    """`count` random 16-bit floats' bits (float16 and bfloat16 alike)."""
    return np.frombuffer(rng.bytes(count * 2), dtype=np.uint16) & HALF_MASK


def norm_f32(rng, count):
    return (1.0 + rng.standard_normal(count, dtype=np.float32) / 32).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------


def st_tensors(d):
    """(name, dtype, shape) in the order a HF checkpoint stores them: embeddings, then layer
    by layer, each layer in module order, then the final norm and the head."""
    h, i, v = d["hidden"], d["inter"], d["vocab"]
    out = [("model.embed_tokens.weight", "BF16", (v, h))]
    for n in range(d["layers"]):
        p = f"model.layers.{n}."
        out += [
            (p + "input_layernorm.weight", "F32", (h,)),
            (p + "self_attn.q_proj.weight", "BF16", (h, h)),
            (p + "self_attn.q_proj.bias", "F32", (h,)),
            (p + "self_attn.k_proj.weight", "BF16", (h, h)),
            (p + "self_attn.k_proj.bias", "F32", (h,)),
            (p + "self_attn.v_proj.weight", "BF16", (h, h)),
            (p + "self_attn.v_proj.bias", "F32", (h,)),
            (p + "self_attn.o_proj.weight", "BF16", (h, h)),
            (p + "post_attention_layernorm.weight", "F32", (h,)),
            (p + "mlp.gate_proj.weight", "F16", (i, h)),
            (p + "mlp.up_proj.weight", "F16", (i, h)),
            (p + "mlp.down_proj.weight", "F16", (h, i)),
        ]
    out += [("model.norm.weight", "F32", (h,)), ("lm_head.weight", "BF16", (v, h))]
    return out


ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}


def st_bytes(rng, dtype, shape):
    n = int(np.prod(shape))
    if dtype == "F32":
        return norm_f32(rng, n).tobytes()
    return half_bits(rng, n).tobytes()


def write_safetensors(path, rng, tensors):
    """Written by hand, not with safetensors.numpy.save_file: that one orders the data by
    dtype and name, and the point is a file whose order (layer by layer, layers as integers)
    is not the sorted-name order loaders read in ("layers.10" < "layers.2")."""
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape in tensors:
        n = int(np.prod(shape)) * ITEMSIZE[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, dtype, shape in tensors:
            f.write(st_bytes(rng, dtype, shape))
    return off


def gen_safetensors(repo, rng, d):
    os.makedirs(repo, exist_ok=True)
    tensors = st_tensors(d)
    total = sum(int(np.prod(s)) * ITEMSIZE[t] for _, t, s in tensors)
    # Cut in file order at about total / shards: a layer may straddle two shards, as in real
    # checkpoints (transformers' max_shard_size cuts between tensors, not layers).
    shards, cur, acc = [], [], 0
    per = total / d["shards"]
    for t in tensors:
        cur.append(t)
        acc += int(np.prod(t[2])) * ITEMSIZE[t[1]]
        if acc >= per * (len(shards) + 1) and len(shards) < d["shards"] - 1:
            shards.append(cur)
            cur = []
    shards.append(cur)
    weight_map = {}
    for k, part in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(os.path.join(repo, name), rng, part)
        weight_map.update({t[0]: name for t in part})
    with open(os.path.join(repo, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": d["hidden"],
        "intermediate_size": d["inter"],
        "num_hidden_layers": d["layers"],
        "vocab_size": d["vocab"],
        "torch_dtype": "bfloat16",
    }
    with open(os.path.join(repo, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return len(tensors), total


# ---------------------------------------------------------------------------------------------
# GGUF
# ---------------------------------------------------------------------------------------------

Q8_0_BLOCK, Q8_0_BYTES = 32, 34  # 32 weights: a float16 scale + 32 int8


def q8_0_raw(rng, rows, cols):
    """Q8_0 blocks as raw bytes (quantizing real floats would take minutes for nothing: the
    loader only maps and touches them). The scale's high byte is masked like HALF_MASK."""
    blocks = np.frombuffer(rng.bytes(rows * cols // Q8_0_BLOCK * Q8_0_BYTES), dtype=np.uint8)
    blocks = blocks.reshape(rows, cols // Q8_0_BLOCK, Q8_0_BYTES).copy()
    blocks[:, :, 1] &= 0xBF
    return blocks.reshape(rows, cols // Q8_0_BLOCK * Q8_0_BYTES)


# The split GGUF's files: three, as a multi-file download of a large quant comes.
GGUF_SPLITS = 3


def gen_gguf(repo, rng, d, splits=1):
    import gguf

    os.makedirs(repo, exist_ok=True)
    h, i, v, n_layers = d["hidden"], d["inter"], d["vocab"], d["layers"]
    path = os.path.join(repo, "model-Q8_0.gguf")
    # The embedding, the output norm and head, and nine tensors a layer; gguf's writer names
    # the splits model-Q8_0-0000K-of-0000N.gguf and gives each the split.* keys llama.cpp reads.
    per_split = -(-(3 + 9 * n_layers) // splits) if splits > 1 else 0
    w = gguf.GGUFWriter(path, arch="llama", split_max_tensors=per_split)
    w.add_name("loader-bench")
    w.add_context_length(4096)
    w.add_embedding_length(h)
    w.add_feed_forward_length(i)
    w.add_block_count(n_layers)
    w.add_head_count(h // 64)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    q8 = gguf.GGMLQuantizationType.Q8_0
    count = 0

    def add(name, arr, raw_dtype=None):
        nonlocal count
        w.add_tensor(name, arr, raw_dtype=raw_dtype)
        count += 1

    # GGUF shapes are written innermost first; the array shape is (rows, cols) as numpy has it.
    add("token_embd.weight", half_bits(rng, v * h).view(np.float16).reshape(v, h))
    for n in range(n_layers):
        p = f"blk.{n}."
        add(p + "attn_norm.weight", norm_f32(rng, h))
        for m in ("attn_q", "attn_k", "attn_v", "attn_output"):
            add(p + m + ".weight", q8_0_raw(rng, h, h), q8)
        add(p + "ffn_norm.weight", norm_f32(rng, h))
        add(p + "ffn_gate.weight", q8_0_raw(rng, i, h), q8)
        add(p + "ffn_up.weight", q8_0_raw(rng, i, h), q8)
        add(p + "ffn_down.weight", q8_0_raw(rng, h, i), q8)
    add("output_norm.weight", norm_f32(rng, h))
    add("output.weight", q8_0_raw(rng, v, h), q8)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    size = sum(os.path.getsize(os.path.join(repo, f)) for f in os.listdir(repo) if f.endswith(".gguf"))
    return count, size


def gen_gguf_split(repo, rng, d):
    return gen_gguf(repo, rng, d, GGUF_SPLITS)


# ---------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------


def gen_onnx(repo, rng, d):
    """Y = (...((X @ W0 + B0) @ W1 + B1)...): every initializer is on the path to Y, so one
    inference reads every byte of model.onnx_data, and its output depends on all of them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    os.makedirs(repo, exist_ok=True)
    dim, layers = d["dim"], d["layers"]
    nodes, inits, prev = [], [], "X"
    # Uniform in +-sqrt(3/dim): unit variance per output, so the chain neither dies nor blows up.
    scale = np.float32(np.sqrt(3.0 / dim) * 2)
    for n in range(layers):
        wt = ((rng.random((dim, dim), dtype=np.float32) - 0.5) * scale).astype(np.float32)
        b = ((rng.random(dim, dtype=np.float32) - 0.5) / 8).astype(np.float32)
        inits += [numpy_helper.from_array(wt, f"W{n}"), numpy_helper.from_array(b, f"B{n}")]
        out = "Y" if n == layers - 1 else f"H{n}"
        nodes += [
            helper.make_node("MatMul", [prev, f"W{n}"], [f"M{n}"]),
            helper.make_node("Add", [f"M{n}", f"B{n}"], [out]),
        ]
        prev = out
    graph = helper.make_graph(
        nodes,
        "loader-bench",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", dim])],
        inits,
    )
    # Opset 17 / IR 8, as tests/python/consumers.py: what every recent onnxruntime loads.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(
        model,
        os.path.join(repo, "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx_data",
        size_threshold=0,
    )
    return len(inits), os.path.getsize(os.path.join(repo, "model.onnx_data"))


def main(argv):
    if len(argv) != 4 or argv[3] not in SCALES:
        raise SystemExit(__doc__)
    files, seed, scale = argv[1], int(argv[2]), SCALES[argv[3]]
    # One generator per format, each from the seed: changing one format's shape leaves the
    # others' bytes as they were.
    for k, (fmt, gen, repo) in enumerate((
        ("st", gen_safetensors, "loader-safetensors"),
        ("gguf", gen_gguf, "loader-gguf"),
        ("onnx", gen_onnx, "loader-onnx"),
        ("gguf", gen_gguf_split, "loader-gguf-split"),
    )):
        rng = np.random.default_rng([seed, k])
        n, size = gen(os.path.join(files, "bench", repo), rng, scale[fmt])
        print(f"{repo}: {n} tensors, {size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
