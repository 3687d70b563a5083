"""Query expressions: free text, images, stored items and raw embeddings, mixed with weights and signs.

The syntax follows rclip (``"2:golden retriever" + ./pool.jpg - "grass"``)::

    query  := [sign] term (sign term)*
    sign   := '+' | '-'                       an operator only when it stands alone
                                              (spaces or quotes around it)
    term   := [weight ':'] [kind ':'] value   the prefixes may also sit inside the quotes:
                                              "2:golden retriever"
    weight := positive number                 2, 0.5, 1.5
    kind   := text | image | id | like        text, an image path/URL, a stored id, a stored path
    value  := "double quoted" | 'single quoted' | bare words up to the next standalone + or -

Without a kind, a value that is a URL or an existing image file is an image; anything else is text.
`images` limits where image terms may come from: "any" (the CLI and Python: paths and URLs), "urls"
(a server run with --allow-url-queries) or "none" (a server: images come as uploads or stored ids).
The query vector is normalise(sum(sign * weight * normalise(embedding(term)))).
Parse errors are PixdexError naming the 1-based column: ``col 14: expected a term after '-'``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import InvalidType, InvalidValue, PixdexError
from indexer.ids import check_id

KINDS = ("text", "image", "id", "like", "embedding")
PREFIX_KINDS = ("text", "image", "id", "like")
IMAGE_SOURCES = ("any", "urls", "none")  # where image terms may come from (see the module docstring)
_WEIGHT = re.compile(r"(\d+(?:\.\d*)?|\.\d+):")
_KIND = re.compile(r"(text|image|id|like):", re.IGNORECASE)
_QUOTES = "\"'"


@dataclass(frozen=True)
class Term:
    """One part of a query: what to embed (kind, value) and its signed weight."""

    kind: str  # text | image | id | like | embedding
    value: Any  # str for text/image/like, int for id, path/PIL/bytes for image, np.ndarray for embedding
    weight: float = 1.0  # negative: subtract this term

    def describe(self) -> str:
        if self.kind == "embedding":
            return f"<embedding {np.shape(self.value)[-1]}-d>"
        if self.kind == "image" and not isinstance(self.value, (str, os.PathLike)):
            return f"<{type(self.value).__name__} image>"
        return f"{self.kind}:{self.value}" if self.kind in ("id", "like") else str(self.value)


@dataclass(frozen=True)
class Query:
    """A weighted mix of terms; `label` is how results name it (the text as typed, when parsed)."""

    terms: tuple[Term, ...]
    label: str = field(default="", compare=False)

    def __post_init__(self):
        if not self.terms:
            raise PixdexError("empty query")
        if not self.label:
            object.__setattr__(self, "label", _label(self.terms))

    @property
    def is_single(self) -> bool:
        return len(self.terms) == 1 and self.terms[0].weight > 0


def _label(terms: Sequence[Term]) -> str:
    out = []
    for i, t in enumerate(terms):
        sign = "-" if t.weight < 0 else "+"
        w = abs(t.weight)
        body = (f"{w:g}:" if w != 1 else "") + t.describe()
        out.append(body if i == 0 and sign == "+" else f"{sign} {body}")
    return " ".join(out)


# ---- parsing ------------------------------------------------------------------------------------
class _Parser:
    """A hand-written scanner over one query string (positions are kept for error messages)."""

    def __init__(self, text: str, images: str = "any"):
        self.s = text
        self.n = len(text)
        self.images = images

    def error(self, pos: int, what: str) -> PixdexError:
        return PixdexError(f"cannot parse query {self.s!r}: col {pos + 1}: {what}")

    def skip_ws(self, pos: int) -> int:
        while pos < self.n and self.s[pos].isspace():
            pos += 1
        return pos

    def is_operator(self, pos: int) -> bool:
        """A '+' or '-' standing alone: followed by a space, a quote or the end."""
        if pos >= self.n or self.s[pos] not in "+-":
            return False
        return pos + 1 == self.n or self.s[pos + 1].isspace() or self.s[pos + 1] in _QUOTES

    def parse(self) -> Query:
        terms: list[Term] = []
        pos = self.skip_ws(0)
        if pos == self.n:
            raise PixdexError("empty query")
        sign, op_pos = 1.0, None
        if self.is_operator(pos):
            sign, op_pos = (-1.0 if self.s[pos] == "-" else 1.0), pos
            pos = self.skip_ws(pos + 1)
        while True:
            if pos >= self.n:
                where = f"after '{self.s[op_pos]}'" if op_pos is not None else ""
                raise self.error(pos, f"expected a term {where}".strip() + ", found the end")
            if self.is_operator(pos):
                raise self.error(pos, f"expected a term after '{self.s[op_pos]}', found '{self.s[pos]}'"
                                 if op_pos is not None else f"expected a term, found '{self.s[pos]}'")
            term, pos = self.term(pos, sign)
            terms.append(term)
            pos = self.skip_ws(pos)
            if pos >= self.n:
                break
            if not self.is_operator(pos):
                raise self.error(pos, f"expected '+' or '-' between terms, found {self.s[pos]!r}")
            sign, op_pos = (-1.0 if self.s[pos] == "-" else 1.0), pos
            pos = self.skip_ws(pos + 1)
        if all(t.weight < 0 for t in terms):
            raise self.error(0, "a query needs at least one positive term")
        return Query(tuple(terms), label=self.s.strip())

    def prefixes(self, text: str, pos: int, weight: float | None, kind: str | None, base: int):
        """Read optional `weight:` then `kind:` prefixes at text[pos:]; base maps to query columns."""
        if weight is None and kind is None and (m := _WEIGHT.match(text, pos)):
            weight = float(m.group(1))
            if weight <= 0:
                raise self.error(base + pos, "a weight must be greater than 0 (use '-' to subtract a term)")
            pos = m.end()
        if kind is None and (m := _KIND.match(text, pos)):
            kind = m.group(1).lower()
            pos = m.end()
        return weight, kind, pos

    def term(self, start: int, sign: float) -> tuple[Term, int]:
        weight, kind, pos = self.prefixes(self.s, start, None, None, 0)
        if pos < self.n and self.s[pos] in _QUOTES:
            value, end = self.quoted(pos)
            if end < self.n and not self.s[end].isspace() and not self.is_operator(end):
                raise self.error(end, "expected a space, '+' or '-' after the closing quote")
            weight, kind, inner = self.prefixes(value, 0, weight, kind, pos + 1)
            value, value_pos = value[inner:], pos + 1 + inner
        else:
            end = pos
            while end < self.n and not (self.s[end].isspace() and self.is_operator(self.skip_ws(end))):
                end += 1
            value, value_pos = self.s[pos:end], pos
        value = value.strip()
        if not value:
            raise self.error(value_pos, "empty term")
        return make_term(value, kind, sign * (weight or 1.0), lambda msg: self.error(value_pos, msg),
                         images=self.images), end

    def quoted(self, pos: int) -> tuple[str, int]:
        quote, out, i = self.s[pos], [], pos + 1
        while i < self.n:
            c = self.s[i]
            if c == "\\" and i + 1 < self.n and self.s[i + 1] in (quote, "\\"):
                out.append(self.s[i + 1])
                i += 2
                continue
            if c == quote:
                return "".join(out), i + 1
            out.append(c)
            i += 1
        raise self.error(pos, f"unterminated quote {quote} (no closing {quote} before the end)")


def is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def looks_like_image_ref(value: str) -> bool:
    """True for URLs and existing image files: such bare values are image queries, not text."""
    if is_url(value) or value.startswith("data:image/"):
        return True
    path = Path(value).expanduser()
    if not path.is_file():
        return False
    from indexer.decode import looks_like_image

    return looks_like_image(path)


def make_term(value: str, kind: str | None, weight: float, error=None, images: str = "any") -> Term:
    """A term from its text and optional kind prefix (error(msg) builds the exception to raise).

    images="none" refuses image terms and reads bare values as text without touching the file system;
    images="urls" allows http(s) URLs only.
    """
    error = error or (lambda msg: PixdexError(f"query term {value!r}: {msg}"))
    if images not in IMAGE_SOURCES:
        raise InvalidValue(f"images must be one of {', '.join(IMAGE_SOURCES)}, got {images!r}")
    if kind == "id":
        if not re.fullmatch(r"\d+", value):
            raise error(f"an id must be a whole number, got {value!r}")
        try:
            return Term("id", check_id(int(value)), weight)
        except (PixdexError, ValueError) as exc:  # ValueError: more digits than int() reads
            raise error(str(exc) if isinstance(exc, PixdexError) else "the id is out of range") from None
    if kind == "image":
        if images == "none" or images == "urls" and not is_url(value):
            raise error("this server takes images only as uploads or stored ids (id:N, like:PATH)"
                        + (" or http(s) URLs" if images == "urls" else "") + ", not paths"
                        + ("" if images == "urls" else " or URLs"))
        return Term("image", value, weight)
    if kind in ("like", "text"):
        return Term(kind, value, weight)
    if images == "any" and looks_like_image_ref(value) or images == "urls" and is_url(value):
        return Term("image", value, weight)
    return Term("text", value, weight)


def parse_query(text: str, images: str = "any") -> Query:
    """Parse one query string (see the module docstring for the grammar and `images`)."""
    if not isinstance(text, str):
        raise InvalidType(f"a query must be a string, got {type(text).__name__}")
    return _Parser(text, images).parse()


def quote_term(arg: str) -> str:
    """A command-line argument as one quoted term (operators between arguments stay operators)."""
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def queries_from_args(args: Sequence[str]) -> list[str]:
    """Group command-line words into query strings: words joined by a lone '+' or '-' form one mix.

    ["a cat", "a dog"] -> two queries; ["2:golden retriever", "+", "./pool.jpg", "-", "grass"] -> one.
    A word with no operator next to it is parsed as a whole query string, so '"a" + "b"' also works.
    """
    groups: list[list[str]] = []
    join_next = False
    for arg in args:
        if arg in ("+", "-"):
            if not groups:
                groups.append([])
            groups[-1].append(arg)
            join_next = True
            continue
        if join_next and groups:
            groups[-1].append(arg)
        else:
            groups.append([arg])
        join_next = False
    out = []
    for g in groups:
        if len(g) == 1:
            out.append(g[0])
        else:
            out.append(" ".join(a if a in ("+", "-") else quote_term(a) for a in g))
    return out


# ---- anything -> Query ---------------------------------------------------------------------------
def as_query(obj: Any) -> Query:
    """A Query from a string (parsed), a Query/Term, a path, PIL image, bytes, or a 1-d embedding."""
    if isinstance(obj, Query):
        return obj
    if isinstance(obj, Term):
        return Query((obj,))
    if isinstance(obj, str):
        return parse_query(obj)
    if isinstance(obj, os.PathLike):
        return Query((Term("image", os.fspath(obj)),), label=os.fspath(obj))
    if isinstance(obj, (bytes, bytearray)):
        return Query((Term("image", bytes(obj)),), label="<bytes image>")
    if isinstance(obj, np.ndarray):
        if obj.ndim != 1:
            raise PixdexError(f"an embedding query must be 1-d, got shape {obj.shape}")
        return Query((Term("embedding", obj),))
    try:
        from PIL import Image

        if isinstance(obj, Image.Image):
            return Query((Term("image", obj),), label="<PIL image>")
    except ImportError:  # pragma: no cover
        pass
    raise InvalidType(f"unsupported query of type {type(obj).__name__}: "
                      "use text, an image, an id or an embedding")


def mix(*parts: tuple[float, Any]) -> Query:
    """A weighted mix from (weight, thing) pairs; negative weights subtract:
    mix((2, "dog"), (-1, "grass"))."""
    terms = []
    for weight, thing in parts:
        if weight == 0:
            raise PixdexError("a weight must not be 0")
        for t in as_query(thing).terms:
            terms.append(Term(t.kind, t.value, t.weight * weight))
    if not any(t.weight > 0 for t in terms):
        raise PixdexError("a query needs at least one positive term")
    return Query(tuple(terms))
