"""The embedding job: sources -> safe decode (worker processes) -> encoder -> store -> FAISS index.

Incremental like rclip: unchanged files (size+mtime) are skipped, changed ones re-encoded, renamed or
copied ones (same content hash) reuse their stored embedding, deleted ones are removed.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm.auto import tqdm

from indexer.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_bytes, read_file
from indexer.encoder import Encoder
from indexer.index_build import update_index
from indexer.models import DEFAULT_MODEL
from indexer.sources import SourceItem, iter_sources
from indexer.store import StoreWriter

CHUNK = 8  # items per worker task


@dataclass
class IndexSummary:
    """What a job did, as the closing line and `--json` report it."""

    indexed: int = 0  # newly encoded
    unchanged: int = 0
    updated: int = 0  # changed files re-encoded (or re-linked)
    reused: int = 0  # new paths whose content was already stored (renames, copies): no encoding
    removed: int = 0
    failed: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0
    count: int = 0  # items in the store afterwards
    index: dict = field(default_factory=dict)
    store: str = ""

    def line(self) -> str:
        return (
            f"indexed {self.indexed}, unchanged {self.unchanged}, updated {self.updated}, reused {self.reused}, "
            f"removed {self.removed}, failed {self.failed} in {self.seconds:.1f} s "
            f"({self.images_per_second:.1f} images/s); store has {self.count} items"
        )

    def to_dict(self) -> dict:
        return asdict(self)


# ---- worker side ------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(image_processor, max_pixels: int | None, draft: int) -> None:
    _WORKER.update(processor=image_processor, max_pixels=max_pixels, draft=draft)
    try:  # decoding workers must not fight the model for cores
        import torch

        torch.set_num_threads(1)
    except Exception:
        pass


def prepare(item: SourceItem) -> dict:
    """Read, hash, decode and preprocess one item; {'error': reason} when it cannot be used."""
    try:
        data = item.data if item.data is not None else read_file(item.key)
        digest = hashlib.sha256(data).hexdigest()
        decoded = decode_bytes(data, _WORKER["max_pixels"], _WORKER["draft"])
        pixels = dict(_WORKER["processor"](images=[decoded.image], return_tensors="np"))
    except DecodeError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # a decoder bug must not stop the job
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    return {"sha256": digest, "bytes": len(data), "width": decoded.width, "height": decoded.height,
            "pixels": pixels}


def _prepare_chunk(items: list[SourceItem]) -> list[dict]:
    return [prepare(i) for i in items]


def prepared_stream(items: list[SourceItem], workers: int, encoder: Encoder, max_pixels: int | None,
                    inflight_items: int):
    """Yield (item, prepared) in order, decoding in worker processes with bounded items in flight."""
    init = (encoder.image_processor, max_pixels, encoder.image_size)
    chunks = [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]
    if workers <= 0 or len(items) < 2 * CHUNK:
        _init_worker(*init)
        for chunk in chunks:
            yield from zip(chunk, _prepare_chunk(chunk))
        return
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=init) as pool:
        pending: deque = deque()
        it = iter(chunks)
        max_chunks = max(2, inflight_items // CHUNK)
        for chunk in it:
            pending.append((chunk, pool.apply_async(_prepare_chunk, (chunk,))))
            if len(pending) >= max_chunks:
                break
        while pending:
            chunk, res = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.apply_async(_prepare_chunk, (nxt,))))
            yield from zip(chunk, res.get())


def stack_pixels(batch: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([b[k] for b in batch]) for k in batch[0]}


# ---- the job ----------------------------------------------------------------------------------
def default_workers(encoder: Encoder) -> int:
    cores = os.cpu_count() or 1
    return max(1, min(16, cores - 1 if encoder.device.type == "cpu" else cores))


def index_collection(
    sources: list[str],
    store: str | os.PathLike,
    model: str | Encoder = DEFAULT_MODEL,
    device: str = "auto",
    batch_size: int = 64,
    workers: int | None = None,
    index: str = "auto",
    max_index_memory: int | None = None,
    include_hidden: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    shard_rows: int = 4096,
    progress: bool = True,
    log=None,
) -> IndexSummary:
    """Index `sources` into `store` (created if missing) and bring its FAISS index up to date."""
    log = log or (lambda m: tqdm.write(m, file=sys.stderr))
    t0 = time.perf_counter()
    encoder = model if isinstance(model, Encoder) else Encoder(model, device=device)
    summary = IndexSummary(store=str(store))
    with StoreWriter(store, encoder.info, shard_rows=shard_rows) as writer:
        snap = writer.snapshot()
        meta = snap.metadata()
        by_path = {p: (i, s, m, h) for i, p, s, m, h in zip(
            meta["id"].to_pylist(), meta["path"].to_pylist(), meta["bytes"].to_pylist(),
            meta["mtime"].to_pylist(), meta["sha256"].to_pylist())}
        by_hash = {h: i for i, _, _, h in by_path.values()}

        items = list(iter_sources([str(s) for s in sources], include_hidden, warn=log))
        roots = {i.root for i in items} | {os.path.abspath(s) for s in sources if os.path.exists(s)}
        seen, work, old_ids = set(), [], {}
        for item in items:
            seen.add(item.key)
            old = by_path.get(item.key)
            if old is not None and item.size < 0:
                seen.discard(item.key)  # listed but gone: removed below
                continue
            if old is None:
                work.append(item)
            elif old[1] == item.size and old[2] == item.mtime:
                summary.unchanged += 1
            else:
                old_ids[item.key] = old
                work.append(item)

        gone = [v[0] for p, v in by_path.items() if p not in seen and _under(p, roots)]
        workers = default_workers(encoder) if workers is None else workers
        bar = tqdm(total=len(work), unit="img", desc="indexing", disable=not progress, file=sys.stderr,
                   dynamic_ncols=True)
        queue: list[tuple[dict, dict | None, np.ndarray | None]] = []  # (row, pixels, reused vector)
        t_enc = time.perf_counter()

        def flush() -> None:
            to_encode = [p for _, p, _ in queue if p is not None]
            emb = encoder.embed_pixels(stack_pixels(to_encode)) if to_encode else None
            vectors, k = [], 0
            for _, p, vec in queue:
                if p is not None:
                    vectors.append(emb[k])
                    k += 1
                else:
                    vectors.append(vec)
            writer.append([r for r, _, _ in queue], np.stack(vectors))
            bar.update(len(queue))
            queue.clear()

        for item, prep in prepared_stream(work, workers, encoder, max_pixels, inflight_items=4 * batch_size):
            old = old_ids.get(item.key)
            if "error" in prep:
                summary.failed += 1
                writer.record_error(item.key, prep["error"], item.size, item.mtime)
                log(f"pixdex index: skipped {item.key}: {prep['error']}")
                bar.update(1)
                continue
            row = {"path": item.key, "bytes": prep["bytes"], "mtime": item.mtime, "width": prep["width"],
                   "height": prep["height"], "sha256": prep["sha256"], **item.extra}
            if old is not None and old[3] == prep["sha256"]:
                summary.unchanged += 1  # touched, same content: keep the stored row
                writer.forget_errors([item.key])
                bar.update(1)
                continue
            if old is not None:
                writer.delete([old[0]])
                summary.updated += 1
            reuse = by_hash.get(prep["sha256"])
            if reuse is not None:
                queue.append((row, None, snap.vectors([reuse])[0]))
                summary.reused += old is None
            else:
                queue.append((row, prep["pixels"], None))
                summary.indexed += old is None
            if sum(p is not None for _, p, _ in queue) >= batch_size or len(queue) >= 4 * batch_size:
                flush()
        if queue:
            flush()
        bar.close()
        encoded = summary.indexed + summary.updated + summary.reused
        enc_seconds = time.perf_counter() - t_enc
        writer.delete(gone)
        summary.removed = len(gone)
        writer.commit()
        summary.index = update_index(writer, index, max_index_memory, log=log)
        writer.commit()
        summary.count = writer.snapshot().count
    summary.seconds = round(time.perf_counter() - t0, 3)
    summary.images_per_second = round(encoded / enc_seconds, 2) if encoded and enc_seconds > 0 else 0.0
    return summary


def _under(path: str, roots: set[str]) -> bool:
    """True when a stored path belongs to one of the scanned sources (so its absence means removal)."""
    return any(path == r or path.startswith(r.rstrip("/") + "/") or path.startswith(r + "#") for r in roots)
