"""Photo metadata from crafted files: every field, time offsets, and malformed or hostile EXIF."""

from __future__ import annotations

import io
import struct
from datetime import datetime

import pytest
from PIL import Image, PngImagePlugin
from PIL.TiffImagePlugin import IFDRational

from indexer.decode import DecodeError, decode_bytes
from indexer.exif import PHOTO_COLUMNS, photo_meta, photo_meta_from_bytes


def exif_of(ifd0: dict | None = None, sub: dict | None = None, gps: dict | None = None) -> Image.Exif:
    ex = Image.Exif()
    for k, v in (ifd0 or {}).items():
        ex[k] = v
    if sub:
        ex.get_ifd(0x8769).update(sub)
    if gps:
        ex.get_ifd(0x8825).update(gps)
    return ex


def photo(fmt: str = "JPEG", exif=None, size=(40, 30), **save) -> bytes:
    buf = io.BytesIO()
    img = Image.new("RGB", size, (200, 30, 30))
    if exif is not None:
        save["exif"] = exif
    img.save(buf, fmt, **save)
    return buf.getvalue()


def dms(d, m, s) -> tuple:
    return (IFDRational(d, 1), IFDRational(m, 1), IFDRational(int(s * 100), 100))


PIXEL = exif_of(
    {0x010F: "Google", 0x0110: "Pixel 8", 0x0112: 6},
    {0x9003: "2024:06:01 12:34:56", 0x9011: "+02:00", 0xA433: "Google", 0xA434: "Pixel 8 back camera"},
    {1: "S", 2: dms(33, 51, 34.56), 3: "W", 4: dms(151, 12, 30.0)},
)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_every_field_is_read(fmt):
    meta = photo_meta_from_bytes(photo(fmt, PIXEL))
    assert meta.problems == []
    assert meta.taken == datetime(2024, 6, 1, 12, 34, 56)
    assert meta.taken_offset == "+02:00" and meta.taken_iso() == "2024-06-01T12:34:56+02:00"
    assert (meta.camera_make, meta.camera_model, meta.lens) == ("Google", "Pixel 8", "Pixel 8 back camera")
    assert meta.gps_lat == pytest.approx(-(33 + 51 / 60 + 34.56 / 3600), abs=1e-6)  # south: negative
    assert meta.gps_lon == pytest.approx(-(151 + 12 / 60 + 30 / 3600), abs=1e-6)  # west: negative
    assert meta.orientation == 6
    assert set(meta.columns()) == set(PHOTO_COLUMNS)


def test_decode_applies_orientation_and_keeps_the_metadata():
    decoded = decode_bytes(photo("JPEG", PIXEL, size=(40, 30)))
    assert (decoded.width, decoded.height) == (30, 40)  # rotated 90 degrees, as the photo is shown
    assert decoded.image.size == (30, 40)
    assert decoded.photo.camera_model == "Pixel 8" and decoded.photo.orientation == 6


def test_capture_time_precedence_and_offsets():
    def taken(ifd0=None, sub=None):
        m = photo_meta_from_bytes(photo("JPEG", exif_of(ifd0, sub)))
        return m.taken_iso(), m.problems

    both = {0x9003: "2020:01:02 03:04:05", 0x9004: "2021:01:01 00:00:00", 0x9011: "-08:00", 0x9012: "+01:00"}
    assert taken({0x0132: "2022:05:05 05:05:05"}, both) == ("2020-01-02T03:04:05-08:00", [])
    assert taken(None, {0x9004: "2021:01:01 10:00:00", 0x9012: "+05:30"}) == ("2021-01-01T10:00:00+05:30", [])
    assert taken({0x0132: "2022:05:05 05:05:05"}, {0x9010: "+0100"}) == ("2022-05-05T05:05:05+01:00", [])
    assert taken({0x0132: "2022:05:05 05:05:05"}) == (
        "2022-05-05T05:05:05",
        [],
    )  # no offset given: none made up
    assert taken(None, {0x9003: "2020:01:02 03:04:05", 0x9011: "   :  "}) == ("2020-01-02T03:04:05", [])
    iso, problems = taken(None, {0x9003: "2020:01:02 03:04:05", 0x9011: "+25:00"})
    assert iso == "2020-01-02T03:04:05" and problems == ["bad time offset '+25:00'"]
    # a broken DateTimeOriginal falls back to the next date, with a warning
    iso, problems = taken({0x0132: "2019:09:09 09:09:09"}, {0x9003: "0000:00:00 00:00:00"})
    assert iso == "2019-09-09T09:09:09" and problems == ["bad date '0000:00:00 00:00:00'"]


def test_no_metadata_is_not_a_problem():
    meta = photo_meta_from_bytes(photo("PNG"))
    assert meta.columns() == dict.fromkeys(PHOTO_COLUMNS) and meta.problems == []


@pytest.mark.parametrize(
    "sub, gps, ifd0, column, problem",
    [
        ({0x9003: "0000:00:00 00:00:00"}, None, None, "taken", "bad date"),
        ({0x9003: "2024:13:45 99:00:00"}, None, None, "taken", "bad date"),
        ({0x9003: "1001:01:01 00:00:00"}, None, None, "taken", "implausible date"),
        ({0x9003: "yesterday"}, None, None, "taken", "bad date"),
        (
            None,
            {1: "N", 2: (IFDRational(10, 0), IFDRational(0, 0), IFDRational(0, 0)), 3: "E", 4: dms(10, 0, 0)},
            None,
            "gps_lat",
            "bad GPS latitude",
        ),
        (None, {1: "N", 2: dms(95, 0, 0), 3: "E", 4: dms(10, 0, 0)}, None, "gps_lat", "beyond 90"),
        (None, {1: "Q", 2: dms(45, 0, 0), 3: "E", 4: dms(10, 0, 0)}, None, "gps_lat", "reference 'Q'"),
        (None, None, {0x0112: 9}, "orientation", "orientation 9"),
        (None, None, {0x010F: "\x01\x02garbage\x7f"}, "camera_make", "not a readable name"),
        (None, None, {0x0110: "x" * 500}, "camera_model", "not a readable name"),
    ],
)
def test_malformed_values_become_null_with_a_warning(sub, gps, ifd0, column, problem):
    base = {0x010F: "Canon", 0x0110: "EOS R5", 0x0112: 1}
    meta = photo_meta_from_bytes(photo("JPEG", exif_of({**base, **(ifd0 or {})}, sub, gps)))
    assert meta.columns()[column] is None
    assert any(problem in p for p in meta.problems), meta.problems
    # the other fields of the same file are still read
    if column not in ("camera_make", "camera_model"):
        assert meta.camera_make == "Canon"


def tiff(
    entries: list[tuple[int, int, int, bytes | int]],
    next_ifd: int = 0,
    count_override: int | None = None,
    extra: bytes = b"",
) -> bytes:
    """A little-endian TIFF/EXIF blob with one IFD at offset 8: entries are (tag, type, count, value)."""
    n = len(entries) if count_override is None else count_override
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", n))
    for tag, typ, count, value in entries:
        raw = struct.pack("<I", value) if isinstance(value, int) else value.ljust(4, b"\x00")[:4]
        out += struct.pack("<HHI", tag, typ, count) + raw
    out += struct.pack("<I", next_ifd) + extra
    return b"Exif\x00\x00" + bytes(out)


@pytest.mark.parametrize(
    "blob",
    [
        tiff(
            [(0x010F, 2, 5, b"Sony"), (0x8769, 4, 1, 8)]
        ),  # the Exif IFD pointer points back at IFD0: a loop
        tiff([(0x010F, 2, 5, b"Sony")], next_ifd=8),  # IFD0's next IFD is itself
        tiff([(0x010F, 2, 5, b"Sony"), (0x8825, 4, 1, 0xFFFFFF0)]),  # GPS IFD far beyond the data
        tiff([(0x010F, 2, 5, b"Sony")], count_override=65535),  # a huge entry count over 18 bytes
        tiff([(0x010F, 2, 5, b"Sony"), (0x9003, 2, 0x7FFFFFFF, 0x40)]),  # a 2 GB string
        tiff(
            [(0x010F, 2, 5, b"Sony"), (0x927C, 7, 64, 26)], extra=bytes(range(256)) * 2
        ),  # MakerNote garbage
        b"Exif\x00\x00not a tiff header at all",
        b"Exif\x00\x00MM\x00*" + b"\xff" * 40,
    ],
)
def test_hostile_exif_never_fails_the_image(blob):
    data = photo("JPEG", blob)
    meta = photo_meta_from_bytes(data)
    assert meta.taken is None and meta.gps_lat is None
    assert meta.camera_make in (None, "Sony")
    decoded = decode_bytes(data)  # the image itself still decodes
    assert decoded.image.size == (40, 30)


def test_xmp_capture_time_when_exif_has_none():
    info = PngImagePlugin.PngInfo()
    info.add_itxt(
        "XML:com.adobe.xmp",
        '<x:xmpmeta><rdf:Description xmp:CreateDate="2023-07-14T18:20:00+09:00"/></x:xmpmeta>',
    )
    meta = photo_meta_from_bytes(photo("PNG", pnginfo=info))
    assert meta.taken_iso() == "2023-07-14T18:20:00+09:00"


def test_reading_metadata_never_decodes_pixels():
    """A PNG's own getexif() loads the whole image; photo_meta reads only what the header holds."""
    data = photo("PNG", exif_of({0x010F: "Nikon"}))
    with Image.open(io.BytesIO(data)) as img:
        assert photo_meta(img).camera_make == "Nikon"
        assert img.tile, "the pixels were decoded"
    with Image.open(io.BytesIO(photo("PNG"))) as img:  # no eXIf chunk before the pixels
        photo_meta(img)
        assert img.tile, "the pixels were decoded"


def test_bomb_is_refused_before_any_metadata_is_read(monkeypatch):
    """The declared-size check comes first: a huge PNG is refused without decoding or reading EXIF."""
    import indexer.decode as decode

    calls = []
    monkeypatch.setattr(decode, "photo_meta", lambda img: calls.append(img) or None)
    with pytest.raises(DecodeError, match="too large"):
        decode_bytes(photo("PNG", exif_of({0x010F: "Nikon"}), size=(400, 300)), max_pixels=1000)
    assert calls == []
