"""Where the shipped demo assets live inside the installed package."""

from __future__ import annotations

from pathlib import Path

SHAPES_CLIP_DIR = Path(__file__).resolve().parent / "shapes-clip"


def shapes_clip_path() -> str:
    """Directory of the shipped shapes-clip model (registered as the model name `shapes-clip`)."""
    return str(SHAPES_CLIP_DIR)
