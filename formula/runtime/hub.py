"""Hub models as a careful user fetches them: a revision resolved to a commit, only the files the
model needs, offline from the Hugging Face cache, and weights shared with that cache.

Everything goes through huggingface_hub (its endpoint, token, cache and `HF_HUB_OFFLINE`
settings apply): `HfApi.model_info` resolves a revision and lists the files with their sizes,
`hf_hub_download` fetches one file at a pinned commit into the cache, or finds it there with no
network at all when the commit is cached.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from formula.contract import hublock


class HubError(Exception):
    """What went wrong fetching or resolving, said for the user."""


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def resolve(repo: str, revision: str) -> tuple[hublock.Pin, bool]:
    """The commit a revision names now, with the files a model needs there (sizes and LFS
    sha256 from the hub's metadata: one API call, no file is downloaded), and whether its
    weights are pickle files only. Offline, from the Hugging Face cache."""
    if offline():
        return _resolve_cached(repo, revision)
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        # resolve_revision also records the commit in the cache's refs, for offline use later; it
        # falls back on those refs when the hub is down, but the listing at that commit does not.
        commit = api.resolve_revision(repo, revision=revision).resolved
        info = api.model_info(repo, revision=commit, files_metadata=True)
    except Exception as exc:  # network, auth, a missing repository or revision: the user's to fix
        raise HubError(f"cannot resolve {repo}@{revision} on the hub: {_reason(exc)}") from None
    siblings = {s.rfilename: s for s in info.siblings or []}
    names, pickle = hublock.needed_files(list(siblings))
    files = tuple(hublock.LockedFile(n, siblings[n].size, _sha256(siblings[n])) for n in names)
    return hublock.Pin(repo, revision, commit, files), pickle


def _sha256(sibling) -> str | None:
    lfs = sibling.lfs
    return lfs.sha256 if lfs is not None else None


def _resolve_cached(repo: str, revision: str) -> tuple[hublock.Pin, bool]:
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RevisionResolutionError
    from huggingface_hub.file_download import repo_folder_name

    try:
        commit = HfApi().resolve_revision(repo, revision=revision, local_files_only=True).resolved
    except RevisionResolutionError:  # no ref of that name in the cache
        raise HubError(f"{repo}@{revision} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                       "HF_HUB_OFFLINE is set: fetch it once with the network") from None
    snapshot = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model") / "snapshots" / commit
    names, pickle = hublock.needed_files([p.relative_to(snapshot).as_posix()
                                          for p in snapshot.rglob("*") if p.is_file()])
    if not names:
        raise HubError(f"{repo}@{revision} ({commit}) has no files in the Hugging Face cache and "
                       "HF_HUB_OFFLINE is set: fetch it once with the network")
    files = tuple(hublock.LockedFile(n, (snapshot / n).stat().st_size) for n in names)
    return hublock.Pin(repo, revision, commit, files), pickle


def fetch(repo: str, commit: str, names: list[str] | tuple[str, ...]) -> Path:
    """The snapshot folder of a commit in the Hugging Face cache, holding at least these files:
    each downloaded unless cached (offline: only from the cache)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    snapshot = None
    for name in names:
        try:
            snapshot = Path(hf_hub_download(repo, name, revision=commit)).parent
        except LocalEntryNotFoundError:
            raise HubError(f"{repo} at {commit}: {name} is not in the Hugging Face cache and the hub "
                           "cannot be reached (HF_HUB_OFFLINE or no network): build once with the network, or "
                           f"`hf download {repo} --revision {commit}`") from None
        except Exception as exc:  # network, auth, a file gone from the hub
            raise HubError(f"cannot fetch {name} of {repo} at {commit}: {_reason(exc)}") from None
    if snapshot is None:
        raise HubError(f"{repo} at {commit}: no files to fetch")
    return snapshot


def verify(repo: str, commit: str, snapshot: Path, sha256sums: tuple[str, ...] | list[str]) -> None:
    """The fetched files against the lock's sha256 (huggingface_hub checks no bytes it
    downloads): a truncated or corrupted download, or a cache file changed since, is refused
    before anything is built from it."""
    import hashlib

    for line in sha256sums:
        want, name = line.split("  ", 1)
        path = snapshot / name
        if not path.is_file():
            continue  # not fetched (a tokenizer-only model's weights)
        with open(path, "rb") as fh:
            got = hashlib.file_digest(fh, "sha256").hexdigest()
        if got != want:
            blob = os.path.realpath(path)
            raise HubError(f"{name} of {repo} at {commit} has sha256 {got}, but the lock file pins {want}: "
                           f"the download is damaged or the cached file ({blob}) was changed. Delete that file "
                           f"(or `hf cache delete`) and build again, which downloads it anew")


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


@dataclass
class Shared:
    """How a folder's files got into an output: bytes linked, cloned and copied."""

    linked: int = 0
    cloned: int = 0
    copied: int = 0

    def describe(self) -> str:
        parts = [f"{_gb(n)} {what}" for n, what in ((self.linked, "hardlinked to the Hugging Face cache"),
                                                    (self.cloned, "cloned (reflink)"),
                                                    (self.copied, "copied")) if n]
        return ", ".join(parts) or "nothing"


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def share(src: Path, dst: Path, shared: Shared) -> None:
    """Put a file of the Hugging Face cache into a step's output without a second copy on disk:
    a hardlink where both are on one filesystem, else a reflink (copy-on-write clone) where the
    filesystem has them, else a copy. Weights only: the step writes other files it keeps.

    Why a hardlink cannot change a stored object unnoticed:
    - huggingface_hub never writes a cache blob in place: it downloads to `<blob>.incomplete`
      and renames that onto the blob's name, and blobs are named by their hash, so the inode the
      store holds is never rewritten by it. Deleting the cache (`hf cache delete`) removes its
      name only; the store's link keeps the data, so the disk then holds one copy, in the store.
    - Anything else that rewrites the file through the cache's path changes its mtime, and the
      store's seal (formula/runtime/hashing.py) is size, mtime and inode: the object is rehashed
      before it is used, found changed, quarantined and rebuilt; `formula verify` rehashes all.
    - The file is made read-only (mode only: no timestamp the seal reads changes), so a careless
      writer on either side gets a permission error instead of changing both.
    A reflink or a copy is a file of its own: nothing is shared that can change."""
    real = os.path.realpath(src)
    size = os.path.getsize(real)
    try:
        os.link(real, dst)
        os.chmod(dst, 0o444)
        shared.linked += size
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP):
            raise
    if _reflink(real, dst):
        shared.cloned += size
        return
    shutil.copyfile(real, dst)
    shared.copied += size


def _reflink(src: str, dst: Path) -> bool:
    """A copy-on-write clone (Linux FICLONE: btrfs, XFS, bcachefs); False where unsupported."""
    try:
        import fcntl
    except ImportError:
        return False
    ficlone = 0x40049409
    try:
        with open(src, "rb") as s, open(dst, "wb") as d:
            fcntl.ioctl(d.fileno(), ficlone, s.fileno())
        return True
    except OSError:
        dst.unlink(missing_ok=True)
        return False
