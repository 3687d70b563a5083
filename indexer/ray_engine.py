"""The embedding job on Ray Data (``pixdex index --engine ray``): same scan, same store, many machines.

The driver scans the sources and plans the work exactly as the local engine does; Ray Data then
reads and decodes items in CPU tasks (the local engine's ``prepare``), embeds them in a pool of
actors that each load the model once (``map_batches`` with a callable class, GPUs per actor as
asked), and streams the embeddings back in input order. The driver commits them shard by shard
through the same StoreWriter, so a stopped job resumes from its last commit and the store is the
local engine's format, with byte-for-byte the same embeddings on CPU when batches line up (within
one float16 step when failed images shift them). Ray retries a task or actor
that dies (``max_restarts``/``max_task_retries``).
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np

from indexer.encoder import Encoder
from indexer.errors import PixdexError
from indexer.items import SourceItem
from indexer.prepare import DecodeSetup, Prepared, init_worker, prepare

DECODE_BATCH = 16  # items per decode task call
CRASH_ONCE_ENV = "PIXDEX_RAY_CRASH_ONCE"  # tests: a file path; the first embedding actor to see it dies once


def init_ray(address: str | None = None, num_cpus: int | None = None):
    """Connect to the cluster at `address` (or RAY_ADDRESS), else start a local one;
    returns the ray module."""
    try:
        import ray
        import ray.data  # the distributed extra installs ray[data]
    except ImportError:
        raise PixdexError("--engine ray needs Ray Data: pip install 'pixdex[distributed]'") from None
    if not ray.is_initialized():
        kw = {"address": address} if address else {"num_cpus": num_cpus or os.cpu_count() or 1}
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kw)
    return ray


# ---- tasks and actors -------------------------------------------------------------------------
def decode_batch(batch: dict, setup: DecodeSetup) -> dict:
    """Ray task: read, hash, decode and resize a batch of items with the local engine's prepare()."""
    init_worker(setup)  # cheap: the processor's resize plan and the decoder limits
    preps = [prepare(pickle.loads(blob)) for blob in batch["item"]]
    return pack(batch["pos"], preps)


def pack(pos: np.ndarray, preps: list[Prepared]) -> dict:
    """Prepared items as fixed-shape columns (pixels zero where there are none) for Ray's block format."""
    shape, dtype, key = None, np.uint8, ""
    for p in preps:
        if p.pixels is not None:
            key, arr = next(iter(p.pixels.items()))
            shape, dtype = arr.shape[1:], arr.dtype
            break
    px = np.zeros((len(preps), *(shape or (1,))), dtype)
    for i, p in enumerate(preps):
        if p.pixels is not None:
            px[i] = p.pixels[key][0]
    info = [replace(p, pixels=None) for p in preps]
    return {"pos": np.asarray(pos, np.int64), "has_px": np.array([p.pixels is not None for p in preps]),
            "px": px, "px_key": np.array([key] * len(preps)),
            "info": np.array([pickle.dumps(i) for i in info], dtype=object)}


class Embedder:
    """Ray actor: loads the model once, embeds the batches' pixels on its device (CPU or its GPU)."""

    def __init__(self, model: str, device: str = "auto", crash_marker: str | None = None, threads: int = 1):
        import torch

        self.crash_marker = crash_marker
        if device in ("auto", "cpu") and not torch.cuda.is_available():
            # the local engine's intra-op thread count: CPU matmuls sum in a thread-dependent order, and
            # matching it keeps the embeddings byte-for-byte the local engine's
            torch.set_num_threads(threads)
        self.encoder = Encoder(model, device=device)

    def __call__(self, batch: dict) -> dict:
        if self.crash_marker and not os.path.exists(self.crash_marker):
            open(self.crash_marker, "w").close()
            os._exit(1)  # a worker dying mid-batch: Ray restarts the actor and retries the batch
        has = np.asarray(batch["has_px"], bool)
        emb = np.zeros((len(has), self.encoder.dim), np.float32)
        if has.any():
            emb[has] = self.encoder.embed_pixels({str(batch["px_key"][has][0]): batch["px"][has]})
        return {"pos": batch["pos"], "has_px": has, "info": batch["info"], "embedding": emb}


# ---- the stream the job consumes ---------------------------------------------------------------
def ray_prepared_stream(items: list[SourceItem], encoder: Encoder, setup: DecodeSetup, batch_size: int,
                        workers: int | None = None, gpus_per_worker: float = 0.0,
                        address: str | None = None, device: str = "auto",
                        log: Callable[[str], None] = print) -> Iterator[tuple[SourceItem, Prepared]]:
    """Yield (item, prepared) in input order, with each prepared item's embedding computed
    by the actor pool."""
    if not items:
        return
    ray = init_ray(address)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if workers is None:  # one actor per GPU; on CPU half the cores embed and half decode
        workers = max(1, int(gpus // gpus_per_worker)) if gpus_per_worker > 0 and gpus else max(1, cpus // 2)
    actor_cpus = 1 if cpus > workers else max(0.25, cpus / (2 * workers))  # never starve the decode tasks
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the store's ids follow the scan order, as locally
    ctx.enable_progress_bars = False  # the job's own tqdm bar shows progress
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    records = [{"pos": i, "item": pickle.dumps(item)} for i, item in enumerate(items)]
    blocks = max(1, min(len(records) // DECODE_BATCH, 4 * cpus, 2000))
    actor_device = "cuda" if gpus_per_worker > 0 else ("cpu" if device == "auto" else device)
    log(f"pixdex index: ray engine: {len(items)} items, {workers} embedding actor(s) on {actor_device}, "
        f"{cpus} CPUs / {gpus} GPUs in the cluster")
    import torch

    ds = ray.data.from_items(records, override_num_blocks=blocks)
    # Ray retries tasks whose worker dies, and restarts actors and retries their batches (Ray Data's
    # defaults for actor pools: max_restarts=-1, max_task_retries=-1)
    ds = ds.map_batches(decode_batch, batch_size=DECODE_BATCH, fn_kwargs={"setup": setup}, num_cpus=0.5)
    ds = ds.map_batches(Embedder, batch_size=batch_size,
                        fn_constructor_args=(encoder.name, actor_device, os.environ.get(CRASH_ONCE_ENV),
                                             torch.get_num_threads()),
                        compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=actor_cpus,
                        num_gpus=gpus_per_worker or None)
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2):
        for pos, has, info, emb in zip(batch["pos"], batch["has_px"], batch["info"], batch["embedding"]):
            prep = pickle.loads(info)
            if has:
                prep.embedding = emb
            yield items[int(pos)], prep


def ray_runner(fn: Callable[[tuple], dict], jobs: list[tuple], workers: int) -> list[dict]:
    """Run sharded-index part builds as Ray tasks (one CPU each), in order."""
    import ray

    remote = ray.remote(num_cpus=1, max_retries=3)(fn)  # a part whose worker dies is rebuilt
    return ray.get([remote.remote(j) for j in jobs])
