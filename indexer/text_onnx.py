"""The fast text path: a model's text tower as a cached ONNX graph, run with onnxruntime (no torch import).

A cold `pixdex search STORE "text"` otherwise spends seconds importing torch and transformers and loading
the whole model to encode a few tokens. indexer.text_export writes, once per model, the text tower (text
model, projection and L2 normalisation, exactly as Encoder.encode_texts does it) and the query tokenizer to
<cache>/text/<fingerprint>/; this module finds and checks that export and encodes queries with it.

An export is used only when its sidecar (export.json, written last, atomically) matches everything on disk:
the model fingerprint, the graph and tokenizer files (size, mtime and a hash of their ends; the tokenizer
file fully hashed), and the stat of every source file of the model it came from. Anything else (a missing,
truncated or half-written file, a changed model) means "no export": callers fall back to transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.text_tokens import QueryTokenizer, TokenSpec

FORMAT = 1
SIDECAR = "export.json"
SAMPLE_BYTES = 1 << 20  # hashed from each end of the graph file on every load (the full sha256 is recorded too)
CACHE_ENV = "PIXDEX_CACHE"  # overrides the cache folder; PIXDEX_FAST_TEXT=0 turns the fast path off


def cache_root() -> Path:
    """$PIXDEX_CACHE, else $XDG_CACHE_HOME/pixdex, else ~/.cache/pixdex."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pixdex"


def export_dir(fingerprint: str) -> Path:
    """Where the text export of the model with this fingerprint lives."""
    if not fingerprint or not all(c.isalnum() for c in fingerprint):
        raise ValueError(f"not a model fingerprint: {fingerprint!r}")
    return cache_root() / "text" / fingerprint


def fast_text_enabled() -> bool:
    return os.environ.get("PIXDEX_FAST_TEXT", "1") != "0"


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


def check_export(fingerprint: str) -> ExportCheck:
    """Is there a complete, current export for this fingerprint? Reads files, imports nothing heavy."""
    folder = export_dir(fingerprint)
    try:
        meta = json.loads((folder / SIDECAR).read_text())
    except FileNotFoundError:
        return ExportCheck(None, "no fast text export cached")
    except (OSError, ValueError) as exc:
        return ExportCheck(None, f"unreadable export sidecar ({exc.__class__.__name__})")
    try:
        if meta.get("format") != FORMAT or meta.get("fingerprint") != fingerprint:
            return ExportCheck(None, "export was written for another format or model")
        for p, size, mtime in meta["sources"]:
            st = os.stat(p)
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                return ExportCheck(None, f"model file changed since the export: {p}")
        if not meta.get("ok"):
            return ExportCheck(None, f"model cannot use the fast text path: {meta.get('why', 'unknown')}")
        for part in ("graph", "tokenizer"):
            rec = meta[part]
            stamp = file_stamp(folder / rec["file"])
            if any(stamp[k] != rec[k] for k in ("bytes", "mtime_ns", "ends_sha256")):
                return ExportCheck(None, f"export file {rec['file']} is truncated or was changed")
        tok = meta["tokenizer"]
        if hashlib.sha256((folder / tok["file"]).read_bytes()).hexdigest() != tok["sha256"]:
            return ExportCheck(None, f"export file {tok['file']} is corrupt")
    except FileNotFoundError as exc:
        return ExportCheck(None, f"file missing: {exc.filename}")
    except (KeyError, TypeError, ValueError, OSError) as exc:
        return ExportCheck(None, f"malformed export sidecar ({exc.__class__.__name__}: {exc})")
    return ExportCheck(meta)


class OnnxTextEncoder:
    """Encodes query texts with a checked export: float32, L2-normalised, one row per text."""

    def __init__(self, folder: Path, meta: dict):
        import onnxruntime as ort

        self.folder, self.meta = folder, meta
        self.dim = int(meta["dim"])
        self.fingerprint = meta["fingerprint"]
        tok = meta["tokenizer"]
        spec = TokenSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in tok["spec"].items()})
        self.tokenizer = QueryTokenizer(spec, folder)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # a handful of tokens: more threads only spin (see search._torch_threads)
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(folder / meta["graph"]["file"]), opts,
                                            providers=["CPUExecutionProvider"])
        self._lock = threading.Lock()

    def can_encode(self, texts: Sequence[str]) -> bool:
        return all(self.tokenizer.can_encode(t) for t in texts)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Text embeddings like Encoder.encode_texts (same tokens, same tower, same normalisation)."""
        if isinstance(texts, str):
            texts = [texts]
        rows = [self.session.run(None, self.tokenizer(texts[i : i + batch_size]))[0]
                for i in range(0, len(texts), batch_size)]
        if not rows:
            return np.zeros((0, self.dim), np.float32)
        return np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)


_LOADED: dict[str, OnnxTextEncoder] = {}
_LOAD_LOCK = threading.Lock()


def load_text_encoder(fingerprint: str) -> tuple[OnnxTextEncoder | None, str]:
    """The fast text encoder for a model fingerprint (cached per process), or (None, why not)."""
    if not fast_text_enabled():
        return None, "fast text path turned off (PIXDEX_FAST_TEXT=0)"
    with _LOAD_LOCK:
        if fingerprint in _LOADED:
            return _LOADED[fingerprint], ""
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return None, "onnxruntime is not installed (pip install 'pixdex[fast]')"
        found = check_export(fingerprint)
        if found.sidecar is None:
            return None, found.reason
        try:
            enc = OnnxTextEncoder(export_dir(fingerprint), found.sidecar)
        except Exception as exc:  # noqa: BLE001 - any unloadable export means: use transformers
            return None, f"cannot load the fast text export ({exc.__class__.__name__}: {str(exc)[:120]})"
        _LOADED[fingerprint] = enc
        return enc, ""
