"""Writes the fast text path's export (see indexer.text_onnx): the text tower as ONNX plus the query tokenizer.

The export is checked before it is published: on probe texts (short, long enough to be truncated, upper
case and punctuation, non-ASCII, empty after stripping) the replayed tokenizer must give exactly the
transformers tokenizer's ids and mask, and onnxruntime's embeddings must match the Encoder's within
cosine MIN_COSINE, one by one and as a padded batch. A model that fails gets a sidecar that says so (the
fast path is then skipped for it, without retrying on every query) and keeps the transformers path.
Files are written under temporary names and renamed; the sidecar comes last, so a reader never sees half.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from indexer.atomic import fsync_dir, save_json
from indexer.encoder import SIGLIP_TEXT_LENGTH, Encoder, features
from indexer.text_onnx import FORMAT, SIDECAR, check_export, export_dir, file_stamp, source_stamps
from indexer.text_tokens import QueryTokenizer, TokenSpec

log = logging.getLogger("pixdex.fast_text")

MIN_COSINE = 0.99999
PROBES = [
    "a red circle", "A Photo of a DOG!!", "  spaced   out\ttext \n", "naïve café, 日本語 🙂 Ünïcödé",
    "!!!", " ", "a", "x " * 120, "the quick brown fox jumps over the lazy dog " * 12, "it's a <b>bold</b> move",
]
STALE_TMP_SECONDS = 3600


class Unsupported(Exception):
    """This model's text path cannot be replayed exactly without transformers."""


class _TextTower(torch.nn.Module):
    """Token arrays -> L2-normalised text embeddings, the computation Encoder.encode_texts runs."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        emb = features(self.model.get_text_features(**dict(zip(self.names, tensors)))).float()
        return torch.nn.functional.normalize(emb, dim=-1)


def ensure_text_export(encoder: Encoder, force: bool = False) -> tuple[bool, str]:
    """Write the export for this encoder's model unless a current one (or a verdict "cannot") exists.

    Returns (usable, message). Never raises for model problems: a failure is recorded and reported.
    """
    if not force:
        found = check_export(encoder.fingerprint)
        if found.sidecar is not None or "cannot use the fast text path" in found.reason:
            return found.sidecar is not None, found.reason
    try:
        import onnx  # noqa: F401 - torch.onnx.export needs it
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return False, f"{exc.name or 'onnxruntime'} is not installed (pip install 'pixdex[fast]')"
    folder = export_dir(encoder.fingerprint)
    folder.mkdir(parents=True, exist_ok=True)
    _sweep(folder)
    sources = source_stamps(_source_files(encoder))
    t0 = time.perf_counter()
    try:
        cpu = encoder if (encoder.device.type == "cpu" and encoder.dtype == torch.float32) \
            else Encoder(encoder.path, device="cpu", dtype=torch.float32)
        meta = _write(cpu, folder)
    except Unsupported as exc:
        save_json(folder / SIDECAR, {"format": FORMAT, "fingerprint": encoder.fingerprint, "ok": False,
                                     "why": str(exc), "model": encoder.name, "sources": sources})
        return False, f"model cannot use the fast text path: {exc}"
    meta.update(format=FORMAT, fingerprint=encoder.fingerprint, ok=True, model=encoder.name, sources=sources,
                dim=encoder.dim, family=encoder.family, seconds=round(time.perf_counter() - t0, 2))
    save_json(folder / SIDECAR, meta)
    _sweep(folder, keep={meta["graph"]["file"], meta["tokenizer"]["file"], SIDECAR})
    return True, ""


def _write(encoder: Encoder, folder: Path) -> dict:
    """Export, check and name the graph and tokenizer files; returns the sidecar's file records."""
    spec, tok_bytes = token_spec(encoder)
    tmp = folder / f".tmp-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    try:
        (tmp / spec.file).write_bytes(tok_bytes)
        _export_graph(encoder, spec.inputs, tmp / "text.onnx")
        cosine = _check(encoder, spec, tmp)
        graph_name = f"text-{_sha256(tmp / 'text.onnx')[:16]}.onnx"
        tok_sha = hashlib.sha256(tok_bytes).hexdigest()
        tok_name = f"tokenizer-{tok_sha[:16]}{Path(spec.file).suffix}"
        for src, dst in (("text.onnx", graph_name), (spec.file, tok_name)):
            with open(tmp / src, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp / src, folder / dst)
        fsync_dir(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    spec = TokenSpec(**{**asdict(spec), "file": tok_name})
    return {
        "graph": {"file": graph_name, "sha256": _sha256(folder / graph_name), **file_stamp(folder / graph_name)},
        "tokenizer": {"file": tok_name, "sha256": tok_sha, "spec": asdict(spec), **file_stamp(folder / tok_name)},
        "checked": {"probes": len(PROBES), "min_cosine": cosine},
        "versions": {"torch": torch.__version__, "onnxruntime": _ort_version()},
    }


def token_spec(encoder: Encoder) -> tuple[TokenSpec, bytes]:
    """The replayable tokenizer of this encoder (its rules and file), or Unsupported."""
    tok = encoder.tokenizer
    inputs = tuple(encoder.tokenize(["a"]).keys())
    if not set(inputs) <= {"input_ids", "attention_mask"} or "input_ids" not in inputs:
        raise Unsupported(f"text inputs {inputs} are not input_ids/attention_mask")
    side = getattr(tok, "padding_side", "right")
    if side not in ("left", "right"):
        raise Unsupported(f"tokenizer pads on the {side}")
    siglip = encoder.family == "siglip"
    max_length = SIGLIP_TEXT_LENGTH if siglip else int(getattr(encoder.config.text_config,
                                                              "max_position_embeddings", 77))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    common = dict(inputs=inputs, max_length=max_length, pad_to_max=siglip, pad_id=int(pad_id), pad_left=side == "left")
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        fast = Tokenizer.from_str(backend.to_str())
        fast.no_padding()
        fast.enable_truncation(max_length, direction=getattr(tok, "truncation_side", "right"))
        return TokenSpec(kind="tokenizers", file="tokenizer.json", **common), fast.to_str().encode()
    vocab = getattr(tok, "vocab_file", None)
    if type(tok).__name__ == "SiglipTokenizer" and vocab and os.path.isfile(vocab):
        specials = sorted({str(t) for t in tok.all_special_tokens} | {str(t) for t in tok.get_added_vocab()})
        return TokenSpec(kind="sentencepiece", file="spiece.model", eos_id=int(tok.eos_token_id),
                         unk_token=str(tok.unk_token), do_lower_case=bool(getattr(tok, "do_lower_case", True)),
                         specials=tuple(specials), **common), Path(vocab).read_bytes()
    raise Unsupported(f"no replayable tokenizer for {type(tok).__name__}")


def _export_graph(encoder: Encoder, names: tuple[str, ...], out: Path) -> None:
    """The text tower as ONNX (TorchScript exporter: no onnxscript needed), batch and length dynamic."""
    tokens = encoder.tokenize(["a red circle", "a photo of two small things on the left"])
    args = tuple(tokens[n].to(encoder.device) for n in names)
    axes = {n: {0: "batch", 1: "tokens"} for n in names}
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(_TextTower(encoder.model, names).eval(), args, str(out), dynamo=False,
                              input_names=list(names), output_names=["text_embeds"], dynamic_axes=axes,
                              opset_version=17, do_constant_folding=True)
    except Exception as exc:  # noqa: BLE001 - any exporter failure means this model keeps transformers
        raise Unsupported(f"ONNX export failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:160]}")
    if not out.is_file():
        raise Unsupported("ONNX export wrote no file (external weights are not supported)")


def _check(encoder: Encoder, spec: TokenSpec, folder: Path) -> float:
    """Probe texts through both paths: identical tokens, cosine >= MIN_COSINE. Returns the lowest cosine."""
    import onnxruntime as ort

    tok = QueryTokenizer(spec, folder)
    session = ort.InferenceSession(str(folder / "text.onnx"), providers=["CPUExecutionProvider"])
    lowest = 1.0
    for batch in [[p] for p in PROBES] + [PROBES]:
        want = {k: v.numpy() for k, v in encoder.tokenize(batch).items()}
        got = tok(batch)
        for name in spec.inputs:
            if want[name].shape != got[name].shape or not np.array_equal(want[name], got[name]):
                raise Unsupported(f"replayed tokenizer differs from transformers on {batch[0][:40]!r}")
        ref = encoder.encode_texts(batch)
        out = session.run(None, got)[0]
        cos = float(np.min(np.sum(ref * out, axis=1) / np.maximum(
            np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1), 1e-12)))
        lowest = min(lowest, cos)
        if not cos >= MIN_COSINE:
            raise Unsupported(f"ONNX text embedding differs from transformers (cosine {cos:.6f})")
    return round(lowest, 8)


def _source_files(encoder: Encoder) -> list[Path]:
    """The model's files (config, weights, tokenizer): changing any of them invalidates the export."""
    path = Path(encoder.path)
    if not path.is_dir():
        from transformers.utils import cached_file

        path = Path(cached_file(encoder.path, "config.json")).parent
    return [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]


def _sweep(folder: Path, keep: set[str] | None = None) -> None:
    """Drop files no sidecar names (when `keep` is given) and temporaries left by killed writers."""
    now = time.time()
    for p in folder.iterdir():
        if p.name.startswith(".tmp-"):
            if now - p.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        elif keep is not None and p.name not in keep and p.suffix in (".onnx", ".json", ".model"):
            p.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
