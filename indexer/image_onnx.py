"""The fast image-query path: query images through the model's vision tower as a cached ONNX graph.

Images are resized and cropped with PIL as the model's processor does (indexer.pixels, the indexer's own
fast path), and the graph (indexer.onnx_export) takes those uint8 pixels: rescale and normalisation, vision
model, projection and L2 normalisation. No torch import. Processors indexer.pixels cannot replay
(SigLIP2's NaFlex patches, ...) get no export, and their image queries keep transformers.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.inputs import ImageInput, image_file_of, load_image_input
from indexer.onnx_cache import fast_path_enabled, load_export, session
from indexer.pixels import PixelPlan, resize_crop


def plan_from(record: dict) -> PixelPlan:
    """A PixelPlan from its sidecar record (lists back to tuples)."""
    return PixelPlan(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()})


def pixels(images: Sequence, plan: PixelPlan) -> np.ndarray:
    """NHWC uint8 batch of RGB PIL images, resized and cropped like the model's processor."""
    return np.stack([resize_crop(img, plan) for img in images])


class OnnxImageEncoder:
    """Encodes query images with a checked export: float32, L2-normalised, one row per image."""

    def __init__(self, folder: Path, meta: dict):
        self.folder, self.meta = folder, meta
        self.dim = int(meta["dim"])
        self.fingerprint = meta["fingerprint"]
        self.plan = plan_from(meta["pixels"])
        self.session = session(folder / meta["graph"]["file"], threads=min(2, os.cpu_count() or 1))
        self.input = self.session.get_inputs()[0].name

    def encode_pil(self, images: Sequence, run_options: Any = None) -> np.ndarray:
        """Embeddings of RGB PIL images (run_options: onnxruntime's, to stop the run from another thread)."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        out = self.session.run(None, {self.input: pixels(images, self.plan)}, run_options)[0]
        return np.ascontiguousarray(out, dtype=np.float32)

    def encode_images(self, images: Sequence[ImageInput], batch_size: int = 16) -> np.ndarray:
        """Embeddings for paths, URLs, PIL images or bytes, like Encoder.encode_images (files encoded ahead,
        see encode_files_ahead, are taken from there)."""
        out = np.zeros((len(images), self.dim), np.float32)
        rest = []
        for i, item in enumerate(images):
            vector = _ahead_result(self.fingerprint, item)
            if vector is None:
                rest.append(i)
            else:
                out[i] = vector
        for start in range(0, len(rest), batch_size):
            rows = rest[start:start + batch_size]
            out[rows] = self.encode_pil([load_image_input(images[i]) for i in rows])
        return out


def load_image_encoder(fingerprint: str) -> tuple[OnnxImageEncoder | None, str]:
    """The fast image encoder for a model fingerprint (cached per process), or (None, why not)."""
    return load_export(fingerprint, "image", OnnxImageEncoder)


# ---- encoding query files ahead ---------------------------------------------------------------------
@dataclass
class _Ahead:
    """One query file being encoded on the background thread: its vector once done (None: it failed)."""

    key: tuple  # (fingerprint, realpath, size, mtime_ns) when its encoding started
    done: threading.Event = field(default_factory=threading.Event)
    vector: np.ndarray | None = None


@dataclass
class _Job:
    """One background thread's encodings ahead, and how to stop it (onnxruntime's RunOptions.terminate
    stops a run between two graph nodes)."""

    thread: threading.Thread | None = None
    stopped: threading.Event = field(default_factory=threading.Event)
    run_options: Any = None


_AHEAD: dict[tuple, _Ahead] = {}  # (fingerprint, realpath) -> its encoding ahead
_AHEAD_LOCK = threading.Lock()
_JOBS: list[_Job] = []  # stopped and waited for at exit


def _file_key(fingerprint: str, item) -> tuple | None:
    """What identifies a query file's content cheaply: its real path, size and mtime; None for non-files."""
    if not isinstance(item, (str, os.PathLike)):
        return None
    path = image_file_of(os.fspath(item))
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return fingerprint, os.path.realpath(path), st.st_size, st.st_mtime_ns


def encode_files_ahead(fingerprint: str, paths: Sequence[str]) -> None:
    """Start encoding query image files on a background thread, so that the vision tower runs while this
    process goes on importing and opening the store (onnxruntime leaves Python's lock while it computes).
    encode_images takes the results for files unchanged since; a file that fails here is encoded again
    there, and that reports why. Work nobody took (a query answered from a stored vector) is stopped at
    exit. For one-shot queries: a long-lived process has nothing to overlap."""
    keys = {key[:2]: _Ahead(key) for key in (_file_key(fingerprint, p) for p in paths) if key is not None}
    if not keys or not fast_path_enabled():
        return
    job = _Job()
    job.thread = threading.Thread(target=_encode_ahead, args=(fingerprint, keys, job), daemon=True,
                                  name="pixdex-encode-ahead")
    with _AHEAD_LOCK:
        _AHEAD.update(keys)
        _JOBS[:] = [j for j in _JOBS if j.thread is not None and j.thread.is_alive()] + [job]
    try:
        job.thread.start()
    except RuntimeError:  # no thread to be had: the foreground encodes them
        for pending in keys.values():
            pending.done.set()


def _encode_ahead(fingerprint: str, keys: dict[tuple, _Ahead], job: _Job) -> None:
    try:
        encoder, _ = load_image_encoder(fingerprint)
        if encoder is None:
            return
        import onnxruntime as ort

        job.run_options = ort.RunOptions()  # before the check below: a stop after it terminates the run
        for (_, path), pending in keys.items():
            if job.stopped.is_set():
                return
            try:
                vector = encoder.encode_pil([load_image_input(path)], job.run_options)[0]
                pending.vector = vector if _file_key(fingerprint, path) == pending.key else None  # unchanged
            except Exception:  # stopped, or a bad file: the foreground encodes it again and reports why
                pending.vector = None
            pending.done.set()
    except Exception:  # whatever failed here is done again, and reported, in the foreground
        return
    finally:
        for pending in keys.values():
            pending.done.set()


def _ahead_result(fingerprint: str, item) -> np.ndarray | None:
    """The vector encode_files_ahead made for this file (waiting for it), or None."""
    if not _AHEAD:
        return None
    key = _file_key(fingerprint, item)
    with _AHEAD_LOCK:
        pending = _AHEAD.pop(key[:2], None) if key is not None else None
    if pending is None or pending.key != key:  # none, or the file changed since: encode it now
        return None
    pending.done.wait()
    return pending.vector


def _stop_ahead() -> None:
    """At exit: stop encodings nobody took and wait for their threads, so that no thread is inside
    onnxruntime while the interpreter and the library shut down."""
    with _AHEAD_LOCK:
        jobs = list(_JOBS)
        _AHEAD.clear()
    for job in jobs:
        job.stopped.set()
        if job.run_options is not None:
            job.run_options.terminate = True
        if job.thread is not None:
            job.thread.join()


atexit.register(_stop_ahead)
