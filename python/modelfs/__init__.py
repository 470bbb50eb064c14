"""HuggingFace Hub model repos from the modelfs store, without a mount.

The same store, Hub client and fetcher as the modelfs daemon (doc/LIBRARY.md): what this
package fetches a mount of the same store serves, and the other way round.

    import modelfs
    cache = modelfs.ModelCache()                      # defaults as the modelfs CLI's
    m = cache.scan_repo("org/name")                   # .repo .commit .files .quants
    cache.download_quant("org/name", "q4f16", progress=lambda loaded, total: ...)
    data = cache.get_file("org/name", "onnx/model_q4f16.onnx")   # bytes
    with cache.open_file("org/name", "model.safetensors") as f:  # binary file object
        header = f.read(8)
    cache.get_manifest("org/name").quants["q4f16"].status        # "downloaded", ...

Errors are Python's own: FileNotFoundError (no such repo, revision, quant or file),
PermissionError (gated or private without a valid token), OSError (the Hub does not answer,
a file failed its checks), ValueError (a repo id or argument that cannot be right). Calls
release the GIL while they wait on the network or the disk.
"""

import io
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Union

from ._native import NativeCache, NativeFile, __version__

__all__ = [
    "ModelCache",
    "ModelFile",
    "Manifest",
    "RepoFile",
    "Quant",
    "ManifestStatus",
    "QuantState",
    "DownloadReport",
    "__version__",
]


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    #: The LFS sha256 in hex; None for a file stored in git.
    sha256: Optional[str]


@dataclass(frozen=True)
class Quant:
    name: str
    #: Repo paths of its files: its own and every shared one, as the mount lists them.
    files: List[str]
    total_bytes: int


@dataclass(frozen=True)
class Manifest:
    repo: str
    commit: str
    pipeline_tag: Optional[str]
    files: List[RepoFile]
    #: Every quant view by the name the mount shows, and "all".
    quants: Dict[str, Quant]


@dataclass(frozen=True)
class QuantState:
    #: "available", "partial", "downloading", "downloaded" or "failed".
    status: str
    cached_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class ManifestStatus:
    repo: str
    commit: str
    quants: Dict[str, QuantState]


@dataclass(frozen=True)
class DownloadReport:
    commit: str
    files: int
    total_bytes: int
    #: Bytes of the selected files that were stored before the download.
    already_bytes: int
    #: Bytes this download fetched.
    fetched_bytes: int


class ModelFile(io.RawIOBase):
    """A file of a repo at one commit, fetched as it is read (with read-ahead)."""

    def __init__(self, native: NativeFile, name: str):
        super().__init__()
        self._native = native
        self.name = name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: Optional[int] = -1) -> bytes:
        self._checkClosed()
        return self._native.read(-1 if size is None else size)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        data = self._native.read(len(view))
        view[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        return self._native.seek(offset, whence)

    def tell(self) -> int:
        self._checkClosed()
        return self._native.tell()

    @property
    def size(self) -> int:
        return self._native.size()

    def close(self) -> None:
        if not self.closed:
            self._native.close()
        super().close()


class ModelCache:
    """The modelfs store, with the Hub behind it.

    Every argument defaults as the modelfs CLI's: `store` to $MODELFS_STORE, the config
    file's, the running mount's, or ~/.cache/modelfs; `endpoint` to $HF_ENDPOINT or
    https://huggingface.co; `token` to HF_TOKEN, HF_TOKEN_PATH or $HF_HOME/token; `offline`
    to HF_HUB_OFFLINE; `tier` to the config file's.
    """

    def __init__(
        self,
        store: Union[str, "os.PathLike[str]", None] = None,
        endpoint: Optional[str] = None,
        token: Optional[str] = None,
        offline: bool = False,
        tier: Optional[str] = None,
        max_connections: int = 16,
        read_timeout: float = 60.0,
        chunk_size: Optional[int] = None,
    ):
        self._native = NativeCache(
            store=None if store is None else os.fspath(store),
            endpoint=endpoint,
            token=token,
            offline=offline,
            tier=tier,
            max_connections=max_connections,
            read_timeout=read_timeout,
            chunk_size=chunk_size,
        )

    @property
    def store(self) -> Optional[str]:
        return self._native.store_dir()

    def scan_repo(self, repo: str) -> Manifest:
        """What `repo` ("org/name" or "org/name@rev") holds at the commit it resolves to."""
        name, commit, tag, files, quants = self._native.scan_repo(repo)
        return Manifest(
            repo=name,
            commit=commit,
            pipeline_tag=tag,
            files=[RepoFile(path=p, size=s, sha256=h) for p, s, h in files],
            quants={q: Quant(name=q, files=f, total_bytes=t) for q, (f, t) in quants.items()},
        )

    def download_quant(
        self,
        repo: str,
        quant: str,
        progress: Optional[Callable[[int, int], object]] = None,
    ) -> DownloadReport:
        """Fetch every file of the quant view ("all": the whole repo) the store lacks.

        `progress(loaded, total)` is called as bytes land, from another thread; if it
        raises, the download stops cleanly (what is stored stays stored) and the exception
        propagates from here.
        """
        commit, files, total, already, fetched = self._native.download_quant(repo, quant, progress)
        return DownloadReport(commit, files, total, already, fetched)

    def get_file(self, repo: str, path: str) -> bytes:
        """The whole file, fetching what the store lacks."""
        return self._native.get_file(repo, path)

    def open_file(self, repo: str, path: str) -> ModelFile:
        """The file as a binary file object that fetches what is read."""
        return ModelFile(self._native.open_file(repo, path), f"{repo}/{path}")

    def get_manifest(self, repo: str) -> ManifestStatus:
        """Every view of `repo` with what the store holds of it."""
        name, commit, quants = self._native.get_manifest(repo)
        return ManifestStatus(
            repo=name,
            commit=commit,
            quants={q: QuantState(s, c, t) for q, (s, c, t) in quants.items()},
        )
