"""Checks the mock Hub (tests/support/mock_hub.rs) against the official client, huggingface_hub.

Run by tests/hub_fidelity.rs with HF_ENDPOINT pointing at the mock, HF_TOKEN set to a token the
mock accepts, and a JSON file describing the fixtures (expected commits, sizes and hashes) as
the only argument. Every check is exact; the script prints what it checked and exits 1 when
anything differs, so the Rust test fails with this output.
"""

import hashlib
import json
import sys
import tempfile
import traceback

import huggingface_hub
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

FAILURES = []
CHECKS = 0


def check(ok, what):
    global CHECKS
    CHECKS += 1
    if not ok:
        FAILURES.append(what)
        print(f"FAIL: {what}", flush=True)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def expect_error(what, expected, fn, *, not_types=()):
    """`fn()` must raise exactly `expected` (and none of `not_types`); returns the error."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the type is what is being checked
        ok = isinstance(e, expected) and not isinstance(e, not_types)
        check(ok, f"{what}: raised {type(e).__name__} ({str(e).splitlines()[0] if str(e) else ''}), "
                  f"expected {expected.__name__}")
        return e
    check(False, f"{what}: raised nothing, expected {expected.__name__}")
    return None


def check_downloads(fx):
    repo = fx["repo"]
    for rev_name, rev, files in (
        ("main", "main", fx["files_head"]),
        ("head sha", fx["head"], fx["files_head"]),
        ("first sha", fx["first"], fx["files_first"]),
        ("tag", fx["tag"], fx["files_first"]),
    ):
        for f in files:
            what = f"hf_hub_download({f['path']!r}, revision={rev_name})"
            try:
                path = hf_hub_download(repo, f["path"], revision=rev)
            except Exception:  # noqa: BLE001
                check(False, f"{what} raised:\n{traceback.format_exc()}")
                continue
            check(sha256_of(path) == f["sha256"], f"{what}: sha256 differs")
            # The snapshot folder is named by the commit the Hub reported (X-Repo-Commit).
            commit = fx["head"] if files is fx["files_head"] else fx["first"]
            check(f"/snapshots/{commit}/" in path, f"{what}: not under snapshot {commit}: {path}")


def check_model_info(fx):
    api = HfApi()
    repo = fx["repo"]
    info = api.model_info(repo, files_metadata=True)
    check(info.id == repo, f"model_info.id = {info.id!r}")
    check(info.sha == fx["head"], f"model_info.sha = {info.sha!r}, expected {fx['head']}")
    check(info.pipeline_tag == fx["pipeline_tag"], f"model_info.pipeline_tag = {info.pipeline_tag!r}")
    check(info.gated is False and info.private is False, f"gated={info.gated!r} private={info.private!r}")
    siblings = {s.rfilename: s for s in info.siblings}
    expected = {f["path"]: f for f in fx["files_head"]}
    check(set(siblings) == set(expected), f"siblings {sorted(siblings)} != {sorted(expected)}")
    for path, f in expected.items():
        s = siblings.get(path)
        if s is None:
            continue
        check(s.size == f["size"], f"sibling {path}: size {s.size} != {f['size']}")
        check(s.blob_id == f["blob_id"], f"sibling {path}: blob_id {s.blob_id} != {f['blob_id']}")
        if f["lfs"]:
            ok = s.lfs is not None and s.lfs.sha256 == f["sha256"] and s.lfs.size == f["size"]
            check(ok, f"sibling {path}: lfs {s.lfs!r}, expected sha256 {f['sha256']}")
        else:
            check(s.lfs is None, f"sibling {path}: git file has lfs {s.lfs!r}")

    first = api.model_info(repo, revision=fx["first"])
    check(first.sha == fx["first"], f"model_info(revision=first).sha = {first.sha!r}")
    tagged = api.model_info(repo, revision=fx["tag"])
    check(tagged.sha == fx["first"], f"model_info(revision=tag).sha = {tagged.sha!r}")

    # Gated repos show their info to anyone, as on huggingface.co.
    gated = api.model_info(fx["gated_repo"], token=False)
    check(gated.gated == "auto", f"gated model_info.gated = {gated.gated!r}")


def check_tree(fx):
    api = HfApi()
    repo = fx["repo"]
    entries = list(api.list_repo_tree(repo, recursive=True))
    files = {e.path: e for e in entries if isinstance(e, RepoFile)}
    folders = {e.path for e in entries if isinstance(e, RepoFolder)}
    expected = {f["path"]: f for f in fx["files_head"]}
    check(len(entries) == len(files) + len(folders), "tree has entries that are neither file nor folder")
    check(set(files) == set(expected), f"tree files {sorted(files)} != {sorted(expected)}")
    check(folders == set(fx["folders"]), f"tree folders {sorted(folders)} != {sorted(fx['folders'])}")
    for path, f in expected.items():
        e = files.get(path)
        if e is None:
            continue
        check(e.size == f["size"], f"tree {path}: size {e.size} != {f['size']}")
        check(e.blob_id == f["blob_id"], f"tree {path}: blob_id {e.blob_id} != {f['blob_id']}")
        if f["lfs"]:
            ok = e.lfs is not None and e.lfs.sha256 == f["sha256"] and e.lfs.size == f["size"]
            check(ok, f"tree {path}: lfs {e.lfs!r}, expected sha256 {f['sha256']}")
        else:
            check(e.lfs is None, f"tree {path}: git file has lfs {e.lfs!r}")

    top = {e.path for e in api.list_repo_tree(repo)}
    want_top = {p for p in list(expected) + fx["folders"] if "/" not in p}
    check(top == want_top, f"non-recursive root {sorted(top)} != {sorted(want_top)}")

    deep = fx["deep_file"]
    folder = deep.rsplit("/", 1)[0]
    inside = [e.path for e in api.list_repo_tree(repo, path_in_repo=folder)]
    check(inside == [deep], f"tree of {folder!r} = {inside!r}")

    at_first = {e.path for e in api.list_repo_tree(repo, recursive=True, revision=fx["first"])
                if isinstance(e, RepoFile)}
    want_first = {f["path"] for f in fx["files_first"]}
    check(at_first == want_first, f"tree at first commit {sorted(at_first)} != {sorted(want_first)}")


def check_errors(fx):
    repo = fx["repo"]
    any_file = fx["files_head"][0]["path"]
    for token_name, token in (("with token", None), ("without token", False)):
        expect_error(f"unknown repo {token_name}", RepositoryNotFoundError,
                     lambda: hf_hub_download("fidelity-org/no-such-repo", "config.json", token=token),
                     not_types=(GatedRepoError,))
    expect_error("unknown file", RemoteEntryNotFoundError,
                 lambda: hf_hub_download(repo, "no/such/file.bin"))
    expect_error("unknown revision", RevisionNotFoundError,
                 lambda: hf_hub_download(repo, any_file, revision="no-such-branch"))
    expect_error("unknown commit", RevisionNotFoundError,
                 lambda: hf_hub_download(repo, any_file, revision="0" * 40))
    expect_error("gated repo without token", GatedRepoError,
                 lambda: hf_hub_download(fx["gated_repo"], fx["gated_file"]["path"], token=False))
    expect_error("private repo without token", RepositoryNotFoundError,
                 lambda: hf_hub_download(fx["private_repo"], fx["private_file"]["path"], token=False),
                 not_types=(GatedRepoError,))
    # A fresh cache: with the file cached, hf_hub_download would serve it after the 401.
    fresh_cache = tempfile.mkdtemp(prefix="fidelity-")
    bad = expect_error("invalid token", HfHubHTTPError,
                       lambda: hf_hub_download(repo, any_file, token="hf_not_a_valid_token",
                                               cache_dir=fresh_cache),
                       not_types=(RepositoryNotFoundError,))
    if bad is not None and getattr(bad, "response", None) is not None:
        check(bad.response.status_code == 401, f"invalid token: status {bad.response.status_code}")
    expect_error("model_info of unknown revision", RevisionNotFoundError,
                 lambda: HfApi().model_info(repo, revision="no-such-branch"))
    expect_error("model_info of private repo without token", RepositoryNotFoundError,
                 lambda: HfApi().model_info(fx["private_repo"], token=False))

    # With the token, gated and private repos serve their files.
    for key in ("gated", "private"):
        f = fx[f"{key}_file"]
        try:
            path = hf_hub_download(fx[f"{key}_repo"], f["path"])
            check(sha256_of(path) == f["sha256"], f"{key} repo with token: sha256 differs")
        except Exception:  # noqa: BLE001
            check(False, f"{key} repo with token raised:\n{traceback.format_exc()}")


def main():
    with open(sys.argv[1]) as f:
        fx = json.load(f)
    print(f"huggingface_hub {huggingface_hub.__version__}", flush=True)
    for step in (check_downloads, check_model_info, check_tree, check_errors):
        try:
            step(fx)
        except Exception:  # noqa: BLE001
            check(False, f"{step.__name__} raised:\n{traceback.format_exc()}")
        print(f"{step.__name__}: done, {len(FAILURES)} failure(s) so far", flush=True)
    print(f"{CHECKS} checks, {len(FAILURES)} failed", flush=True)
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
