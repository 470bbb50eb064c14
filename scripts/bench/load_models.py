#!/usr/bin/env python3
"""The loaders of the cold-load rows of scripts/bench.sh (scripts/bench/loaders.sh).

    load_models.py safetensors DIR   every shard named by DIR/model.safetensors.index.json, in
                                     sorted order: safe_open(shard, "numpy"), get_tensor of
                                     every key in sorted order (as vLLM does)
    load_models.py gguf FILE         GGUFReader(FILE), then every tensor's data in file order
    load_models.py gguf-split FIRST  a split GGUF (FIRST is <name>-00001-of-0000N.gguf) as
                                     llama.cpp loads one: every split's header, then each
                                     split's tensor data in split order, each in file order
    load_models.py onnx FILE         onnxruntime.InferenceSession(FILE) and one inference
    load_models.py peek FILE DISK CHUNK
                                     the safetensors header and one small tensor, nothing else;
                                     also prints which tensor and the bytes a lazy reader needs
                                     for that: the chunks (of CHUNK bytes) holding the header
                                     and it. Both are worked out from DISK, a copy of FILE on
                                     disk, so that reading FILE is the peek and nothing else
    load_models.py cached FILE...    the sum of user.modelfs.cached_bytes over FILEs, once
                                     the figure has stopped moving (read-ahead landing)

Each load prints one line, `seconds checksum [key=value...]`: the time of the load alone (no
interpreter start-up or imports), and a checksum over every byte it read, so that the bench
can check that the mount and the disk gave the same bytes.

    --hub ENDPOINT REPO CACHE        before loading, huggingface_hub.snapshot_download(REPO)
                                     into the empty CACHE, and load from the snapshot (the
                                     path given is then relative to it); the time covers both
"""

import json
import os
import re
import struct
import sys
import time
import zlib

import numpy as np

MASK = (1 << 64) - 1


class Checksum:
    """Order-sensitive over tensors, cheap within one (a uint64 sum runs at memory speed, so
    the checksum costs every contender about the same small amount): a wrong byte, a tensor
    read from the wrong offset or a wrong name changes it."""

    def __init__(self):
        self.h = 0

    def add(self, name, arr):
        b = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        n8 = b.size & ~7
        s = int(b[:n8].view(np.uint64).sum(dtype=np.uint64)) if n8 else 0
        s += int(b[n8:].sum(dtype=np.uint64))
        self.h = (self.h * 0x100000001B3 + (zlib.crc32(name.encode()) << 32) + b.size + s) & MASK

    def hex(self):
        return f"{self.h:016x}"


def need_bf16():
    # numpy has no bfloat16; ml_dtypes (which onnx depends on) registers it, and safetensors'
    # numpy reader then understands BF16. Without it BF16 tensors fail to load.
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        raise SystemExit("ml_dtypes is missing (it comes with onnx: tests/python/requirements.txt)")


def load_safetensors(root):
    from safetensors import safe_open

    ck = Checksum()
    with open(os.path.join(root, "model.safetensors.index.json")) as f:
        index = json.load(f)
    n = 0
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(os.path.join(root, shard), "numpy") as f:
            for key in sorted(f.keys()):
                ck.add(key, f.get_tensor(key))
                n += 1
    if n != len(index["weight_map"]):
        raise SystemExit(f"{n} tensors loaded, the index names {len(index['weight_map'])}")
    return ck, {"tensors": n}


def load_gguf(path):
    from gguf import GGUFReader

    ck = Checksum()
    r = GGUFReader(path)
    add_gguf_tensors(ck, r)
    return ck, {"tensors": len(r.tensors)}


def add_gguf_tensors(ck, r):
    # Tensor data in file order (llama.cpp's loader walks the tensor index in that order).
    for t in sorted(r.tensors, key=lambda t: int(t.data_offset)):
        ck.add(t.name, t.data)


def gguf_splits(first):
    """The files of the split GGUF whose first split is FIRST, in split order."""
    m = re.fullmatch(r"(.*)-00001-of-(\d{5})\.gguf", first)
    if not m:
        raise SystemExit(f"{first}: not the first split of a split GGUF (<name>-00001-of-0000N.gguf)")
    return [f"{m[1]}-{k:05d}-of-{m[2]}.gguf" for k in range(1, int(m[2]) + 1)]


def load_gguf_split(path):
    from gguf import GGUFReader

    ck = Checksum()
    # As llama.cpp loads a split model: every split's header first, then the splits' tensor
    # data one split after another, each in file order.
    readers = [GGUFReader(p) for p in gguf_splits(path)]
    for r in readers:
        add_gguf_tensors(ck, r)
    return ck, {"tensors": sum(len(r.tensors) for r in readers)}


def load_onnx(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # One thread: the same summation order on every run, so outputs compare bit for bit.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    dim = sess.get_inputs()[0].shape[1]
    x = np.random.default_rng(7).standard_normal((2, dim), dtype=np.float32)
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    ck = Checksum()
    ck.add("Y", y)
    return ck, {"outputs": int(y.size)}


def st_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return 8 + n, json.loads(f.read(n))


def peek_choice(path):
    """The small tensor to peek at: of the tensors of at most 64 KiB (norms, biases), the one
    whose data lies nearest the middle of the file, so that neither the header's chunk nor a
    read-ahead behind it holds it by chance."""
    start, header = st_header(path)
    size = os.path.getsize(path)
    small = [
        (abs(start + v["data_offsets"][0] - size // 2), k)
        for k, v in header.items()
        if k != "__metadata__" and v["data_offsets"][1] - v["data_offsets"][0] <= 64 << 10
    ]
    if not small:
        raise SystemExit(f"{path} has no tensor of at most 64 KiB")
    name = min(small)[1]
    return name, start, header[name]["data_offsets"], size


def peek_bound(name_start_offsets_size, chunk):
    """Bytes of the chunks a reader of just the header and that tensor must have fetched."""
    _, start, (b, e), size = name_start_offsets_size
    chunks = set(range(0, (start - 1) // chunk + 1))
    chunks |= set(range((start + b) // chunk, (start + e - 1) // chunk + 1))
    return sum(min(chunk, size - c * chunk) for c in chunks)


def cached(paths):
    """Sum of cached_bytes once it has not moved for 0.5 s (at most 15 s): read-ahead started
    by the peek may still be landing when it returns, and it counts."""

    def now():
        return sum(int(os.getxattr(p, "user.modelfs.cached_bytes")) for p in paths)

    total, stable, deadline = now(), time.monotonic(), time.monotonic() + 15
    while time.monotonic() < deadline and time.monotonic() - stable < 0.5:
        time.sleep(0.05)
        v = now()
        if v != total:
            total, stable = v, time.monotonic()
    return total


def main(argv):
    args = argv[1:]
    hub = None
    if "--hub" in args:
        i = args.index("--hub")
        hub, args = args[i + 1 : i + 4], args[:i] + args[i + 4 :]
    if not args:
        raise SystemExit(__doc__)
    cmd = args[0]
    if cmd == "cached":
        print(cached(args[1:]))
        return
    if len(args) < 2:
        raise SystemExit(__doc__)
    path = args[1]
    extra = {}
    if cmd == "safetensors":
        need_bf16()
        import safetensors  # noqa: F401 (imported before the clock starts)

        fn = load_safetensors
    elif cmd == "gguf":
        import gguf  # noqa: F401

        fn = load_gguf
    elif cmd == "gguf-split":
        import gguf  # noqa: F401

        fn = load_gguf_split
    elif cmd == "onnx":
        import onnxruntime  # noqa: F401

        fn = load_onnx
    elif cmd == "peek":
        need_bf16()
        from safetensors import safe_open

        if len(args) != 4 or hub:
            raise SystemExit(__doc__)
        choice = peek_choice(args[2])
        extra["tensor"] = choice[0]
        extra["bound"] = peek_bound(choice, int(args[3]))

        def fn(p):
            ck = Checksum()
            with safe_open(p, "numpy") as f:
                ck.add(choice[0], f.get_tensor(choice[0]))
            return ck, {}
    else:
        raise SystemExit(__doc__)

    if hub:
        endpoint, repo, cache = hub
        os.environ["HF_ENDPOINT"] = endpoint
        os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
        from huggingface_hub import snapshot_download

    t0 = time.perf_counter()
    if hub:
        path = os.path.join(snapshot_download(repo, cache_dir=cache), path)
    ck, info = fn(path)
    elapsed = time.perf_counter() - t0
    kv = " ".join(f"{k}={v}" for k, v in {**info, **extra}.items())
    print(f"{elapsed:.6f} {ck.hex()} {kv}".rstrip())


if __name__ == "__main__":
    main(sys.argv)
