"""The Python package `modelfs` (doc/LIBRARY.md) against the mock Hub: real consumers loading
from the bytes it returns, random reads, progress, every error type, and the GIL."""

import io
import random
import threading
import time

import numpy as np
import pytest

import modelfs
from conftest import BIG, GATED, MINILM, ONNX, TOKEN


def test_scan_repo_lists_files_and_quants(cache, disk):
    m = cache.scan_repo(ONNX)
    assert m.repo == ONNX and len(m.commit) == 40
    assert sorted(m.quants) == ["all", "fp32", "q4f16"]
    q4 = m.quants["q4f16"]
    assert q4.files == ["config.json", "onnx/model_q4f16.onnx", "onnx/model_q4f16.onnx_data"]
    assert q4.total_bytes == sum(disk(ONNX, p).stat().st_size for p in q4.files)
    sizes = {f.path: f.size for f in m.files}
    assert sizes["onnx/model.onnx"] == disk(ONNX, "onnx/model.onnx").stat().st_size
    lfs = {f.path: f.sha256 for f in m.files}
    assert lfs["onnx/model_q4f16.onnx_data"] and len(lfs["onnx/model_q4f16.onnx_data"]) == 64


def test_minilm_loads_with_safetensors_and_tokenizers_from_returned_bytes(cache, disk):
    from safetensors.numpy import load, load_file
    from tokenizers import Tokenizer

    weights = load(cache.get_file(MINILM, "model.safetensors"))
    want = load_file(str(disk(MINILM, "model.safetensors")))
    assert sorted(weights) == sorted(want)
    assert all(np.array_equal(weights[k], want[k]) for k in want)
    tok = Tokenizer.from_str(cache.get_file(MINILM, "tokenizer.json").decode())
    ref = Tokenizer.from_file(str(disk(MINILM, "tokenizer.json")))
    text = "modelfs serves the model files, byte for byte."
    assert tok.encode(text).ids == ref.encode(text).ids


def test_an_onnx_model_with_external_data_runs_in_onnxruntime(cache, disk, tmp_path):
    import onnxruntime as ort

    x = np.random.default_rng(3).standard_normal((2, consumers_in()), dtype=np.float32)
    ref = ort.InferenceSession(str(disk(ONNX, "onnx/model.onnx"))).run(None, {"X": x})[0]
    # A model with its weights inline: straight from the bytes the package returned.
    inline = ort.InferenceSession(cache.get_file(ONNX, "onnx/model.onnx"))
    assert np.array_equal(inline.run(None, {"X": x})[0], ref)
    # External data is named by path: the graph and its data file side by side.
    for name in ["model_q4f16.onnx", "model_q4f16.onnx_data"]:
        (tmp_path / name).write_bytes(cache.get_file(ONNX, f"onnx/{name}"))
    external = ort.InferenceSession(str(tmp_path / "model_q4f16.onnx"))
    assert np.array_equal(external.run(None, {"X": x})[0], ref)


def consumers_in():
    import consumers

    return consumers.ONNX_IN


def test_open_file_reads_at_random_places_as_the_source(cache, disk):
    src = disk(MINILM, "model.safetensors").read_bytes()
    rng = random.Random(11)
    with cache.open_file(MINILM, "model.safetensors") as f:
        assert isinstance(f, io.RawIOBase) and f.readable() and f.seekable()
        assert f.size == len(src)
        for _ in range(300):
            at = rng.randrange(len(src))
            n = rng.randrange(1, 600_000)
            assert f.seek(at) == at
            if rng.random() < 0.5:
                assert f.read(n) == src[at : at + n]
            else:
                buf = bytearray(n)
                got = f.readinto(buf)
                assert buf[:got] == src[at : at + got] and got == min(n, len(src) - at)
            assert f.tell() == min(at + n, len(src))
        assert f.seek(-8, io.SEEK_END) == len(src) - 8 and f.read() == src[-8:]
        assert f.read(10) == b""
        # A header read the way numpy-style readers do it.
        f.seek(0)
        (length,) = np.frombuffer(f.read(8), dtype="<u8")
        assert int(length) == int.from_bytes(src[:8], "little")
        # Buffered on top, as open() gives it.
        f.seek(0)
        assert io.BufferedReader(f).read(1000) == src[:1000]
    with pytest.raises(ValueError):
        f.read(1)


def test_download_quant_reports_progress_and_the_manifest_follows(cache):
    calls = []
    before = cache.get_manifest(ONNX)
    assert before.quants["q4f16"].status == "available"
    report = cache.download_quant(ONNX, "q4f16", progress=lambda done, total: calls.append((done, total)))
    total = cache.scan_repo(ONNX).quants["q4f16"].total_bytes
    assert report.files == 3 and report.total_bytes == total and report.fetched_bytes == total
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))
    after = cache.get_manifest(ONNX)
    assert after.quants["q4f16"] == modelfs.QuantState("downloaded", total, total)
    assert after.quants["fp32"].status == "partial"  # config.json is shared
    # Again: nothing left to fetch.
    again = cache.download_quant(ONNX, "q4f16")
    assert again.already_bytes == total and again.fetched_bytes == 0


def test_a_progress_callback_that_raises_stops_the_download_cleanly(slow_hub, store):
    # 12 chunks of 1 MiB, two at a time at 4 MB/s each: about 1.5 s in all.
    cache = modelfs.ModelCache(
        store=store, endpoint=slow_hub.endpoint, read_timeout=30, chunk_size=1 << 20, max_connections=2
    )
    calls = []

    def progress(done, total):
        calls.append(done)
        if len(calls) == 3:
            raise RuntimeError("enough")

    with pytest.raises(RuntimeError, match="enough"):
        cache.download_quant(BIG, "all", progress=progress)
    state = cache.get_manifest(BIG).quants["all"]
    assert 0 < state.cached_bytes < state.total_bytes, f"it did not stop early: {state}"
    assert state.status == "partial"
    cache.download_quant(BIG, "all")
    assert cache.get_manifest(BIG).quants["all"].status == "downloaded"


def test_long_calls_release_the_gil(slow_hub, store):
    cache = modelfs.ModelCache(store=store, endpoint=slow_hub.endpoint, read_timeout=30)
    ticks = 0
    stop = threading.Event()

    def count():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    try:
        data = cache.get_file(BIG, "weights.bin")  # seconds on the slow CDN
    finally:
        stop.set()
        t.join()
    assert len(data) == 12 << 20
    assert ticks > 100, f"another thread ran only {ticks} times during the download"


def test_each_failure_is_pythons_own_exception(cache, hub, store, tmp_path):
    with pytest.raises(FileNotFoundError):
        cache.scan_repo("lib/no-such-repo")
    with pytest.raises(FileNotFoundError):
        cache.get_file(ONNX, "no/such/file.json")
    with pytest.raises(FileNotFoundError):
        cache.download_quant(ONNX, "q2_k")
    with pytest.raises(ValueError):
        cache.scan_repo("not a repo id")
    assert cache.get_file(GATED, "config.json") == b'{"gated": true}\n'
    stranger = modelfs.ModelCache(store=tmp_path / "other", endpoint=hub.endpoint, token="hf_wrong")
    with pytest.raises(PermissionError):
        stranger.get_file(GATED, "config.json")
    down = modelfs.ModelCache(store=tmp_path / "down", endpoint="http://127.0.0.1:9", read_timeout=2)
    with pytest.raises(OSError) as raised:
        down.scan_repo(ONNX)
    assert not isinstance(raised.value, (FileNotFoundError, PermissionError))
    offline = modelfs.ModelCache(store=tmp_path / "empty", offline=True)
    with pytest.raises(FileNotFoundError):
        offline.scan_repo(ONNX)
    assert TOKEN not in repr(cache.__dict__)
