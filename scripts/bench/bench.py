#!/usr/bin/env python3
"""Helpers of scripts/bench.sh: the parts that are easier in Python than in bash.

    bench.py gen-tree DIR SEED COUNT      the small-file repo (COUNT files in nested dirs)
    bench.py pread FILE COUNT SEED        COUNT random 4 KiB preads; prints seconds
    bench.py mmap FILE                    touch one byte per page of a shared mmap; prints seconds
    bench.py stat ROOT LIST               stat ROOT/<each line of LIST>; prints seconds
    bench.py hf-download ENDPOINT REPO FILE CACHE_DIR
                                          huggingface_hub.hf_hub_download; prints seconds
    bench.py report RESULTS               the markdown table of medians and ratios

Timed sections measure only the operation itself (not interpreter start-up or imports), so
that contenders timed from bash (`dd`, `curl`, `ls`) and from here compare fairly. Every
random choice is seeded, so two runs read the same offsets and generate the same bytes.
"""

import mmap
import os
import random
import statistics
import sys
import time

PAGE = 4096


def gen_tree(root, seed, count):
    """COUNT small files, 10 top-level dirs x 10 subdirs, sizes 200 B .. 16 KiB. (Changing
    what this writes needs GEN_VERSION in bench.sh bumped, or old data is reused.)

    Shaped like the non-weight part of a big repo (configs, tokenizers, per-layer shards
    of metadata): many small git files in nested folders."""
    rng = random.Random(seed)
    per_leaf = max(1, count // 100)
    made = 0
    for top in range(10):
        for sub in range(10):
            d = os.path.join(root, f"d{top:02}", f"s{sub:02}")
            os.makedirs(d, exist_ok=True)
            for i in range(per_leaf):
                if made == count:
                    return
                ext = ("json", "txt", "md")[i % 3]
                with open(os.path.join(d, f"f{i:04}.{ext}"), "wb") as f:
                    f.write(rng.randbytes(rng.randint(200, 16384)))
                made += 1
    # Any remainder goes to the repo root.
    while made < count:
        with open(os.path.join(root, f"extra{made:05}.txt"), "wb") as f:
            f.write(rng.randbytes(rng.randint(200, 16384)))
        made += 1


def pread(path, count, seed):
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        rng = random.Random(seed)
        # Page-aligned offsets, as a reader of tensors or a database would use.
        offsets = [rng.randrange(0, size // PAGE) * PAGE for _ in range(count)]
        t0 = time.perf_counter()
        for off in offsets:
            if len(os.pread(fd, PAGE, off)) != PAGE:
                raise SystemExit(f"short pread at {off}")
        return time.perf_counter() - t0
    finally:
        os.close(fd)


def mmap_read(path):
    """Fault in every page of a read-only shared mapping, in order: what a model loader that
    maps the weights (llama.cpp, safetensors) costs before its first token."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        t0 = time.perf_counter()
        m = mmap.mmap(f.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ)
        for off in range(0, size, PAGE):
            _ = m[off]
        m.close()
        return time.perf_counter() - t0


def stat_all(root, listing):
    with open(listing) as f:
        paths = [os.path.join(root, line.rstrip("\n")) for line in f if line.strip()]
    t0 = time.perf_counter()
    for p in paths:
        os.stat(p)
    return time.perf_counter() - t0


def hf_download(endpoint, repo, filename, cache_dir):
    os.environ["HF_ENDPOINT"] = endpoint
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    from huggingface_hub import hf_hub_download

    t0 = time.perf_counter()
    path = hf_hub_download(repo, filename, cache_dir=cache_dir)
    elapsed = time.perf_counter() - t0
    if not os.path.isfile(path):
        raise SystemExit(f"hf_hub_download returned {path}, not a file")
    return elapsed


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

GIB = 1 << 30
MB = 1e6


def gen_ckpt(root, seed, shards, shard_bytes):
    """A sharded safetensors checkpoint as vLLM meets one: `shards` files of about
    `shard_bytes`, a few hundred tensors each of mixed dtypes and sizes, named so that sorted
    order (how loaders read them) differs from file order, and a `model.safetensors.index.json`
    mapping every tensor to its shard."""
    import json
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    weight_map = {}
    dtypes = [np.float16, np.float32, np.int8]
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors, left, i = {}, shard_bytes, 0
        while left > 0:
            dtype = dtypes[i % 3]
            elems = min(int(rng.integers(64 << 10, 4 << 20)), max(left // np.dtype(dtype).itemsize, 1))
            # Layer numbers not zero-padded: "layers.10" sorts before "layers.2".
            key = f"model.layers.{int(rng.integers(0, 40))}.w{s}_{i}"
            tensors[key] = rng.integers(0, 127, size=elems, dtype=np.int8).view(np.int8).astype(dtype)
            left -= tensors[key].nbytes
            weight_map[key] = name
            i += 1
        save_file(tensors, os.path.join(root, name))
    with open(os.path.join(root, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def load_ckpt(root):
    """Load every tensor of the checkpoint in `root` as a loader does: for each shard named
    by the index, `safe_open` it and read its tensors in sorted-name order. Seconds."""
    import json
    from safetensors import safe_open

    t0 = time.perf_counter()
    with open(os.path.join(root, "model.safetensors.index.json")) as f:
        index = json.load(f)
    total = 0
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(os.path.join(root, shard), "np") as f:
            for key in sorted(f.keys()):
                total += int(f.get_tensor(key).nbytes)
    if total == 0:
        raise SystemExit("empty checkpoint")
    return time.perf_counter() - t0


def load(path):
    """RESULTS holds `key value` lines; a key may repeat (one line per run)."""
    vals, meta = {}, {}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2:
                continue
            k, v = parts
            if k.startswith("meta."):
                meta[k[5:]] = v
            else:
                vals.setdefault(k, []).append(float(v))
    return vals, meta


def fmt_s(s):
    if s < 0.01:
        return f"{s * 1000:.2f} ms"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    return f"{s:.2f} s"


def report(path):
    vals, meta = load(path)
    cap = meta.get("cap_mbps", "?")
    rows = []

    def med(key):
        v = vals.get(key)
        return (statistics.median(v), len(v)) if v else (None, 0)

    def row(what, key, ref_key, ref_name, nbytes=None, target=None, lower_is_better=True,
            into=None, target_label=None):
        into = rows if into is None else into
        m, n = med(key)
        r, _ = med(ref_key) if ref_key else (None, 0)
        if m is None:
            into.append([what, "not run", "", "", ref_name or "", "", ""])
            return
        rate = f"{nbytes / m / MB:.0f}" if nbytes else ""
        ratio = ""
        ok = ""
        if r is not None and m > 0:
            # Always "speed relative to the reference": > 1 means faster than it.
            x = r / m if lower_is_better else m / r
            ratio = f"{x:.2f}×"
            if target is not None:
                ok = "yes" if x >= target else "**no**"
        note = f"≥ {target_label or target}× → {ok}" if target is not None and ok else ""
        into.append([what, fmt_s(m), rate, str(n), ref_name or "", ratio, note])

    rows_head = ["Measurement", "median", "MB/s", "n", "reference", "vs ref", "target"]
    one = GIB
    for cond, label in (("u", "uncapped"), ("c", f"capped {cap} MB/s/conn")):
        ref = f"cold.{cond}.curl"
        rname = f"curl, {label}"
        row(f"cold 1 GiB, {label}: curl (1 stream)", ref, None, None, one)
        tgt = 0.8 if cond == "u" else 4
        row(f"cold 1 GiB, {label}: **modelfs** dd", f"cold.{cond}.modelfs", ref, rname, one, tgt)
        row(f"cold 1 GiB, {label}: hf_hub_download", f"cold.{cond}.hf", ref, rname, one)
        row(f"cold 1 GiB, {label}: rclone mount (vfs full)", f"cold.{cond}.rclone", ref, rname,
            one)
        row(f"cold 1 GiB, {label}: **modelfs** vs hf_hub_download", f"cold.{cond}.modelfs",
            f"cold.{cond}.hf", "hf_hub_download", one, 1 if cond == "c" else None)
        row(f"cold 1 GiB, {label}: **modelfs** vs rclone", f"cold.{cond}.modelfs",
            f"cold.{cond}.rclone", "rclone mount", one, 1 if cond == "c" else None)
        row(f"last 4 KiB of cold 1 GiB, {label}: **modelfs** dd", f"last4k.{cond}.modelfs",
            f"cold.{cond}.hf", "hf_hub_download (whole file)", None, 100)
        if cond == "u":
            # What keeping the bytes costs anyone on this machine (see BENCHMARKS.md).
            row("cold 1 GiB, uncapped: curl -o file (kept on the store's disk)",
                "cold.u.curlfile", "cold.u.curl", "curl, uncapped", one)
            row("cold 1 GiB, uncapped: **modelfs** vs curl -o file", "cold.u.modelfs",
                "cold.u.curlfile", "curl -o file", one, 0.8)
            row("write 1 GiB of new page cache (dd /dev/zero to a new file)", "newpages.dd",
                None, None, one)
    cargs = meta.get("coalesce_args", "")
    for ttfb, rate in (("150", "100"), ("30", "40")):
        what = f"cold 256 MiB, mock CDN {ttfb} ms first byte, {rate} MB/s/conn, {cargs}"
        row(f"{what}: one chunk per request", f"coalesce.{ttfb}.off", None, None, 256 << 20)
        row(f"{what}: **coalesced runs**", f"coalesce.{ttfb}.on", f"coalesce.{ttfb}.off",
            "one chunk per request", 256 << 20)
    for state, label, tgt in (("store", "page cache dropped", 0.9), ("hot", "page cache hot", 0.95)):
        row(f"warm 1 GiB, {label}: plain file dd", f"warm.{state}.plain", None, None, one)
        row(f"warm 1 GiB, {label}: **modelfs** dd", f"warm.{state}.modelfs",
            f"warm.{state}.plain", "plain file", one, tgt)
    half = one // 2
    for state, label, tgt in (("store", "page cache dropped", 0.7), ("hot", "page cache hot", 0.9)):
        row(f"partially cached 1 GiB, reread its cached half, {label}: plain file dd",
            f"partial.{state}.plain", None, None, half)
        row(f"partially cached 1 GiB, reread its cached half, {label}: **modelfs** dd",
            f"partial.{state}.modelfs", f"partial.{state}.plain", "plain file", half, tgt)
    ckpt = meta.get("ckpt_bytes")
    ckpt = int(ckpt) if ckpt else None
    for state, label in (("store", "page cache dropped"), ("hot", "page cache hot")):
        row(f"load a 1 GiB 2-shard safetensors checkpoint (safe_open, every tensor), warm, {label}: local disk",
            f"ckpt.{state}.plain", None, None, ckpt)
        row(f"load a 1 GiB 2-shard safetensors checkpoint (safe_open, every tensor), warm, {label}: **modelfs**",
            f"ckpt.{state}.modelfs", f"ckpt.{state}.plain", "local disk", ckpt, 0.9)
    npread = meta.get("pread_count", "?")
    for state, label in (("store", "page cache dropped"), ("hot", "page cache hot")):
        row(f"{npread} random 4 KiB preads, {label}: plain file", f"pread.{state}.plain", None,
            None)
        row(f"{npread} random 4 KiB preads, {label}: **modelfs**", f"pread.{state}.modelfs",
            f"pread.{state}.plain", "plain file", None, 0.9 if state == "hot" else None)
        row(f"mmap, touch every page of 1 GiB, {label}: plain file", f"mmap.{state}.plain",
            None, None, one)
        row(f"mmap, touch every page of 1 GiB, {label}: **modelfs**", f"mmap.{state}.modelfs",
            f"mmap.{state}.plain", "plain file", one, 0.95 if state == "hot" else None)
    nfiles = meta.get("tree_files", "?")
    for state, label in (("fresh", "fresh mount / caches dropped"), ("hot", "repeated")):
        row(f"`ls -lR` {nfiles}-file repo, {label}: on disk", f"lsR.{state}.native", None, None)
        row(f"`ls -lR` {nfiles}-file repo, {label}: **modelfs**", f"lsR.{state}.modelfs",
            f"lsR.{state}.native", "on disk", None, 0.5)
        row(f"`stat` every file, {label}: on disk", f"stat.{state}.native", None, None)
        row(f"`stat` every file, {label}: **modelfs**", f"stat.{state}.modelfs",
            f"stat.{state}.native", "on disk")

    def table(body):
        return (["| " + " | ".join(rows_head) + " |", "|" + "---|" * len(rows_head)]
                + ["| " + " | ".join(r) + " |" for r in body])

    # BENCH_ONLY=loaders or tier: the other sections did not run, and a table of "not run"
    # says nothing.
    only_one = meta.get("only") in ("loaders", "tier")
    out = [] if only_one else table(rows)
    out += loader_tables(vals, meta, med, row, table, cap, bool(out))
    out += tier_tables(vals, meta, row, table, cap, bool(out))

    # Peak memory is not a time: its own small table (left out when it has no rows).
    mem = ["", "| While streaming 1 GiB cold through modelfs | median | max | n | target |",
           "|---|---|---|---|---|"]
    out_before_mem = len(out)
    out += mem
    for cond, label in (("u", "uncapped"), ("c", "capped")):
        for key, what in (("hwm", "VmHWM (peak RSS, incl. mapped store pages)"),
                          ("anon", "peak RssAnon (sampled every ~0.1 s)")):
            v = vals.get(f"rss.{cond}.{key}")
            if not v:
                continue
            m, mx = statistics.median(v) / 1024, max(v) / 1024
            tgt = ""
            if key == "hwm":
                tgt = "≤ 128 MiB → " + ("yes" if mx <= 128 else "**no**")
            out.append(f"| {what}, {label} | {m:.0f} MiB | {mx:.0f} MiB | {len(v)} | {tgt} |")
    for cond, label in (("u", "uncapped"), ("c", "capped")):
        reqs, sent = vals.get(f"cdn.{cond}.requests"), vals.get(f"cdn.{cond}.bytes")
        if reqs and sent:
            out.append(
                f"| CDN requests per cold 1 GiB read through modelfs, {label} | "
                f"{statistics.median(reqs):.0f} | {max(reqs):.0f} | {len(reqs)} | "
                f"bytes sent {statistics.median(sent) / GIB:.3f}× the file |"
            )
    if len(out) == out_before_mem + len(mem):
        del out[out_before_mem:]
    notes = [v for k, v in sorted(meta.items()) if k.startswith("note")]
    if notes:
        out.append("")
        out += [f"- {n}" for n in notes]
    print("\n".join(out))


# What each load is (doc/BENCHMARKS.md says how it reads).
LOADER_WHAT = {"safetensors": "sharded safetensors", "gguf": "GGUF", "gguf-split": "GGUF in 3 splits",
               "onnx": "ONNX + external data"}

# Loaders that read every byte before any of their own work (ONNX Runtime reads each
# initializer, then prepacks and runs). Nothing a mount does can end such a load before the
# bytes' arrival (a `dd` of them) plus that work, so their "within 1.2×" target is taken
# against `dd` + the load from memory; their ratio to `dd` alone is printed beside it, without
# a target (doc/BENCHMARKS.md, "Cold model loads": why).
READS_BEFORE_WORK = {"onnx"}
# "Within 1.2×": the reference's time / ours ≥ 1 / 1.2.
WITHIN = 1 / 1.2


def loader_tables(vals, meta, med, row, table, cap, after_other):
    """The rows of scripts/bench/loaders.sh: cold loads through modelfs against
    snapshot_download-then-load and against `dd` of the same files through a cold mount, and
    the bytes a peek fetched against the bound of what it needs."""
    if not any(k.startswith(("load.", "peek.")) for k in vals):
        return []
    body = []
    scale = meta.get("loader_scale", "?")
    for cond, label in (("u", "uncapped"), ("c", f"capped {cap} MB/s/conn")):
        for fmt, what in LOADER_WHAT.items():
            nbytes = meta.get(f"load_{fmt}_bytes")
            nbytes = int(nbytes) if nbytes else None
            size = f"{nbytes / (1 << 20):.0f} MiB" if nbytes else "?"
            count = meta.get(f"load_{fmt}_what", "").replace("tensors=", "").replace("outputs=", "")
            count = f", {count} tensors" if fmt != "onnx" and count else ""
            head = f"cold load, {what} {size}{count}, {label}"
            hf, mfs, dd = (f"load.{fmt}.{k}.{cond}" for k in ("hf_then_disk", "modelfs_cold", "dd_cold"))
            row(f"{head}: snapshot_download, then load", hf, None, None, nbytes, into=body)
            row(f"{head}: `dd` its files, cold mount", dd, None, None, nbytes, into=body)
            row(f"{head}: **modelfs** load, cold mount", mfs, hf, "snapshot_download + load",
                nbytes, 3 if cond == "c" else None, into=body)
            # WITHIN's reference is `dd` for a loader whose work overlaps its reads, `dd` + the
            # load from memory for one that reads everything first (READS_BEFORE_WORK).
            reads_first = fmt in READS_BEFORE_WORK
            row(f"{head}: **modelfs** load, cold mount", mfs, dd, "`dd`, cold mount", nbytes,
                None if reads_first else WITHIN, into=body, target_label="0.83")
            mem, floor = f"load.{fmt}.memory.{cond}", f"load.{fmt}.floor.{cond}"
            (d, _), (w, _) = med(dd), med(mem)
            if d is not None and w is not None:
                vals[floor] = [d + w]
            row(f"{head}: the same load, its files in memory", mem, None, None, nbytes, into=body)
            row(f"{head}: **modelfs** load, cold mount", mfs, floor,
                "`dd` + the load from memory", nbytes, WITHIN if reads_first else None,
                into=body, target_label="0.83")
        row(f"peek (header + 1 small tensor) at a cold safetensors shard, {label}: **modelfs**",
            f"peek.safetensors.modelfs_cold.{cond}", None, None, into=body)
    out = [""] if after_other else []
    out += [f"Cold model loads ({scale} scale):", ""] + table(body)
    bound = meta.get("peek_bound")
    chunk = int(meta.get("peek_chunk", 0)) or None
    out += ["", f"| Peek at a cold shard (header + `{meta.get('peek_tensor', '?')}`): bytes fetched, all files of the checkpoint | median | max | n | bound: header's + tensor's chunks | target |",
            "|---|---|---|---|---|---|"]
    for cond, label in (("u", "uncapped"), ("c", "capped")):
        v = vals.get(f"peek.safetensors.bytes.{cond}")
        if not v or not bound:
            continue
        b, m = int(bound), statistics.median(v)
        mib = lambda x: f"{x / (1 << 20):.1f} MiB"  # noqa: E731
        chunks = f", {b // chunk} chunks" if chunk else ""
        out.append(f"| {label} | {mib(m)} ({m / b:.2f}× the bound) | {mib(max(v))} | {len(v)} | "
                   f"{mib(b)}{chunks} | ≤ 1× → {'yes' if max(v) <= b else '**no**'} |")
    return out


# The two kinds of tier scripts/bench/tier.sh measures.
TIER_WHAT = {"file": "`file://` tier (a directory on this disk)", "s3": "S3 tier (moto server)"}


def tier_tables(vals, meta, row, table, cap, after_other):
    """The rows of scripts/bench/tier.sh: three nodes reading one file one after another
    through one tier (node 1 from the Hub, nodes 2 and 3 from the tier; target >= 3x faster),
    the Hub bytes that cost (target: one copy of the file), and the same nodes at once over
    an empty tier (the duplication the design allows: reported, no target)."""
    if not any(k.startswith(("tier.", "tierc.")) for k in vals):
        return []
    size = int(meta.get("tier_bytes", GIB))
    nodes = meta.get("tier_nodes", "3")
    label = f"{size / GIB:g} GiB" if size >= GIB else f"{size >> 20} MiB"
    body = []
    for kind, what in TIER_WHAT.items():
        head = f"cold {label}, {what}, Hub capped {cap} MB/s/conn"
        n1 = f"tier.{kind}.node1"
        row(f"{head}: node 1, empty tier (from the Hub)", n1, None, None, size, into=body)
        row(f"{head}: node 1's uploads all in the tier, after its read", f"tier.{kind}.upload_after",
            None, None, into=body)
        for i in (2, 3):
            row(f"{head}: **node {i}** (from the tier)", f"tier.{kind}.node{i}", n1, "node 1 (Hub)",
                size, 3, into=body)
        row(f"{head}: {nodes} nodes at once, empty tier (slowest node)", f"tierc.{kind}.slowest", n1,
            "node 1 alone (Hub)", size, into=body)
    out = [""] if after_other else []
    out += [f"The shared tier ({meta.get('tier_scale', '?')} scale, {nodes} daemons with stores of their own, one tier):", ""]
    out += table(body)
    out += ["", f"| Hub (CDN) bytes sent, over the file size ({size:,} bytes) | median | max | n | target |",
            "|---|---|---|---|---|"]
    for kind, what in TIER_WHAT.items():
        v = vals.get(f"tier.{kind}.cdn")
        if v:
            m, mx = statistics.median(v) / size, max(v) / size
            # One copy exactly: every byte of the file once, none twice.
            ok = "yes" if all(int(x) == size for x in v) else "**no**"
            out.append(f"| {nodes} nodes one after another, {what} | {m:.3f}× | {mx:.3f}× | {len(v)} | "
                       f"= 1.00× → {ok} |")
    for kind, what in TIER_WHAT.items():
        v = vals.get(f"tierc.{kind}.cdn")
        if v:
            m, mx, mn = statistics.median(v) / size, max(v) / size, min(v) / size
            out.append(f"| {nodes} nodes at once, empty {what} | {m:.3f}× | {mx:.3f}× (min {mn:.3f}×) | "
                       f"{len(v)} | reported: at most {nodes}× (no coordination) |")
    extra = []
    for kind, what in TIER_WHAT.items():
        d = vals.get(f"tier.{kind}.deferred")
        e = [x for i in (1, 2, 3) for x in vals.get(f"tier.{kind}.node{i}.errors", [])]
        got = [x for i in (2, 3) for x in vals.get(f"tier.{kind}.node{i}.from_tier", [])]
        if d or e or got:
            full = sum(1 for x in got if int(x) == size)
            extra.append(f"- {what}: nodes 2 and 3 read the whole file from the tier in {full} of "
                         f"{len(got)} reads (`modelfs_tier_fetched_bytes_total`); tier errors "
                         f"counted: {sum(e):.0f}; node 1's uploads deferred while its 8 were busy: "
                         f"median {statistics.median(d) if d else 0:.0f} chunks.")

        def cpu(key):
            return "/".join(f"{statistics.median(vals[f'tier.{kind}.node{i}.{key}']):.1f}"
                            if vals.get(f"tier.{kind}.node{i}.{key}") else "?" for i in (1, 2, 3))
        if vals.get(f"tier.{kind}.node1.cpu"):
            line = f"- {what}: CPU seconds during each read (median; nodes 1/2/3): daemon {cpu('cpu')}"
            if vals.get(f"tier.{kind}.node1.server_cpu"):
                line += f", S3 server {cpu('server_cpu')}"
            extra.append(line + ".")
    if extra:
        out += [""] + extra
    return out


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "gen-tree":
        gen_tree(args[0], int(args[1]), int(args[2]))
    elif cmd == "pread":
        print(f"{pread(args[0], int(args[1]), int(args[2])):.6f}")
    elif cmd == "mmap":
        print(f"{mmap_read(args[0]):.6f}")
    elif cmd == "stat":
        print(f"{stat_all(args[0], args[1]):.6f}")
    elif cmd == "hf-download":
        print(f"{hf_download(*args[:4]):.6f}")
    elif cmd == "gen-ckpt":
        gen_ckpt(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "load-ckpt":
        print(f"{load_ckpt(args[0]):.6f}")
    elif cmd == "report":
        report(args[0])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
