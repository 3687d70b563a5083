"""JPEG decoding on the GPU with nvJPEG (through torchvision), for the embedding job's fast path.

torchvision is optional (CI's CPU torch wheel has none): everything here is imported lazily and
`available()` says whether the path can be used. Any image nvJPEG refuses (CMYK, progressive
oddities, corrupt data) comes back as None and is decoded on the CPU instead.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def available(device_type: str) -> bool:
    """True when JPEGs can be decoded on this device (CUDA with a torchvision that has decode_jpeg)."""
    if device_type != "cuda":
        return False
    try:
        import torch
        from torchvision.io import decode_jpeg  # noqa: F401

        return torch.cuda.is_available()
    except Exception:
        return False


def decode_jpegs(datas: list[bytes], device) -> list:
    """CHW uint8 RGB tensors on `device` for each JPEG (EXIF orientation applied), None where it fails."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    try:
        out = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
        return [t if t.shape[0] == 3 else None for t in out]
    except Exception:  # one bad file fails the whole batch call: retry one by one
        results = []
        for t in tensors:
            try:
                img = decode_jpeg(t, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
                results.append(img if img.shape[0] == 3 else None)
            except Exception:
                results.append(None)
        return results
