"""The per-model cache of ONNX exports that lets queries run without torch (see text_onnx, image_onnx).

A cold `pixdex search` otherwise spends seconds importing torch and transformers and loading the whole model
to encode one query. indexer.onnx_export writes, once per model, each tower (text: text model, projection and
L2 normalisation as Encoder.encode_texts runs them, plus the query tokenizer; image: pixel normalisation,
vision model, projection, L2 normalisation) to <cache>/<tower>/<fingerprint>/, keyed by the fingerprint the
store records. This module finds and checks an export; it imports nothing heavy.

An export is used only when its sidecar (export.json, written last, atomically) matches everything on disk:
the model fingerprint, every file it names (size, mtime and a sha256 of the first and last MiB; small files
fully hashed), and the stat of every source file of the model it came from. Anything else (a missing,
truncated or half-written file, a changed model) means "no export", and callers fall back to transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# 2: weights in a separate file beside the graph (memory-mapped at load, see session());
# 3: the graph as onnxruntime's extended optimisations leave it, when that is as exact (onnx_export._fused)
FORMAT = 3
SIDECAR = "export.json"
TOWERS = ("text", "image")
FILE_PARTS = ("graph", "weights", "tokenizer")  # sidecar entries that name a file
SAMPLE_BYTES = 1 << 20  # hashed from each end of a file on every load (the full sha256 is recorded too)
FULL_HASH_BYTES = 16 << 20  # files up to this size are fully hashed on every load
CACHE_ENV = "PIXDEX_CACHE"  # overrides the cache folder
SWITCH_ENV = "PIXDEX_FAST"  # PIXDEX_FAST=0 turns the ONNX query path off (transformers for everything)
CANNOT = "cannot use the fast path"  # the words of a recorded verdict (the model was tried and failed)


def cache_root() -> Path:
    """$PIXDEX_CACHE, else $XDG_CACHE_HOME/pixdex, else ~/.cache/pixdex."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pixdex"


def export_dir(fingerprint: str, tower: str) -> Path:
    """Where the export of one tower of the model with this fingerprint lives."""
    if not fingerprint or not all(c.isalnum() for c in fingerprint):
        raise ValueError(f"not a model fingerprint: {fingerprint!r}")
    if tower not in TOWERS:
        raise ValueError(f"unknown tower {tower!r}")
    return cache_root() / tower / fingerprint


def fast_path_enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "1") != "0"


def file_stamp(path: Path) -> dict:
    """What a load checks cheaply: size, mtime and a sha256 of the first and last MiB."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(SAMPLE_BYTES))
        if st.st_size > SAMPLE_BYTES:
            fh.seek(max(SAMPLE_BYTES, st.st_size - SAMPLE_BYTES))
            h.update(fh.read())
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "ends_sha256": h.hexdigest()}


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def source_stamps(paths: Sequence[Path]) -> list[list]:
    """[path, size, mtime_ns] of each model source file: a changed model invalidates its export."""
    out = []
    for p in sorted(str(x) for x in paths):
        st = os.stat(p)
        out.append([p, st.st_size, st.st_mtime_ns])
    return out


@dataclass(frozen=True)
class ExportCheck:
    """The outcome of looking for an export: the sidecar when usable, else why not (one line)."""

    sidecar: dict | None
    reason: str = ""

    @property
    def verdict(self) -> bool:
        """True when the model was tried and cannot be exported (do not try again until it changes)."""
        return CANNOT in self.reason


def check_export(fingerprint: str, tower: str) -> ExportCheck:
    """Is there a complete, current export of this tower for this fingerprint?"""
    folder = export_dir(fingerprint, tower)
    try:
        meta = json.loads((folder / SIDECAR).read_text())
    except FileNotFoundError:
        return ExportCheck(None, f"no fast {tower} export cached")
    except (OSError, ValueError) as exc:
        return ExportCheck(None, f"unreadable {tower} export sidecar ({exc.__class__.__name__})")
    try:
        if meta.get("fingerprint") != fingerprint or meta.get("tower") != tower:
            return ExportCheck(None, f"{tower} export was written for another model")
        if meta.get("format") != FORMAT:
            return ExportCheck(None, f"no fast {tower} export cached in the current format "
                                     f"(found format {meta.get('format')}, need {FORMAT})")
        for p, size, mtime in meta["sources"]:
            st = os.stat(p)
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                return ExportCheck(None, f"model file changed since the {tower} export: {p}")
        if not meta.get("ok"):
            return ExportCheck(None, f"model {CANNOT} for {tower}s: {meta.get('why', 'unknown')}")
        if meta.get("fused"):  # fused kernels are onnxruntime's own: checked with the version that ran them
            wrote, runs = meta["versions"]["onnxruntime"], onnxruntime_version()
            if wrote != runs:
                return ExportCheck(None, f"no fast {tower} export for this onnxruntime (the cached one was "
                                         f"fused by onnxruntime {wrote}, this is {runs or 'none'})")
        for part in FILE_PARTS:
            if part not in meta:
                continue
            rec = meta[part]
            path = folder / rec["file"]
            stamp = file_stamp(path)
            if any(stamp[k] != rec[k] for k in ("bytes", "mtime_ns", "ends_sha256")):
                return ExportCheck(None, f"{tower} export file {rec['file']} is truncated or was changed")
            if rec["bytes"] <= FULL_HASH_BYTES and sha256_file(path) != rec["sha256"]:
                return ExportCheck(None, f"{tower} export file {rec['file']} is corrupt")
    except FileNotFoundError as exc:
        return ExportCheck(None, f"{tower} export file missing: {exc.filename}")
    except (KeyError, TypeError, ValueError, OSError) as exc:
        return ExportCheck(None, f"malformed {tower} export sidecar ({exc.__class__.__name__}: {exc})")
    return ExportCheck(meta)


_QUICK_START = False  # set by prefer_quick_start(): this process answers a query or two, then exits


def prefer_quick_start() -> None:
    """Make this process's sessions start in milliseconds rather than run a few percent faster: for one-shot
    commands (a CLI query), not for servers and notebooks that answer many queries."""
    global _QUICK_START
    _QUICK_START = True


def quick_start_preferred() -> bool:
    """Whether this process said it answers a query or two and exits (prefer_quick_start)."""
    return _QUICK_START


def session(path: Path, threads: int = 1, quick_start: bool | None = None):
    """An onnxruntime session for a few queries at a time, without spinning threads (a busy machine pays
    5-10x for spinning; see search.encoding.torch_threads).

    The weights file beside the graph is memory-mapped, so opening costs no copy of the weights. A quick
    start also skips graph optimisation and weight prepacking, which cost 0.3-1.3 s per ViT-B/32 tower on
    2 cores (benchmarks/cold_query.py) and win back only a few ms per query.
    """
    import onnxruntime as ort

    quick = _QUICK_START if quick_start is None else quick_start
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if quick:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.add_session_config_entry("session.disable_prepacking", "1")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnxruntime_version() -> str:
    """The installed onnxruntime's version ("" when it does not import)."""
    try:
        import onnxruntime
    except ImportError:
        return ""
    return onnxruntime.__version__


def onnxruntime_missing() -> str:
    """'' when onnxruntime imports, else the one-line reason."""
    return "" if onnxruntime_version() else "onnxruntime is not installed (pip install 'pixdex[fast]')"


_LOADED: dict[tuple[str, str], Any] = {}  # (tower, fingerprint) -> loaded fast encoder
_LOAD_LOCK = threading.Lock()


def load_export(fingerprint: str, tower: str, make: Callable[[Path, dict], Any]) -> tuple[Any | None, str]:
    """The fast encoder of one tower ("text" or "image") for a model fingerprint, built by make(folder,
    sidecar) from a checked export and kept per process; or (None, why not: then use transformers)."""
    if not fast_path_enabled():
        return None, "fast path turned off (PIXDEX_FAST=0)"
    with _LOAD_LOCK:
        if (tower, fingerprint) in _LOADED:
            return _LOADED[(tower, fingerprint)], ""
        missing = onnxruntime_missing()
        if missing:
            return None, missing
        found = check_export(fingerprint, tower)
        if found.sidecar is None:
            return None, found.reason
        try:
            enc = make(export_dir(fingerprint, tower), found.sidecar)
        except Exception as exc:  # any unloadable export means: use transformers
            return None, f"cannot load the fast {tower} export ({exc.__class__.__name__}: {str(exc)[:120]})"
        _LOADED[(tower, fingerprint)] = enc
        return enc, ""


def forget_loaded(fingerprint: str) -> None:
    """Drop this process's loaded fast encoders of a model (the export on disk changed)."""
    with _LOAD_LOCK:
        for tower in ("text", "image"):
            _LOADED.pop((tower, fingerprint), None)
