"""Stores on object storage (s3://, gs://, any fsspec URL): a local working copy, synced manifest-last.

Object stores have no atomic rename and no file lock, which the store's crash safety relies on, so
a job works on a local copy (under ``PIXDEX_CACHE`` or ~/.cache/pixdex/stores) and publishes it
when it finishes: every file the manifest names is uploaded first (store files are write-once, so
a name that is already there with the same size is skipped), the manifest last, then files the new
manifest no longer names are deleted. A reader of the URL sees the old manifest or the new one,
never a half-written store. Readers pull the same way (only files they do not have yet).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from indexer.errors import PixdexError
from indexer.remote import is_url, local_path
from indexer.store_format import MANIFEST, referenced_files


def is_remote_store(store: str | os.PathLike) -> bool:
    return is_url(str(store)) and not str(store).startswith("file://")


def cache_base() -> Path:
    """pixdex's per-user cache folder: PIXDEX_CACHE, else ~/.cache/pixdex."""
    return Path(os.environ.get("PIXDEX_CACHE", Path.home() / ".cache" / "pixdex")).expanduser()


def cache_dir(url: str) -> Path:
    """The local working copy of a remote store (one per URL)."""
    return cache_base() / "stores" / hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16]


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url.rstrip("/"))


def pull(url: str, local: Path) -> bool:
    """Bring the local copy up to the remote store's manifest; False when the URL holds no store yet."""
    fs, root = _fs(url)
    remote_manifest = f"{root}/{MANIFEST}"
    try:
        if not fs.exists(remote_manifest):
            return False
        manifest = json.loads(fs.cat_file(remote_manifest))
    except Exception as exc:  # backend errors become one line naming the store
        raise PixdexError(f"store {url}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    mine = local / MANIFEST
    if mine.is_file() and json.loads(mine.read_text()).get("generation", -1) >= manifest.get("generation", 0):
        return True  # the local copy is as new (or newer: a job that has not published yet)
    for rel in sorted(referenced_files(manifest)):
        target = local / rel
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{root}/{rel}", str(target) + ".part")
            os.replace(str(target) + ".part", target)
    (local / ".tmp-manifest").write_bytes(json.dumps(manifest).encode())
    os.replace(local / ".tmp-manifest", mine)
    return True


def push(local: Path, url: str) -> None:
    """Publish the local copy: named files first (skipping ones already there), manifest last, then sweep."""
    fs, root = _fs(url)
    manifest = json.loads((local / MANIFEST).read_text())
    names = sorted(referenced_files(manifest))
    for rel in names:
        remote = f"{root}/{rel}"
        size = (local / rel).stat().st_size
        if fs.exists(remote) and fs.size(remote) == size:
            continue  # store files are write-once: same name and size is the same file
        fs.makedirs(os.path.dirname(remote), exist_ok=True)
        fs.put_file(str(local / rel), remote)
    fs.put_file(str(local / MANIFEST), f"{root}/{MANIFEST}")
    keep = {f"{root}/{rel}".lstrip("/") for rel in [*names, MANIFEST]}
    for path in fs.find(root):
        if path.lstrip("/") not in keep:
            fs.rm_file(path)


@contextlib.contextmanager
def local_store(store: str | os.PathLike, publish: bool = False) -> Iterator[Path]:
    """A local path for `store`: itself when local (or file://), else a synced working copy.

    With publish=True the copy is pushed back when the block ends without an error.
    """
    text = str(store)
    if not is_remote_store(text):
        yield Path(local_path(text)).expanduser()
        return
    local = cache_dir(text)
    local.mkdir(parents=True, exist_ok=True)
    pull(text, local)
    yield local
    if publish and (local / MANIFEST).is_file():
        push(local, text)


def open_path(store: str | os.PathLike) -> Path:
    """The local path to open a store from (a remote store is pulled first)."""
    with local_store(store) as path:
        return path
