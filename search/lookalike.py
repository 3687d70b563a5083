"""The pixel-level check of the duplicate finder: are two images the same photo, or only alike?

Each image becomes a small thumbnail, upright (EXIF orientation applied by the safe decoder). Two
thumbnails are aligned by trying crops of one against the other (scales 1 to 0.82, nine positions,
both ways round), so resized, recompressed, converted and lightly cropped copies line up. Their
distance is the largest mean difference over a 4x4 grid of cells at the best alignment: a copy differs
a little everywhere, a different photo (another scene, one object moved) differs a lot somewhere.
A 64-bit perceptual hash (imagehash's pHash) was measured too: it cannot tell a 5%-cropped copy (up to
22 bits apart) from a scene with one object moved (from 4 bits apart); see BENCHMARKS.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from indexer.decode import DecodeError, decode_bytes
from indexer.params import DEFAULT_PIXEL_TOLERANCE

SIDE = 64  # stored thumbnail side; crops are taken from it
CELL_GRID = 4  # distance: the worst of 4x4 cells
COMPARE = 32  # side at which aligned thumbnails are compared
SCALES = (0.97, 0.94, 0.9, 0.86, 0.82)  # crops tried: light crops, up to 18% of the side
DEFAULT_TOLERANCE = (
    DEFAULT_PIXEL_TOLERANCE  # the largest cell difference (0-255) still taken for the same photo
)


@dataclass
class Signature:
    """An image's thumbnail at COMPARE px and its aligned crops (uint8, [n, COMPARE, COMPARE, 3])."""

    full: np.ndarray
    crops: np.ndarray


def signature(image: Image.Image) -> Signature:
    """The signature of an (upright, RGB) image."""
    big = image.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BOX)
    full = np.asarray(big.resize((COMPARE, COMPARE), Image.Resampling.BOX), np.uint8)
    crops = [full]
    for s in SCALES:
        w = round(SIDE * s)
        m = SIDE - w
        for oy in (0, m // 2, m):
            for ox in (0, m // 2, m):
                crop = big.crop((ox, oy, ox + w, oy + w)).resize((COMPARE, COMPARE), Image.Resampling.BOX)
                crops.append(np.asarray(crop, np.uint8))
    return Signature(full, np.stack(crops))


def signature_of_bytes(data: bytes, max_pixels: int | None) -> Signature:
    """The signature of encoded image bytes (DecodeError when they do not decode)."""
    decoded = decode_bytes(data, max_pixels=max_pixels, draft_size=SIDE)  # EXIF orientation applied
    return signature(decoded.image)


def distance(a: Signature, b: Signature) -> float:
    """How different two images look at the best alignment: the worst 4x4 cell's mean difference (0-255)."""
    fa, fb = a.full.astype(np.float32), b.full.astype(np.float32)
    d1 = np.abs(a.crops.astype(np.float32) - fb[None]).mean(axis=(1, 2, 3))
    d2 = np.abs(b.crops.astype(np.float32) - fa[None]).mean(axis=(1, 2, 3))
    if d1.min() <= d2.min():
        x, y = a.crops[int(d1.argmin())].astype(np.float32), fb
    else:
        x, y = b.crops[int(d2.argmin())].astype(np.float32), fa
    diff = np.abs(x - y).mean(axis=2)
    n = COMPARE // CELL_GRID
    return float(diff.reshape(CELL_GRID, n, CELL_GRID, n).mean(axis=(1, 3)).max())


__all__ = ["DEFAULT_TOLERANCE", "DecodeError", "Signature", "distance", "signature", "signature_of_bytes"]
