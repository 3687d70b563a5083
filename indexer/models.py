"""Model names (short names registered by plugins, local directories, hub ids) and what identifies a model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from indexer.errors import PixdexError

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
ENTRY_POINT_GROUP = "pixdex.models"  # e.g. `shapes-clip`, registered by the pixdex package


@dataclass(frozen=True)
class ModelInfo:
    """What a store records about the model that made its embeddings."""

    name: str
    family: str  # "clip" (softmax scoring) or "siglip" (sigmoid scoring)
    dim: int
    fingerprint: str
    model_type: str
    legacy_fingerprint: str | None = None  # what stores made before path/dtype-free fingerprints recorded

    def record(self) -> dict:
        """What a store's manifest keeps about the model."""
        return {"name": self.name, "family": self.family, "dim": self.dim, "fingerprint": self.fingerprint,
                "model_type": self.model_type}

    def matches(self, fingerprint: str) -> bool:
        """True when a recorded fingerprint is this model's (the current form or the older one)."""
        return fingerprint in (self.fingerprint, self.legacy_fingerprint)


def registered_models() -> dict[str, str]:
    """Short model names mapped to local directories, from the `pixdex.models` entry points."""
    from importlib.metadata import entry_points  # ~50 ms: only when a short name is looked up

    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[ep.name] = str(ep.load()())
        except Exception:  # a broken plugin must not break model loading
            continue
    return found


def resolve_model(name: str) -> str:
    """A local directory or hub id for `name` (a short name, a path, or a hub id)."""
    if not name or not str(name).strip():
        raise PixdexError("empty model name")
    name = str(name)
    if os.path.isdir(os.path.expanduser(name)):
        return str(Path(name).expanduser().resolve())
    short = registered_models()
    if name in short:
        return short[name]
    if name.startswith((".", "/", "~")):
        raise PixdexError(f"model directory not found: {name}")
    return name  # a hub id; from_pretrained reads the cache or the hub


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def explain_load_failure(name: str, exc: Exception, path: str | None = None) -> PixdexError:
    """Turn a from_pretrained failure into a one-line error: what is wrong with a local folder, or how
    to pass a local model when a hub id cannot be loaded."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    folder = Path(path) if path and os.path.isdir(path) else None
    if folder is not None:
        if not (folder / "config.json").is_file():
            return PixdexError(f"cannot load model '{name}': folder {folder} has no config.json "
                               "(not a save_pretrained folder)")
        if not any((folder / f).is_file() for f in WEIGHT_FILES):
            return PixdexError(f"cannot load model '{name}': folder {folder} has no weights "
                               f"({' or '.join(WEIGHT_FILES[::2])})")
        return PixdexError(f"cannot load model '{name}': its files in {folder} are damaged or incomplete "
                           f"({type(exc).__name__}: {first[:160]})")
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    why = ("the hub is offline (HF_HUB_OFFLINE=1)" if offline
           else "it is not cached and the hub is unreachable")
    return PixdexError(
        f"cannot load model '{name}': {why} or it does not exist ({first[:160]}). "
        f"Pass a local directory with --model PATH (for example a save_pretrained folder), "
        f"or one of: {', '.join(sorted(registered_models())) or 'no registered short names'}"
    )
