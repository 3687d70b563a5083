"""The decode stage both engines share: read, hash, decode and resize one item in a worker process.

The local engine runs it in a process pool (``indexer.job``), the Ray engine in Ray tasks
(``indexer.ray_engine``); both hand the encoder the same ``Prepared`` records.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from indexer.decode import DecodeError, decode_bytes, read_file
from indexer.exif import PhotoMeta, photo_meta_from_bytes
from indexer.items import SourceItem
from indexer.pixels import UINT8_KEY, plan_for, resize_crop
from indexer.sources import item_bytes

CHUNK = 8  # items per worker task


@dataclass
class DecodeSetup:
    """What a decoding worker needs: the model's image processor and the decoder's limits."""

    image_processor: object
    max_pixels: int | None
    draft: int  # JPEG draft decoding keeps images at least this large
    skip_hashes: frozenset[str] = frozenset()  # content already stored under a gone path: hash only


@dataclass
class Prepared:
    """One item after the decode stage: its content hash and size, and its pixels or why it failed."""

    sha256: str | None = None
    bytes: int = 0
    width: int | None = None  # None when only hashed (a rename) or failed
    height: int | None = None
    pixels: dict[str, np.ndarray] | None = None  # model input for one image (a batch of 1)
    error: str | None = None
    photo: PhotoMeta | None = None  # capture time, camera, place... read from the file's header
    embedding: np.ndarray | None = None  # filled in by the Ray engine's embedding actors


_WORKER: dict = {}


def setup_worker(setup: DecodeSetup) -> None:
    """What prepare() needs, in this process."""
    _WORKER.update(setup=setup, plan=plan_for(setup.image_processor))


def init_worker(setup: DecodeSetup) -> None:
    """Decoding worker process start-up: one torch thread, so workers do not fight the model for cores."""
    setup_worker(setup)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def prepare(item: SourceItem) -> Prepared:
    """Read, hash, decode and preprocess one item; Prepared(error=reason) when it cannot be used.

    Content already stored under a path that is gone (a rename) is only hashed, not decoded.
    """
    if item.error is not None:  # found while scanning: a dangling link, a loop, a FIFO, ...
        return Prepared(error=item.error)
    setup: DecodeSetup = _WORKER["setup"]
    try:
        data = item_bytes(item)
        data = data if data is not None else read_file(item.key)
        digest = hashlib.sha256(data).hexdigest()
        if digest in setup.skip_hashes:
            return Prepared(digest, len(data), photo=photo_meta_from_bytes(data))
        decoded = decode_bytes(data, setup.max_pixels, setup.draft)
        if _WORKER["plan"] is not None:  # resize+crop here as uint8; the encoder normalises on its device
            pixels = {UINT8_KEY: resize_crop(decoded.image, _WORKER["plan"])[None]}
        else:
            pixels = dict(setup.image_processor(images=[decoded.image], return_tensors="np"))
    except DecodeError as exc:
        return Prepared(error=str(exc))
    except Exception as exc:  # a decoder bug must not stop the job
        return Prepared(error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return Prepared(digest, len(data), decoded.width, decoded.height, pixels, photo=decoded.photo)


def _prepare_chunk(items: list[SourceItem]) -> list[Prepared]:
    return [prepare(i) for i in items]


def _with_bytes(chunk: list[SourceItem]) -> list[SourceItem]:
    """Dataset rows get their bytes attached just before decoding (so memory stays bounded)."""
    # tar/URL: in workers
    return [replace(i, data=item_bytes(i)) if i.dataset is not None else i for i in chunk]


def prepared_stream(items: list[SourceItem], workers: int, setup: DecodeSetup,
                    inflight_items: int) -> Iterator[tuple[SourceItem, Prepared]]:
    """Yield (item, prepared) in input order, decoding in worker processes with bounded items in flight."""
    chunks = [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
    if workers <= 0 or len(items) < 2 * CHUNK:
        setup_worker(setup)  # in this process: the model's threads stay as they are
        for chunk in chunks:
            yield from zip(chunk, _prepare_chunk(_with_bytes(chunk)))
        return
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(workers, initializer=init_worker, initargs=(setup,)) as pool:
        pending: deque = deque()
        it = iter(chunks)
        max_chunks = max(2, inflight_items // CHUNK)
        for chunk in it:
            pending.append((chunk, pool.apply_async(_prepare_chunk, (_with_bytes(chunk),))))
            if len(pending) >= max_chunks:
                break
        while pending:
            chunk, res = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.apply_async(_prepare_chunk, (_with_bytes(nxt),))))
            yield from zip(chunk, res.get())
