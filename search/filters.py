"""A small, safe filter language over store metadata (no eval): tokenizer, recursive descent, pyarrow.

    expr  := or
    or    := and (OR and)*
    and   := not (AND not)*
    not   := NOT not | '(' expr ')' | test
    test  := value op value                       op: = == != <> < <= > >=
           | value [NOT] IN '(' literal, ... ')'
           | value [NOT] LIKE 'pat%'  |  value [NOT] ILIKE 'pat%'   (SQL: % any run, _ one char)
           | value [NOT] GLOB '*.png'                                (shell: * any run, ? one char, [abc])
           | value IS [NOT] NULL
           | NEAR '(' lat, lon, km ')'              photos taken within km of a place (gps_lat, gps_lon)
           | column                                 a boolean column on its own
    value := column | 'string' | "string" | number | TRUE | FALSE

A filter is at most MAX_FILTER_CHARS characters and nests at most MAX_DEPTH levels of parentheses
and NOT (bounded CPU and stack for the CLI and the server alike); integers must fit in 64 bits.
Columns are the store's metadata columns (id, path, bytes, mtime, width, height, sha256, source and
tag columns, photo columns such as taken and camera_model); a timestamp column compares with a quoted
date ('2024-06-01', '2024-06-01 18:30', '2024-06' or '2024'). Quote odd names with backticks.
Keywords are case-insensitive. Comparisons with a missing (null) value are false, as in SQL.
On a list column a test holds when any element passes it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from indexer.arrow_values import array, bool_array, bool_numpy, float_numpy, id_array, scalar
from indexer.errors import InvalidType, LimitExceeded, PixdexError

MAX_FILTER_CHARS = 10_000  # an IN list of ~1,000 ids fits; a 1.4 MB filter once cost 7 s of CPU
MAX_DEPTH = 32  # nested parentheses / NOTs (the parser recurses per level)
KEYWORDS = {"AND", "OR", "NOT", "IN", "LIKE", "ILIKE", "GLOB", "IS", "NULL", "TRUE", "FALSE"}
COMPARISONS = {"=": "equal", "==": "equal", "!=": "not_equal", "<>": "not_equal", "<": "less",
               "<=": "less_equal", ">": "greater", ">=": "greater_equal"}
_TOKEN = re.compile(
    r"""(?P<ws>\s+)
      | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
      | (?P<string>'(?:[^']|'')*'|"(?:[^"]|"")*")
      | (?P<backquoted>`[^`]+`)
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
      | (?P<op><=|>=|!=|<>|==|=|<|>|\(|\)|,)""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str  # number | string | column | keyword | op | end
    value: Any
    pos: int  # 0-based offset in the expression


def tokenize(text: str) -> list[Token]:
    """Split a filter expression into tokens; an unknown character is an error naming its column."""
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            if text[pos] in "'\"`":
                raise _error(text, pos, f"unterminated {text[pos]} quote")
            raise _error(text, pos, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup
        raw = m.group()
        if kind == "number":
            out.append(Token("number", _number(text, raw, pos), pos))
        elif kind == "string":
            out.append(Token("string", raw[1:-1].replace(raw[0] * 2, raw[0]), pos))
        elif kind == "backquoted":
            out.append(Token("column", raw[1:-1], pos))
        elif kind == "word":
            up = raw.upper()
            out.append(Token("keyword", up, pos) if up in KEYWORDS else Token("column", raw, pos))
        elif kind == "op":
            out.append(Token("op", raw, pos))
        pos = m.end()
    out.append(Token("end", None, len(text)))
    return out


def _number(text: str, raw: str, pos: int) -> int | float:
    """A numeric literal: float when it has a point or exponent, else an int that must fit in int64."""
    if re.search(r"[.eE]", raw):
        return float(raw)
    if len(raw.lstrip("+-")) > 19 or not -(2**63) <= int(raw) < 2**63:
        raise _error(text, pos, f"number {raw[:24]}{'...' if len(raw) > 24 else ''} is out of range "
                     "(integers must fit in 64 bits)")
    return int(raw)


def _error(text: str, pos: int, what: str) -> PixdexError:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return PixdexError(f"cannot read filter {shown!r}: col {pos + 1}: {what}")


# ---- syntax tree ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    name: str
    pos: int


@dataclass(frozen=True)
class Literal:
    value: Any  # str, int, float, bool or None
    pos: int


@dataclass(frozen=True)
class Compare:
    op: str  # pyarrow function name
    left: Column | Literal
    right: Column | Literal


@dataclass(frozen=True)
class Match:
    how: str  # in | like | ilike | glob | null
    subject: Column | Literal
    arg: Any  # list of literals for IN, a pattern for LIKE/GLOB, None for IS NULL
    negate: bool = False


@dataclass(frozen=True)
class BoolOp:
    op: str  # and | or | not
    args: tuple


@dataclass(frozen=True)
class Near:
    lat: float
    lon: float
    km: float
    pos: int


@dataclass(frozen=True)
class Truth:
    subject: Column  # a boolean column used as a condition


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def error(self, what: str, tok: Token | None = None) -> PixdexError:
        tok = tok or self.tok
        found = "the end" if tok.kind == "end" else repr(self.text[tok.pos:].split()[0] if tok.kind != "op"
                                                         else tok.value)
        return _error(self.text, tok.pos, f"expected {what}, found {found}")

    def accept(self, kind: str, value: Any = None) -> Token | None:
        t = self.tok
        if t.kind == kind and (value is None or t.value == value):
            self.i += 1
            return t
        return None

    def expect(self, kind: str, value: Any, what: str) -> Token:
        t = self.accept(kind, value)
        if t is None:
            raise self.error(what)
        return t

    def parse(self):
        if self.tok.kind == "end":
            raise PixdexError("empty filter expression")
        node = self.or_()
        if self.tok.kind != "end":
            raise self.error("AND, OR or the end of the filter")
        return node

    def or_(self):
        args = [self.and_()]
        while self.accept("keyword", "OR"):
            args.append(self.and_())
        return args[0] if len(args) == 1 else BoolOp("or", tuple(args))

    def and_(self):
        args = [self.not_()]
        while self.accept("keyword", "AND"):
            args.append(self.not_())
        return args[0] if len(args) == 1 else BoolOp("and", tuple(args))

    def not_(self):
        if self.tok.kind in ("keyword", "op") and self.tok.value in ("NOT", "("):
            if self.depth >= MAX_DEPTH:
                raise _error(self.text, self.tok.pos, f"nested more than {MAX_DEPTH} levels deep")
            self.depth += 1
            try:
                if self.accept("keyword", "NOT"):
                    return BoolOp("not", (self.not_(),))
                self.accept("op", "(")
                node = self.or_()
                self.expect("op", ")", "')'")
                return node
            finally:
                self.depth -= 1
        return self.test()

    def value(self) -> Column | Literal:
        t = self.tok
        if t.kind == "column":
            self.i += 1
            return Column(t.value, t.pos)
        if t.kind in ("number", "string"):
            self.i += 1
            return Literal(t.value, t.pos)
        if t.kind == "keyword" and t.value in ("TRUE", "FALSE", "NULL"):
            self.i += 1
            return Literal({"TRUE": True, "FALSE": False, "NULL": None}[t.value], t.pos)
        raise self.error("a column name, a quoted string or a number")

    def literal(self) -> Literal:
        t = self.tok
        v = self.value()
        if not isinstance(v, Literal):
            raise self.error("a literal value (quoted string or number)", t)
        return v

    def near(self) -> Near:
        """NEAR(lat, lon, km): three numbers, each checked against its range."""
        start = self.tok
        self.i += 1
        self.expect("op", "(", "'(' after NEAR")
        args = []
        for what, lo, hi in (("latitude", -90, 90), ("longitude", -180, 180), ("distance in km", 0, 20038)):
            if args:
                self.expect("op", ",", "',' between NEAR's latitude, longitude and km")
            t = self.tok
            if t.kind != "number":
                raise self.error(f"a number ({what})")
            if not lo <= t.value <= hi or (what.startswith("distance") and t.value <= 0):
                raise _error(self.text, t.pos, f"{what} {t.value} is out of range ({lo} to {hi})")
            self.i += 1
            args.append(float(t.value))
        self.expect("op", ")", "')' after NEAR's km")
        return Near(*args, start.pos)

    def test(self):
        nxt = self.tokens[self.i + 1] if self.i + 1 < len(self.tokens) else None
        if self.tok.kind == "column" and self.tok.value.upper() == "NEAR" and nxt and nxt.value == "(":
            return self.near()
        left = self.value()
        t = self.tok
        if t.kind == "op" and t.value in COMPARISONS:
            self.i += 1
            right = self.value()
            if isinstance(right, Literal) and right.value is None or (
                    isinstance(left, Literal) and left.value is None):
                raise _error(self.text, t.pos, "compare with NULL using IS NULL or IS NOT NULL")
            return Compare(COMPARISONS[t.value], left, right)
        if self.accept("keyword", "IS"):
            negate = bool(self.accept("keyword", "NOT"))
            self.expect("keyword", "NULL", "NULL after IS")
            return Match("null", left, None, negate)
        negate = bool(self.accept("keyword", "NOT"))
        if self.accept("keyword", "IN"):
            self.expect("op", "(", "'(' after IN")
            items = [self.literal()]
            while self.accept("op", ","):
                items.append(self.literal())
            self.expect("op", ")", "',' or ')'")
            return Match("in", left, tuple(items), negate)
        for how in ("LIKE", "ILIKE", "GLOB"):
            if self.accept("keyword", how):
                pat = self.literal()
                if not isinstance(pat.value, str):
                    raise _error(self.text, pat.pos, f"{how} needs a quoted pattern")
                return Match(how.lower(), left, pat.value, negate)
        if negate:
            raise self.error("IN, LIKE, ILIKE or GLOB after NOT")
        if isinstance(left, Column) and t.kind in ("end", "keyword") and t.value in (None, "AND", "OR") or (
                isinstance(left, Column) and t.kind == "op" and t.value == ")"):
            return Truth(left)
        raise self.error("a comparison (= != < <= > >=), IN, LIKE, GLOB or IS NULL")


# ---- evaluation ----------------------------------------------------------------------------------
def glob_to_regex(pattern: str) -> str:
    """An anchored RE2 regex for a shell glob (* any run including '/', ? one char, [...] a class)."""
    out, i = ["^"], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[" and (j := pattern.find("]", i + 2 if pattern[i + 1:i + 2] in ("!", "^")
                                             else i + 1)) > 0:
            body = pattern[i + 1:j]
            if body[:1] in ("!", "^"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    out.append("$")
    return "".join(out)


class Filter:
    """A parsed filter: mask(table) gives the rows it keeps; columns are checked against the table."""

    def __init__(self, text: str):
        if len(text) > MAX_FILTER_CHARS:
            raise LimitExceeded(f"filter of {len(text):,} characters exceeds the limit of "
                                f"{MAX_FILTER_CHARS:,}")
        self.text = text
        self.tree = _Parser(text).parse()
        self._names: dict[str, str] = {}

    def columns(self) -> list[Column]:
        found: list[Column] = []

        def walk(node):
            if isinstance(node, Column):
                found.append(node)
            elif isinstance(node, Compare):
                walk(node.left)
                walk(node.right)
            elif isinstance(node, (Match, Truth)):
                walk(node.subject)
            elif isinstance(node, BoolOp):
                for a in node.args:
                    walk(a)

        walk(self.tree)
        return found

    def check(self, schema: pa.Schema) -> None:
        """Refuse unknown columns with one line that lists the available ones."""
        self._names = {}
        cols = self.columns()
        if self._has_near(self.tree):
            cols += [Column("gps_lat", 0), Column("gps_lon", 0)]
        for col in cols:
            folded = [n for n in schema.names if n.lower() == col.name.lower()]
            if col.name in schema.names or len(folded) == 1:  # unquoted names match case-insensitively
                self._names[col.name] = col.name if col.name in schema.names else folded[0]
            else:
                raise PixdexError(
                    f"filter {self.text!r}: col {col.pos + 1}: unknown column '{col.name}'; "
                    f"available: {', '.join(schema.names)}")

    def _has_near(self, node) -> bool:
        return isinstance(node, Near) or (isinstance(node, BoolOp)
                                          and any(self._has_near(a) for a in node.args))

    def mask(self, table: pa.Table) -> np.ndarray:
        """Boolean numpy mask over table rows (nulls count as false)."""
        self.check(table.schema)
        result = self._eval(self.tree, table)
        if isinstance(result, np.ndarray):
            return result
        return bool_numpy(result)

    # each node evaluates to a boolean pyarrow array (nulls allowed) or a numpy bool mask
    def _eval(self, node, table: pa.Table):
        import pyarrow.compute as pc  # on first use: a query without filters needs no compute kernels

        if isinstance(node, BoolOp):
            parts = [self._as_arrow(self._eval(a, table)) for a in node.args]
            if node.op == "not":
                return pc.invert(parts[0])
            fn = pc.and_kleene if node.op == "and" else pc.or_kleene
            out = parts[0]
            for p in parts[1:]:
                out = fn(out, p)
            return out
        if isinstance(node, Truth):
            col = self._column(node.subject, table)
            if not pa.types.is_boolean(col.type):
                raise self._type_error(node.subject,
                                       f"column '{node.subject.name}' is {col.type}, not boolean: "
                                       "compare it with a value")
            return col
        if isinstance(node, Compare):
            return self._compare(node, table)
        if isinstance(node, Near):
            return _near(node, self._column(Column("gps_lat", 0), table),
                         self._column(Column("gps_lon", 0), table))
        return self._match(node, table)

    @staticmethod
    def _as_arrow(x):
        return bool_array(x) if isinstance(x, np.ndarray) else x

    def _type_error(self, at, what: str) -> PixdexError:
        return _error(self.text, at.pos, what)

    def _column(self, col: Column, table: pa.Table):
        arr = table[self._names.get(col.name, col.name)]
        if pa.types.is_dictionary(arr.type):
            arr = arr.cast(arr.type.value_type)
        return arr

    def _operand(self, v, table: pa.Table, other_type=None):
        if isinstance(v, Column):
            return self._column(v, table)
        return _scalar(v, other_type, self)

    def _compare(self, node: Compare, table: pa.Table):
        import pyarrow.compute as pc

        left, right = node.left, node.right
        if isinstance(left, Literal) and isinstance(right, Column):  # 3 < width  ->  width > 3
            flip = {"less": "greater", "greater": "less", "less_equal": "greater_equal",
                    "greater_equal": "less_equal"}
            return self._compare(Compare(flip.get(node.op, node.op), right, left), table)
        fn = getattr(pc, node.op)
        if isinstance(left, Literal):  # two literals: a constant
            same = bool(fn(scalar(left.value), scalar(right.value)).as_py())
            return bool_array(np.full(table.num_rows, same))
        col = self._column(left, table)
        if _is_list(col.type):
            rhs = self._operand(right, table, col.type.value_type)
            return _null_where_null(col, _any_element(col, lambda flat: fn(flat, rhs)))
        rhs = self._operand(right, table, col.type)
        if isinstance(right, Column):
            _check_comparable(self, left, col.type, right, rhs.type)
        try:
            return fn(col, rhs)
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise self._type_error(right, f"cannot compare '{left.name}' ({col.type}) with this value: "
                                   f"{str(exc).splitlines()[0]}") from None

    def _match(self, node: Match, table: pa.Table):
        import pyarrow.compute as pc

        subj = node.subject
        col = self._column(subj, table) if isinstance(subj, Column) else array(
            [subj.value] * table.num_rows)
        elem_type = col.type.value_type if _is_list(col.type) else col.type
        if node.how == "null":
            out = pc.is_null(col)
            return pc.invert(out) if node.negate else out
        if node.how == "in":
            value_set = _value_set([_scalar(lit, elem_type, self) for lit in node.arg], elem_type)

            def fn(a):
                return pc.is_in(a, value_set=value_set)
        else:
            if not (pa.types.is_string(elem_type) or pa.types.is_large_string(elem_type)):
                raise self._type_error(subj, f"{node.how.upper()} needs a text column; "
                                       f"'{getattr(subj, 'name', '')}'"
                                       f" is {elem_type}")
            if node.how == "glob":
                regex = glob_to_regex(node.arg)

                def fn(a):
                    return pc.match_substring_regex(a, regex)
            else:
                ignore = node.how == "ilike"

                def fn(a):
                    return pc.match_like(a, node.arg, ignore_case=ignore)
        out = _null_where_null(col, _any_element(col, fn) if _is_list(col.type) else fn(col))
        return pc.invert(out) if node.negate else out


def _value_set(values: list[pa.Scalar], elem_type: pa.DataType) -> pa.Array:
    """IN (...) values as one array of the column's type; a value the type cannot hold (1.5 for whole
    numbers) can match nothing, so it is left out."""
    parts = []
    for v in values:
        try:
            parts.append(pa.repeat(v, 1).cast(elem_type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    return pa.concat_arrays(parts) if parts else pa.nulls(0, elem_type)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _any_element(col, fn) -> np.ndarray:
    """True for rows of a list column where fn holds for at least one element."""
    import pyarrow.compute as pc

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    flat = pc.list_flatten(col)
    parents = id_array(pc.list_parent_indices(col))
    hit = bool_numpy(fn(flat))
    out = np.zeros(len(col), dtype=bool)
    out[parents[hit]] = True
    return out


def _null_where_null(col, out):
    """SQL semantics: a test on a missing value is unknown (null), so NOT does not turn it true."""
    import pyarrow.compute as pc

    out = bool_array(out) if isinstance(out, np.ndarray) else out
    return pc.if_else(pc.is_null(col), scalar(None, pa.bool_()), out)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _scalar(lit: Literal, col_type: pa.DataType | None, f: Filter) -> pa.Scalar:
    """A literal as a pyarrow scalar of a type comparable with col_type (or a clear type error)."""
    v = lit.value
    if col_type is None or v is None:
        return scalar(v)
    if _is_text(col_type):
        if not isinstance(v, str):
            raise f._type_error(lit, f"this column holds text: quote the value ('{v}')")
        return scalar(v, col_type)
    if _is_number(col_type):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise f._type_error(lit, f"this column holds numbers ({col_type}): use a number, not {v!r}")
        return scalar(v)
    if pa.types.is_boolean(col_type):
        if not isinstance(v, bool):
            raise f._type_error(lit, "this column holds TRUE/FALSE values")
        return scalar(v)
    if pa.types.is_timestamp(col_type):
        return _timestamp(lit, col_type, f)
    return scalar(v)


def _timestamp(lit: Literal, col_type: pa.DataType, f: Filter) -> pa.Scalar:
    """A quoted date or date-time as a timestamp scalar ('2024', '2024-06' mean their first day)."""
    import pyarrow.compute as pc

    v = lit.value
    if isinstance(v, str):
        text = v.strip()
        text = (text + "-01-01" if re.fullmatch(r"\d{4}", text)
                else text + "-01" if re.fullmatch(r"\d{4}-\d{2}", text) else text)
        try:
            return pc.cast(scalar(text), col_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    raise f._type_error(lit, f"this column holds times: use a quoted date such as '2024-06-01' or "
                        f"'2024-06-01 18:30:00', not {v!r}")


EARTH_KM = 6371.0088  # mean Earth radius


def _near(node: Near, lat, lon) -> pa.Array:
    """Rows within node.km of (node.lat, node.lon), by great-circle (haversine) distance; null without GPS."""
    la = np.radians(float_numpy(lat))
    lo = np.radians(float_numpy(lon))
    qa, qo = math.radians(node.lat), math.radians(node.lon)
    h = np.sin((la - qa) / 2) ** 2 + math.cos(qa) * np.cos(la) * np.sin((lo - qo) / 2) ** 2
    km = 2 * EARTH_KM * np.arcsin(np.sqrt(np.clip(h, 0, 1)))
    known = np.isfinite(km)
    return bool_array(np.where(known, km <= node.km, False), known)


def _check_comparable(f: Filter, left: Column, lt: pa.DataType, right: Column, rt: pa.DataType) -> None:
    if (_is_text(lt) != _is_text(rt)) or (_is_number(lt) != _is_number(rt)):
        raise f._type_error(right, f"cannot compare '{left.name}' ({lt}) with '{right.name}' ({rt})")


def parse_filter(text: str) -> Filter:
    """Parse a --where expression (syntax errors are PixdexError naming the column)."""
    if not isinstance(text, str):
        raise InvalidType(f"a filter must be a string, got {type(text).__name__}")
    if not text or not text.strip():
        raise PixdexError("empty filter expression")
    return Filter(text)


def path_mask(paths: pa.ChunkedArray | pa.Array, glob: str | None = None,
              prefix: str | None = None) -> np.ndarray:
    """Rows whose path matches a shell glob (* crosses '/') and/or starts with a prefix."""
    import pyarrow.compute as pc

    keep = np.ones(len(paths), dtype=bool)
    if glob:
        keep &= bool_numpy(pc.match_substring_regex(paths, glob_to_regex(glob)))
    if prefix:
        keep &= bool_numpy(pc.starts_with(paths, prefix))
    return keep


def near_filter(text: str) -> str:
    """'LAT,LON,KM' (the CLI's --near) as the filter expression NEAR(LAT, LON, KM), checked."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        lat, lon, km = (float(p) for p in parts)
    except ValueError:
        raise PixdexError(f"--near {text!r}: expected LAT,LON,KM such as 48.8584,2.2945,5") from None
    expr = f"NEAR({lat!r}, {lon!r}, {km!r})"
    try:
        parse_filter(expr)
    except PixdexError as exc:
        raise PixdexError(f"--near {text!r}: {str(exc).split(': ', 2)[-1]}") from None
    return expr


def all_of(*exprs: str | None) -> str | None:
    """Filter expressions joined with AND (None when there are none)."""
    parts = [e for e in exprs if e and e.strip()]
    if len(parts) <= 1:
        return parts[0] if parts else None
    return " AND ".join(f"({e})" for e in parts)
