"""Writes the ONNX exports that let queries skip torch (indexer.onnx_cache, text_onnx, image_onnx).

Each export is checked before it is published. Text: on probe texts (short, long enough to be truncated,
upper case and punctuation, non-ASCII, empty after stripping) the replayed tokenizer must give exactly the
transformers tokenizer's ids and mask, and onnxruntime's embeddings must match Encoder.encode_texts within
cosine MIN_COSINE, one by one and as a padded batch. Image: on probe images of several sizes and aspect
ratios (one smaller than the crop), onnxruntime on indexer.pixels' resize+crop must match
Encoder.encode_images (the model's own processor) within MIN_COSINE. A model that fails gets a sidecar
that says so (its queries keep transformers, without a retry on every query until its files change).
Each graph is published as two files: the graph and, beside it, its weights (ONNX external data), which
onnxruntime memory-maps instead of copying (a ViT-B/32 image tower opens in 0.02 s instead of 0.6 s).
The graph is saved as onnxruntime's extended optimisations leave it (fused attention, GELU, layer norm)
when that graph passes the same check, so one-shot queries, which open graphs without optimising, run it.
Files are written under temporary names and renamed; the sidecar comes last, so a reader never sees
half an export.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from indexer.atomic import fsync_dir, save_json
from indexer.encoder import SIGLIP_TEXT_LENGTH, Encoder, features
from indexer.image_onnx import pixels
from indexer.onnx_cache import (
    CANNOT,
    FILE_PARTS,
    FORMAT,
    SIDECAR,
    TOWERS,
    check_export,
    export_dir,
    file_stamp,
    onnxruntime_version,
    session,
    sha256_file,
    source_stamps,
)
from indexer.pixels import normalise
from indexer.text_tokens import QueryTokenizer, TokenSpec

MIN_COSINE = 0.9999
TEXT_PROBES = [
    "a red circle", "A Photo of a DOG!!", "  spaced   out\ttext \n", "naïve café, 日本語 🙂 Ünïcödé",
    "!!!", " ", "a", "x " * 120, "the quick brown fox jumps over the lazy dog " * 12,
    "it's a <b>bold</b> move",
]
IMAGE_PROBE_SIZES = [(640, 480), (300, 500), (224, 224), (40, 30), (1000, 90)]  # (width, height)
STALE_TMP_SECONDS = 3600


class Unsupported(Exception):
    """This model's tower cannot be replayed exactly without transformers."""


class _TextTower(torch.nn.Module):
    """Token arrays -> L2-normalised text embeddings, the computation Encoder.encode_texts runs."""

    def __init__(self, model: torch.nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        emb = features(self.model.get_text_features(**dict(zip(self.names, tensors)))).float()
        return torch.nn.functional.normalize(emb, dim=-1)


class _ImageTower(torch.nn.Module):
    """NHWC uint8 pixels (resized and cropped) -> L2-normalised image embeddings, as Encoder.embed_pixels."""

    def __init__(self, model: torch.nn.Module, plan):
        super().__init__()
        self.model, self.plan = model, plan

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        values = normalise(pixels, self.plan)
        emb = features(self.model.get_image_features(pixel_values=values)).float()
        return torch.nn.functional.normalize(emb, dim=-1)


def ensure_exports(encoder: Encoder, log: Callable[[str], None] | None = None) -> dict[str, tuple[bool, str]]:
    """Both towers' exports for this encoder's model (each written unless current or known impossible)."""
    cpu: list[Encoder] = []
    out = {tower: ensure_export(encoder, tower, cpu) for tower in TOWERS}
    if log is not None:
        for tower, (ok, why) in out.items():
            if not ok:
                log(f"fast {tower} queries: {why}")
    return out


def ensure_export(encoder: Encoder, tower: str, cpu: list[Encoder] | None = None,
                  force: bool = False) -> tuple[bool, str]:
    """Write one tower's export unless a current one (or a verdict "cannot") exists: (usable, why not).

    Never raises for model problems: a failure is recorded and reported. `cpu` shares a float32 CPU copy
    of the model between towers when the encoder runs elsewhere.
    """
    if not force:
        found = check_export(encoder.fingerprint, tower)
        if found.sidecar is not None or found.verdict:
            return found.sidecar is not None, found.reason
    try:
        import onnx  # noqa: F401 - torch.onnx.export needs it
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return False, f"{exc.name or 'onnxruntime'} is not installed (pip install 'pixdex[fast]')"
    folder = export_dir(encoder.fingerprint, tower)
    folder.mkdir(parents=True, exist_ok=True)
    _sweep(folder)
    head = {"format": FORMAT, "fingerprint": encoder.fingerprint, "tower": tower, "model": encoder.name,
            "sources": source_stamps(_source_files(encoder))}
    t0 = time.perf_counter()
    try:
        model = _cpu_encoder(encoder, cpu if cpu is not None else [])
        meta = (_write_text if tower == "text" else _write_image)(model, folder)
    except Unsupported as exc:
        save_json(folder / SIDECAR, {**head, "ok": False, "why": str(exc)})
        return False, f"model {CANNOT} for {tower}s: {exc}"
    meta.update(head, ok=True, dim=encoder.dim, family=encoder.family,
                seconds=round(time.perf_counter() - t0, 2),
                versions={"torch": torch.__version__, "onnxruntime": onnxruntime_version()})
    save_json(folder / SIDECAR, meta)
    _sweep(folder, keep={meta[part]["file"] for part in FILE_PARTS if part in meta} | {SIDECAR})
    return True, ""


def _cpu_encoder(encoder: Encoder, shared: list[Encoder]) -> Encoder:
    """The encoder itself on a float32 CPU, else one float32 CPU copy (the query path runs there)."""
    if encoder.device.type == "cpu" and encoder.dtype == torch.float32:
        return encoder
    if not shared:
        shared.append(Encoder(encoder.path, device="cpu", dtype=torch.float32))
    return shared[0]


# ---- text -----------------------------------------------------------------------------------------
def _write_text(encoder: Encoder, folder: Path) -> dict:
    """Export, check and publish the text graph and tokenizer; returns their sidecar records."""
    spec, tok_bytes = token_spec(encoder)
    with _scratch(folder) as tmp:
        (tmp / spec.file).write_bytes(tok_bytes)
        _export(_TextTower(encoder.model, spec.inputs), _text_args(encoder, spec.inputs), tmp / "graph.onnx",
                names=list(spec.inputs), axes={n: {0: "batch", 1: "tokens"} for n in spec.inputs})
        weights = _split_weights(tmp / "graph.onnx", "text")
        weights, cosine, fused = _fused(tmp, weights, lambda graph: _check_text(encoder, spec, tmp, graph))
        files = _publish_graph(tmp, weights, folder, "text")
        tok = _publish(tmp / spec.file, folder, "tokenizer")
    tok["spec"] = asdict(TokenSpec(**{**asdict(spec), "file": tok["file"]}))
    return {**files, "tokenizer": tok, "fused": fused,
            "checked": {"probes": len(TEXT_PROBES), "min_cosine": cosine}}


def _text_args(encoder: Encoder, names: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    tokens = encoder.tokenize(["a red circle", "a photo of two small things on the left"])
    return tuple(tokens[n].to(encoder.device) for n in names)


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
    common = dict(inputs=inputs, max_length=max_length, pad_to_max=siglip, pad_id=int(pad_id),
                  pad_left=side == "left")
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
                         unk_token=str(tok.unk_token),
                         do_lower_case=bool(getattr(tok, "do_lower_case", True)),
                         specials=tuple(specials), **common), Path(vocab).read_bytes()
    raise Unsupported(f"no replayable tokenizer for {type(tok).__name__}")


def _check_text(encoder: Encoder, spec: TokenSpec, folder: Path, graph: Path) -> float:
    """Probe texts through both paths: identical tokens, cosine >= MIN_COSINE. Returns the lowest cosine."""
    tok = QueryTokenizer(spec, folder)
    sessions = _both_sessions(graph)
    lowest = 1.0
    for batch in [[p] for p in TEXT_PROBES] + [TEXT_PROBES]:
        want = {k: v.numpy() for k, v in encoder.tokenize(batch).items()}
        got = tok(batch)
        for name in spec.inputs:
            if want[name].shape != got[name].shape or not np.array_equal(want[name], got[name]):
                raise Unsupported(f"replayed tokenizer differs from transformers on {batch[0][:40]!r}")
        reference = encoder.encode_texts(batch)
        for sess in sessions:
            lowest = min(lowest, _lowest_cosine(reference, sess.run(None, got)[0], "text"))
    return round(lowest, 8)


# ---- images ---------------------------------------------------------------------------------------
def _write_image(encoder: Encoder, folder: Path) -> dict:
    """Export, check and publish the image graph; returns its sidecar records (with the pixel plan)."""
    plan = encoder.pixel_plan
    if plan is None:
        raise Unsupported(f"{type(encoder.image_processor).__name__} is not replayed by indexer.pixels")
    probes = probe_images()
    with _scratch(folder) as tmp:
        example = torch.from_numpy(pixels(probes[:2], plan))
        _export(_ImageTower(encoder.model, plan), (example,), tmp / "graph.onnx", names=["pixels"],
                axes={"pixels": {0: "batch"}})
        weights = _split_weights(tmp / "graph.onnx", "image")
        reference, feed = encoder.encode_images(probes), {"pixels": pixels(probes, plan)}
        weights, cosine, fused = _fused(tmp, weights, lambda graph: min(
            _lowest_cosine(reference, sess.run(None, feed)[0], "image") for sess in _both_sessions(graph)))
        files = _publish_graph(tmp, weights, folder, "image")
    return {**files, "pixels": asdict(plan), "fused": fused,
            "checked": {"probes": len(probes), "min_cosine": round(cosine, 8)}}


def probe_images() -> list:
    """Smooth random RGB images of several sizes and aspect ratios, one smaller than any crop."""
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for w, h in IMAGE_PROBE_SIZES:
        small = rng.integers(0, 256, size=(max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
        out.append(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))
    return out


# ---- shared ---------------------------------------------------------------------------------------
def _export(module: torch.nn.Module, args: tuple, out: Path, names: list[str], axes: dict) -> None:
    """One tower as ONNX (the TorchScript exporter: no onnxscript needed), dynamic batch."""
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), args, str(out), dynamo=False, input_names=names,
                              output_names=["embeds"], dynamic_axes=axes, opset_version=17,
                              do_constant_folding=True)
    except Exception as exc:  # any exporter failure means this model keeps transformers
        raise Unsupported(f"ONNX export failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:160]}")
    if not out.is_file():
        raise Unsupported("ONNX export wrote no file (external weights are not supported)")


def _split_weights(graph: Path, tower: str) -> str:
    """Move the graph's weights into a file beside it (ONNX external data, memory-mapped by onnxruntime);
    returns that file's name, unique to these weights."""
    import onnx

    name = f"{tower}-{sha256_file(graph)[:16]}.weights"
    model = onnx.load(str(graph))
    onnx.save_model(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=name, size_threshold=1024)
    if (graph.parent / name).is_file():  # onnx creates it private (0600): readable like the graph
        os.chmod(graph.parent / name, graph.stat().st_mode & 0o777)
    return name


def _fused(tmp: Path, weights: str, check: Callable[[Path], float]) -> tuple[str, float, bool]:
    """Make tmp/graph.onnx the graph onnxruntime's extended optimisations leave (attention, GELU and layer
    norm fused, constants folded) when that one passes `check` too, else keep the plain one. One-shot
    queries open graphs without optimising them (session quick start), so they run the fused graph as
    saved: 0.02-0.04 s of a cold ViT-B/32 query. Returns (weights file, lowest cosine, fused or not)."""
    import onnxruntime as ort

    fused_weights = weights.replace(".weights", "-fused.weights")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp / "fused.onnx")
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", fused_weights)
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(str(tmp / "graph.onnx"), opts, providers=["CPUExecutionProvider"])
        cosine = check(tmp / "fused.onnx")
    except Exception:  # not saved, not loadable or not exact (Unsupported): the plain graph is the export
        return weights, check(tmp / "graph.onnx"), False
    os.replace(tmp / "fused.onnx", tmp / "graph.onnx")
    (tmp / weights).unlink(missing_ok=True)
    if (tmp / fused_weights).is_file():
        os.chmod(tmp / fused_weights, (tmp / "graph.onnx").stat().st_mode & 0o777)
    return fused_weights, cosine, True


def _both_sessions(graph: Path) -> list:
    """The graph as a one-shot CLI query opens it (no graph optimisation) and as a server does: the
    check covers both."""
    return [session(graph, quick_start=True), session(graph, quick_start=False)]


def _publish_graph(tmp: Path, weights: str, folder: Path, stem: str) -> dict:
    """Publish the weights (under the name the graph refers to), then the graph: their sidecar records."""
    out = {}
    if (tmp / weights).is_file():  # a graph with no tensor over the size threshold has none
        out["weights"] = _publish(tmp / weights, folder, stem, name=weights)
    out["graph"] = _publish(tmp / "graph.onnx", folder, stem)
    return out


def _lowest_cosine(want: np.ndarray, got: np.ndarray, what: str) -> float:
    cos = np.sum(want * got, axis=1) / np.maximum(np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1),
                                                  1e-12)
    lowest = float(np.min(cos))
    if not lowest >= MIN_COSINE:
        raise Unsupported(f"ONNX {what} embedding differs from transformers (cosine {lowest:.6f})")
    return lowest


class _scratch:
    """A private temporary folder inside the export folder, removed on exit."""

    def __init__(self, folder: Path):
        self.path = folder / f".tmp-{os.getpid()}-{time.time_ns()}"

    def __enter__(self) -> Path:
        self.path.mkdir()
        return self.path

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _publish(src: Path, folder: Path, stem: str, name: str | None = None) -> dict:
    """fsync src and rename it into folder under `name`, else a content-addressed name; returns its
    sidecar record."""
    digest = sha256_file(src)
    name = name or f"{stem}-{digest[:16]}{src.suffix}"
    with open(src, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(src, folder / name)
    fsync_dir(folder)
    return {"file": name, "sha256": digest, **file_stamp(folder / name)}


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
        elif keep is not None and p.name not in keep and p.suffix in (".onnx", ".weights", ".json", ".model"):
            p.unlink(missing_ok=True)
