"""Safe decoding: every PIL mode becomes the RGB a viewer would show; bad files give one-line reasons."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from indexer.decode import DecodeError, decode_bytes, looks_like_image, sniff_format, to_rgb

WHITE = (255, 255, 255)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def pixel(img: Image.Image, xy) -> tuple[int, int, int]:
    return tuple(int(v) for v in img.getpixel(xy))


def close(a, b, tol=12) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def test_exif_orientation_is_applied_and_size_reported_upright():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # stored: red left half, blue right half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored left column becomes the top row
    out = decode_bytes(encode(img, "JPEG", exif=exif, quality=95))
    assert out.image.size == (20, 40)
    assert (out.width, out.height) == (20, 40)
    assert close(pixel(out.image, (10, 5)), (255, 0, 0), 40)
    assert close(pixel(out.image, (10, 35)), (0, 0, 255), 40)


def test_cmyk_jpeg_keeps_its_colours():
    data = encode(Image.new("RGB", (32, 32), (200, 30, 30)).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_bytes(data).image
    assert out.mode == "RGB"
    assert close(pixel(out, (16, 16)), (200, 30, 30))


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_is_flattened_on_white(fmt):
    img = Image.new("P", (20, 20), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)  # index 0 is black but transparent
    img.paste(1, (0, 0, 10, 20))
    out = decode_bytes(encode(img, fmt, transparency=0)).image
    assert pixel(out, (5, 10)) == (255, 0, 0)
    assert pixel(out, (15, 10)) == WHITE  # not the palette's black


def test_la_and_rgba_are_composited_on_white():
    la = Image.new("LA", (10, 10), (0, 0))  # black, fully transparent
    la.paste((0, 255), (0, 0, 5, 10))  # left half: opaque black
    out = decode_bytes(encode(la, "PNG")).image
    assert pixel(out, (2, 5)) == (0, 0, 0)
    assert pixel(out, (7, 5)) == WHITE

    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 5, 10))
    rgba.paste((0, 0, 0, 128), (5, 0, 10, 5))  # half-transparent black over white: mid grey
    out = decode_bytes(encode(rgba, "PNG")).image
    assert pixel(out, (2, 5)) == (0, 0, 255)
    assert pixel(out, (7, 8)) == WHITE
    assert close(pixel(out, (7, 2)), (127, 127, 127), 2)


def test_16_bit_png_is_scaled_not_clipped():
    arr = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    data = encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = np.asarray(decode_bytes(data).image)
    assert out.shape == (4, 4, 3)
    assert [int(v) for v in out[0, :, 0]] == [0, 64, 128, 255]


def test_32_bit_integer_image_uses_its_range():
    arr = np.array([[0, 1000, 30000, 65535]], dtype=np.int32).repeat(2, axis=0)
    data = encode(Image.fromarray(arr, "I"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    out = np.asarray(decode_bytes(data).image)[0, :, 0]
    assert out[0] == 0 and out[-1] == 255
    assert 100 < out[2] < 130  # 30000/65535 of full scale, not clipped to white


def test_one_bit_image_is_black_and_white():
    img = Image.new("1", (8, 8), 0)
    img.paste(1, (0, 0, 4, 8))
    out = decode_bytes(encode(img, "PNG")).image
    assert pixel(out, (1, 1)) == WHITE
    assert pixel(out, (6, 1)) == (0, 0, 0)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 3
    out = decode_bytes(buf.getvalue()).image
    assert pixel(out, (8, 8)) == (255, 0, 0)


def huge_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height, made row by row (a few hundred kB, no big allocation)."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    comp, rows, parts = zlib.compressobj(1), (b"\x00" + bytes((width + 7) // 8)) * 500, []
    for _ in range(height // 500):
        parts.append(comp.compress(rows))
    parts.append(comp.compress(rows[: (height % 500) * (len(rows) // 500)]) + comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding():
    data = huge_png(30_000, 30_000)
    assert len(data) < 2_000_000
    with pytest.raises(DecodeError) as err:
        decode_bytes(data)
    reason = str(err.value)
    assert "30000x30000" in reason and "--max-pixels" in reason and "\n" not in reason


def test_pixel_limit_is_configurable():
    data = encode(Image.new("RGB", (200, 100), (10, 200, 10)), "PNG")
    with pytest.raises(DecodeError, match="too large"):
        decode_bytes(data, max_pixels=10_000)
    assert decode_bytes(data, max_pixels=20_000).image.size == (200, 100)
    assert decode_bytes(data, max_pixels=None).image.size == (200, 100)


def textured(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like image: smooth gradients, a few shapes and mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    arr = np.stack([128 + 100 * np.sin(6 * x + 1), 128 + 90 * np.cos(5 * y),
                    128 + 80 * np.sin(4 * (x + y))], -1)
    arr[height // 4 : height // 2, width // 3 : width // 2] = (230, 40, 40)
    arr += rng.normal(0, 6, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def test_jpeg_draft_decoding_shrinks_large_jpegs_only():
    big = encode(textured(1600, 1200), "JPEG", quality=92)
    drafted = decode_bytes(big, draft_size=224)
    assert (drafted.width, drafted.height) == (1600, 1200)  # the file's size is reported, not the draft's
    assert min(drafted.image.size) >= 2 * 224 and drafted.image.size[0] < 1600  # DCT-scaled, 2x above input
    small = encode(textured(600, 450), "JPEG", quality=92)
    assert decode_bytes(small, draft_size=224).image.size == (600, 450)  # < 4x the input: full decode


def test_jpeg_draft_embedding_matches_full_decode(tiny_clip):
    """Draft decoding is exact enough: the model's embedding matches processor(images=full decode)."""
    from indexer.encoder import Encoder

    enc = Encoder(tiny_clip, device="cpu")
    data = encode(textured(1600, 1200, seed=3), "JPEG", quality=92)
    drafted = decode_bytes(data, draft_size=enc.image_size)
    assert drafted.image.size[0] < 1600
    full = Image.open(io.BytesIO(data)).convert("RGB")
    a = enc.embed_pixels(dict(enc.processor(images=[drafted.image], return_tensors="np")))
    b = enc.embed_pixels(dict(enc.processor(images=[full], return_tensors="np")))
    assert float((a * b).sum()) >= 0.999


@pytest.mark.parametrize("data,needle", [
    (b"", "empty file"),
    (b"hello, I am a text file\n", "not an image"),
    (encode(textured(64, 64), "JPEG")[:300], "truncated"),
])
def test_bad_bytes_give_one_line_reasons(data, needle):
    with pytest.raises(DecodeError) as err:
        decode_bytes(data)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_content_sniffing_finds_misnamed_images(tmp_path):
    png = tmp_path / "picture.dat"
    png.write_bytes(encode(Image.new("RGB", (4, 4)), "PNG"))
    txt = tmp_path / "notes.dat"
    txt.write_text("not an image")
    assert sniff_format(png.read_bytes()[:16]) == "png"
    assert looks_like_image(png) and not looks_like_image(txt)
    webp = encode(Image.new("RGB", (4, 4)), "WEBP")
    assert sniff_format(webp[:16]) == "webp"


def test_to_rgb_accepts_pil_images_of_any_mode():
    for mode in ["L", "RGBA", "P", "1", "I", "F", "CMYK", "YCbCr", "LA"]:
        assert to_rgb(Image.new(mode, (3, 3))).mode == "RGB"


# ---- hostile files: bombs, odd files, damage ----------------------------------------------------------
def with_exif_chunk(png: bytes, orientation: int) -> bytes:
    """The PNG with an eXIf chunk after IDAT (where PIL only finds it by decoding the pixels first)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    body = exif.tobytes()
    body = body[6:] if body.startswith(b"Exif\x00\x00") else body
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    end = png.rindex(b"IEND") - 4
    return png[:end] + chunk + png[end:]


def test_png_bomb_with_exif_is_refused_before_any_pixel_is_decoded(monkeypatch):
    """PIL's PNG getexif() decodes the whole image to find a late eXIf chunk: it must not run first."""
    from PIL import ImageFile

    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self.size) or real_load(self))
    data = with_exif_chunk(huge_png(30_000, 30_000), 6)
    with pytest.raises(DecodeError, match="30000x30000 = 900 Mpx exceeds the limit of 100 Mpx"):
        decode_bytes(data)
    assert loads == []


def test_exif_orientation_of_a_png_is_still_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))
    out = decode_bytes(with_exif_chunk(encode(img, "PNG"), 6))
    assert (out.width, out.height) == out.image.size == (20, 40)
    assert pixel(out.image, (10, 5)) == (255, 0, 0) and pixel(out.image, (10, 35)) == (0, 0, 255)


BOMB_SCRIPT = """
import io, resource, sys
sys.path.insert(0, "tests")
from test_decode import huge_png, with_exif_chunk
from PIL import Image
from indexer.decode import DecodeError, decode_bytes
from indexer.errors import PixdexError
from indexer.inputs import load_image_input
from search.results import thumbnail_data_uri
data = with_exif_chunk(huge_png(30_000, 30_000), 6)
open(sys.argv[1], "wb").write(data)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
refused = 0
for attempt in (lambda: decode_bytes(data), lambda: decode_bytes(data, draft_size=224),
                lambda: load_image_input(sys.argv[1]), lambda: load_image_input(data),
                lambda: load_image_input(Image.open(io.BytesIO(data)))):
    try:
        attempt()
    except (DecodeError, PixdexError) as exc:
        refused += "too large" in str(exc)
print(refused, thumbnail_data_uri(sys.argv[1]),
      (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_png_bomb_stays_small_in_memory_on_every_path(tmp_path):
    """Decoder, classifier/search inputs (path, bytes, an opened PIL image) and HTML thumbnails."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, str(tmp_path / "bomb.png")], cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    refused, thumb, grew_mb = out.stdout.split()
    assert refused == "5" and thumb == "None"
    assert int(grew_mb) < 100  # the image would take 900 MB decoded


def test_large_but_allowed_image_still_decodes():
    data = huge_png(12_000, 3_000)  # 36 Mpx: under the default limit
    out = decode_bytes(data)
    assert (out.width, out.height) == (12_000, 3_000) and out.image.mode == "RGB"


def test_cmyk_and_16_bit_images_decode_through_the_checked_path():
    cmyk = encode(Image.new("RGB", (64, 48), (20, 120, 220)).convert("CMYK"), "JPEG", quality=95)
    assert close(pixel(decode_bytes(cmyk, max_pixels=64 * 48).image, (5, 5)), (20, 120, 220))
    with pytest.raises(DecodeError, match="64x48"):
        decode_bytes(cmyk, max_pixels=64 * 48 - 1)
    deep = encode(Image.fromarray(np.full((48, 64), 40000, np.uint16)), "PNG")
    assert pixel(decode_bytes(deep, max_pixels=64 * 48).image, (3, 3)) == (156, 156, 156)


def sample_files() -> dict[str, bytes]:
    img = textured(96, 64, seed=5)
    return {"png": encode(img, "PNG"), "jpeg": encode(img, "JPEG", quality=90), "gif": encode(img, "GIF"),
            "webp": encode(img, "WEBP"), "tiff": encode(img, "TIFF"), "bmp": encode(img, "BMP"),
            "png16": encode(Image.fromarray((np.asarray(img.convert("L"), np.uint16) * 257)), "PNG"),
            "cmyk": encode(img.convert("CMYK"), "JPEG")}


@pytest.mark.parametrize("fmt", sorted(sample_files()))
def test_truncated_and_corrupted_files_decode_or_give_one_line_reasons(fmt):
    """Cut and byte-flipped versions of every format: an RGB image of the declared size, or a DecodeError."""
    data = sample_files()[fmt]
    rng = np.random.default_rng(len(data))
    variants = [data[:n] for n in (1, 8, 16, 40, len(data) // 3, len(data) // 2, len(data) - 5)]
    for _ in range(30):
        buf = bytearray(data)
        for pos in rng.integers(0, len(buf), rng.integers(1, 8)):
            buf[pos] = int(rng.integers(0, 256))
        variants.append(bytes(buf))
    failures = 0
    for v in variants:
        try:
            out = decode_bytes(v)
        except DecodeError as exc:
            failures += 1
            assert str(exc) and "\n" not in str(exc)
            continue
        assert out.image.mode == "RGB" and out.image.size == (out.width, out.height)
    assert failures >= 7  # at least every cut-short file is refused


def test_formats_outside_the_indexed_ones_are_not_handed_to_their_decoders():
    eps = encode(Image.new("RGB", (8, 8)), "EPS")  # opening EPS for pixels would run Ghostscript
    with pytest.raises(DecodeError, match="not an image"):
        decode_bytes(eps)


def test_read_file_refuses_fifos_and_devices_without_blocking(tmp_path):
    import os
    import threading

    from indexer.decode import read_file

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    link = tmp_path / "zero.png"
    link.symlink_to("/dev/zero")
    reasons: dict = {}

    def attempt(path):
        try:
            read_file(path)
        except DecodeError as exc:
            reasons[str(path)] = str(exc)

    threads = [threading.Thread(target=attempt, args=(p,), daemon=True) for p in (fifo, link, tmp_path)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads), "reading a FIFO or a device did not return"
    assert reasons == {str(fifo): "a FIFO (named pipe), not a regular file",
                       str(link): "a character device, not a regular file",
                       str(tmp_path): "a directory, not a regular file"}
    bare = tmp_path / "pipe"
    os.mkfifo(bare)
    sniff = threading.Thread(target=lambda: reasons.update(sniffed=looks_like_image(bare)), daemon=True)
    sniff.start()
    sniff.join(timeout=20)
    assert reasons.get("sniffed") is False  # content sniffing does not open a FIFO


def test_photo_metadata_of_a_path_does_not_open_a_fifo(tmp_path):
    """Older stores gain photo columns by reading each file's header: a file swapped for a FIFO
    must not hang it."""
    import os
    import threading

    from indexer.exif import photo_meta_from_path

    fifo = tmp_path / "was-a-photo.jpg"
    os.mkfifo(fifo)
    got: list = []
    t = threading.Thread(target=lambda: got.append(photo_meta_from_path(str(fifo))), daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "reading the header of a FIFO did not return"
    assert got[0].problems == ["unreadable header (not a regular file)"] and got[0].taken is None
