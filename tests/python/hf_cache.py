"""huggingface_hub and transformers loading a model by repo id from a modelfs mount's
`.hf-cache` view, compared with the same files on disk.

Driven by tests/hf_cache.rs, always with HF_HUB_CACHE=<mount>/.hf-cache HF_HUB_OFFLINE=1:

    hf_cache.py check --repo ORG/NAME --commit COMMIT --disk DIR
        fails unless every call below finds the repo in the cache view, returns paths under
        it, and reads exactly the bytes of DIR (the fixture the mock Hub serves):
        hf_hub_download (by branch and by commit), try_to_load_from_cache (present and absent
        files), snapshot_download(local_files_only=True), scan_cache_dir, and transformers'
        AutoConfig and AutoTokenizer (their outputs equal to loading DIR itself). Any attempt
        to write under the cache (an open for writing, mkdir, symlink, rename, ...) is
        recorded with an audit hook and fails the check: the view is read-only and the
        offline read path must not need to write.
    hf_cache.py versions
        prints `name version` for every package the check uses.

A missing package is an error that says to run scripts/setup.sh; nothing is ever skipped.
"""

import argparse
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

# Installed by scripts/setup.sh from tests/python/requirements.txt. Distribution -> module.
PACKAGES = {
    "huggingface_hub": "huggingface_hub",
    "transformers": "transformers",
    "tokenizers": "tokenizers",
}

# Encoded by both tokenizers: ASCII, accents, CJK, emoji, whitespace runs, a pair, and one
# long enough to be truncated.
SENTENCES = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé: naïve café, 日本語のテキスト, emoji 🤗🚀",
    "   leading and trailing spaces   ",
    " ".join(f"word{i}" for i in range(200)),
]

# Audit events that change a file system; `open` is judged by its mode and flags.
WRITE_EVENTS = {
    "os.mkdir", "os.symlink", "os.link", "os.rename", "os.replace", "os.remove", "os.rmdir",
    "os.truncate", "os.utime", "os.chmod", "os.chown", "os.chflags", "os.mkfifo", "os.mknod",
    "shutil.copyfile", "shutil.move", "shutil.rmtree", "tempfile.mkstemp", "tempfile.mkdtemp",
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def need(dist):
    """Import the module of a distribution, or fail saying how to install it."""
    module = PACKAGES[dist]
    if importlib.util.find_spec(module) is None:
        fail(
            f"Python package {dist} is not installed for {sys.executable}: run scripts/setup.sh "
            "(it installs tests/python/requirements.txt)"
        )
    return importlib.import_module(module)


def watch_writes(root):
    """Record every attempt to change anything under `root` (audit hooks cannot be removed)."""
    root = os.path.realpath(root)
    attempts = []

    def under(path):
        try:
            p = os.fsdecode(path)
        except TypeError:
            return False  # a file descriptor: nothing under the cache is opened for writing
        return os.path.realpath(os.path.abspath(p)).startswith(root)

    def hook(event, args):
        if event == "open" and args:
            path, mode, flags = args[0], args[1], args[2]
            writes = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & WRITE_FLAGS
            )
            if writes and under(path):
                attempts.append(f"open({path!r}, {mode!r}, {flags!r})")
        elif event in WRITE_EVENTS and any(
            under(a) for a in args if isinstance(a, (str, bytes, os.PathLike))
        ):
            attempts.append(f"{event}{args!r}")

    sys.addaudithook(hook)
    return attempts


def same_file(what, path, disk):
    a, b = Path(path).read_bytes(), Path(disk).read_bytes()
    if a != b:
        fail(f"{what}: {path} ({len(a)} B) differs from {disk} ({len(b)} B)")


def disk_files(disk):
    """Every file of the fixture repo, as repo paths (symlinks followed, as the mock Hub)."""
    return sorted(
        p.relative_to(disk).as_posix() for p in Path(disk).rglob("*") if p.is_file()
    )


def check(args):
    cache = os.environ.get("HF_HUB_CACHE", "")
    if not cache or os.environ.get("HF_HUB_OFFLINE") != "1":
        fail("run with HF_HUB_CACHE=<mount>/.hf-cache HF_HUB_OFFLINE=1")
    writes = watch_writes(cache)
    hf = need("huggingface_hub")
    need("tokenizers")
    from huggingface_hub import (
        hf_hub_download,
        scan_cache_dir,
        snapshot_download,
        try_to_load_from_cache,
    )
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo, commit, disk = args.repo, args.commit, Path(args.disk)
    root = os.path.realpath(cache)
    folder = os.path.join(root, "models--" + repo.replace("/", "--"))
    snapshot = os.path.join(folder, "snapshots", commit)

    def in_view(what, path):
        if not isinstance(path, str) or not os.path.realpath(path).startswith(snapshot + os.sep):
            fail(f"{what} returned {path!r}, not a path under {snapshot}")

    ref = Path(folder, "refs", "main").read_text()
    if ref != commit:
        fail(f"refs/main reads {ref!r}, expected {commit!r} (40 hex digits, no newline)")

    # hf_hub_download: by branch (refs/main → snapshots/<commit>) and by commit.
    for revision in [None, commit]:
        path = hf_hub_download(repo, "config.json", revision=revision)
        in_view(f"hf_hub_download(revision={revision})", path)
        same_file("hf_hub_download config.json", path, disk / "config.json")
    path = hf_hub_download(repo, "1_Pooling/config.json")
    in_view("hf_hub_download 1_Pooling/config.json", path)
    same_file("hf_hub_download 1_Pooling/config.json", path, disk / "1_Pooling/config.json")
    try:
        got = hf_hub_download(repo, "not-there.json")
        fail(f"hf_hub_download of an absent file returned {got!r}")
    except LocalEntryNotFoundError:
        pass

    # try_to_load_from_cache: a path when present; None when absent (not _CACHED_NO_EXIST,
    # which would mean "known not to exist at this commit").
    got = try_to_load_from_cache(repo, "tokenizer.json")
    in_view("try_to_load_from_cache(tokenizer.json)", got)
    same_file("try_to_load_from_cache tokenizer.json", got, disk / "tokenizer.json")
    got = try_to_load_from_cache(repo, "not-there.json")
    if got is not None:
        fail(f"try_to_load_from_cache of an absent file returned {got!r}, not None")
    got = try_to_load_from_cache(repo, "config.json", revision=commit)
    in_view("try_to_load_from_cache(revision=commit)", got)
    if try_to_load_from_cache("nobody/not-a-repo", "config.json") is not None:
        fail("try_to_load_from_cache found a repo that does not exist")

    # snapshot_download: the snapshot directory, holding every file of the repo.
    got = snapshot_download(repo, local_files_only=True)
    if os.path.realpath(got) != snapshot:
        fail(f"snapshot_download returned {got!r}, not {snapshot}")
    mounted = sorted(
        p.relative_to(got).as_posix() for p in Path(got).rglob("*") if p.is_file()
    )
    if mounted != disk_files(disk):
        fail(f"snapshot_download lists {mounted}, the repo has {disk_files(disk)}")
    for f in mounted:
        same_file(f"snapshot_download {f}", Path(got) / f, disk / f)

    # scan_cache_dir: the repo, its commit with ref main, every file, no warnings.
    report = scan_cache_dir()
    if report.warnings:
        fail(f"scan_cache_dir warns: {report.warnings}")
    repos = {r.repo_id: r for r in report.repos}
    if repo not in repos or repos[repo].repo_type != "model":
        fail(f"scan_cache_dir lists {sorted(repos)}, not the model {repo}")
    revisions = {r.commit_hash: r for r in repos[repo].revisions}
    if commit not in revisions or "main" not in revisions[commit].refs:
        fail(f"scan_cache_dir: revisions {[(c, sorted(r.refs)) for c, r in revisions.items()]}")
    scanned = revisions[commit]
    if scanned.nb_files != len(mounted):
        fail(f"scan_cache_dir: {scanned.nb_files} files at {commit}, expected {len(mounted)}")
    size = sum((disk / f).stat().st_size for f in mounted)
    if scanned.size_on_disk != size:
        fail(f"scan_cache_dir: {scanned.size_on_disk} B at {commit}, the files are {size} B")

    # transformers by repo id, against the fixture directory loaded by path.
    transformers = need("transformers")
    from transformers import AutoConfig, AutoTokenizer

    c_id, c_disk = AutoConfig.from_pretrained(repo), AutoConfig.from_pretrained(str(disk))
    d_id, d_disk = c_id.to_dict(), c_disk.to_dict()
    for d in (d_id, d_disk):
        d.pop("_name_or_path", None)
    if d_id != d_disk or c_id.model_type != "bert" or c_id.hidden_size != 384:
        fail(f"AutoConfig by id differs from disk: {d_id} vs {d_disk}")
    t_id, t_disk = AutoTokenizer.from_pretrained(repo), AutoTokenizer.from_pretrained(str(disk))
    if type(t_id) is not type(t_disk):
        fail(f"AutoTokenizer by id is {type(t_id).__name__}, from disk {type(t_disk).__name__}")
    e_id = t_id(SENTENCES, text_pair=SENTENCES[::-1], truncation=True, padding=True)
    e_disk = t_disk(SENTENCES, text_pair=SENTENCES[::-1], truncation=True, padding=True)
    if dict(e_id) != dict(e_disk):
        fail("AutoTokenizer by id encodes differently from the one loaded from disk")
    if t_id("hello world")["input_ids"] != [101, 7592, 2088, 102]:
        fail(f"'hello world' encodes as {t_id('hello world')['input_ids']}")

    if writes:
        fail(f"writes were attempted under the cache view: {writes}")
    n = sum(len(ids) for ids in e_id["input_ids"])
    print(
        f"hf_cache ok: {repo}@{commit[:12]}, {len(mounted)} files identical, scan_cache_dir "
        f"{scanned.size_on_disk} B, transformers {transformers.__version__} / huggingface_hub "
        f"{hf.__version__}: config equal, {n} token ids identical, no write attempted"
    )


def cmd_versions(_args):
    for dist in PACKAGES:
        try:
            print(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            need(dist)  # fails, saying how to install it


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("versions")
    c = sub.add_parser("check")
    c.add_argument("--repo", required=True)
    c.add_argument("--commit", required=True)
    c.add_argument("--disk", required=True)
    args = p.parse_args()
    if args.cmd == "versions":
        cmd_versions(args)
    else:
        check(args)


if __name__ == "__main__":
    main()
