"""Store ids as the rest of the system takes them: whole numbers within int64,
checked before numpy sees them."""

from __future__ import annotations

import numpy as np

from indexer.errors import InvalidType, InvalidValue

ID_MIN, ID_MAX = -(2**63), 2**63 - 1


def describe(value) -> str:
    """A short repr for messages (a 5000-digit int or a long string is not printed whole)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"<{value.bit_length()}-bit integer>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_id(value, what: str = "id") -> int:
    """`value` as a Python int, or InvalidType/InvalidValue naming `what` (no numpy overflow later)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidType(f"{what} must be a whole number, got {describe(value)}")
    if not ID_MIN <= int(value) <= ID_MAX:
        raise InvalidValue(f"{what} {describe(int(value))} is out of range: ids are 64-bit integers")
    return int(value)
