"""PRC resident ID numbers (GB 11643-1999): check character, 15→18 upgrade, validation, masking.

This is the reference implementation. The vectorised SQL in `schemas.normalise` must agree
with it (a property test holds them to that); the generator uses it to mint valid numbers.
"""

from __future__ import annotations

import datetime as _dt
import re

import numpy as np

WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CHECK = "10X98765432"  # index = weighted sum mod 11
_FULLWIDTH = str.maketrans("０１２３４５６７８９ｘＸ", "0123456789xX")


class IdError(ValueError):
    """An ID number that is not silently repairable. `rule` names the broken rule."""

    def __init__(self, rule: str, message: str):
        super().__init__(message)
        self.rule = rule


def check_char(first17: str) -> str:
    """The GB 11643 check character of the first 17 digits."""
    return CHECK[sum(int(c) * w for c, w in zip(first17, WEIGHTS, strict=True)) % 11]


def normalise(raw: str, as_of: _dt.date | None = None) -> str:
    """Normalise an ID number to 18 characters or raise `IdError`.

    Accepts spaces (around and inside), full-width digits, a lower-case `x` and legacy 15-digit numbers
    (upgraded with the century `19` and a computed check character). A wrong check character
    or an impossible birth date is not repaired. A birth date before 1900, or after `as_of`
    (the record's date; default today), is impossible.
    """
    as_of = as_of or _dt.date.today()
    s = str(raw).translate(_FULLWIDTH).strip().upper().replace(" ", "")  # as the SQL: spaces inside too
    if len(s) == 15 and s.isdigit():
        s17 = s[:6] + "19" + s[6:]
        s = s17 + check_char(s17)
    if len(s) != 18 or not s[:17].isdigit() or not (s[17].isdigit() or s[17] == "X"):
        raise IdError("id_no_format", "not an 18-digit (or legacy 15-digit) ID number")
    try:
        born = _dt.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        raise IdError("id_no_birth_date", "the birth date inside the ID number is not a real date") from None
    if born.year < 1900 or born > as_of:
        raise IdError("id_no_birth_date", "the birth date inside the ID number is before 1900 or after the record's date")
    if check_char(s[:17]) != s[17]:
        raise IdError("id_no_checksum", "the check character does not match (GB 11643)")
    return s


def is_valid(raw: str) -> bool:
    try:
        normalise(raw)
        return True
    except IdError:
        return False


def mask(id_no: str | None) -> str:
    """Mask for display: first 6 and last 4 kept (`430103********1234`)."""
    if not id_no:
        return ""
    s = str(id_no)
    if len(s) <= 10:
        return "*" * len(s)
    return s[:6] + "*" * (len(s) - 10) + s[-4:]


def mask_value(value: object, pii: str = "none") -> str:
    """How a value of a contract field is shown, by its `pii` class: `direct` (ID numbers) as `mask`,
    `quasi` (names, addresses) partly, anything else as it is; None as `null`."""
    if value is None:
        return "null"
    s = str(value)
    if pii == "direct":
        return mask(s)
    if pii == "quasi":
        return s[:2] + "*" * max(len(s) - 3, 1) + s[-1:] if len(s) > 3 else "*" * len(s)
    return s


def check_chars(first17: np.ndarray) -> np.ndarray:
    """Vectorised check characters for an (n, 17) uint8 array of digits → array of 1-char strings."""
    sums = (first17.astype(np.int64) * np.asarray(WEIGHTS, dtype=np.int64)).sum(axis=1) % 11
    return np.asarray(list(CHECK))[sums]


# ---- masking ID-shaped numbers in free text (logs, quarantine reasons) ----
_DIGIT = "0-9０-９"
#: a run of 15 or 18 (the last may be X) digits, not inside a longer run of digits
_ID_SHAPED = re.compile(rf"(?<![{_DIGIT}])(?:[{_DIGIT}]{{17}}[{_DIGIT}XxＸｘ]|[{_DIGIT}]{{15}})(?![{_DIGIT}XxＸｘ])")
_TO_ASCII = str.maketrans("０１２３４５６７８９ｘＸ", "0123456789xX")


def _mask(m: re.Match[str]) -> str:
    s = m.group(0)
    if len(s) == 18:
        a = s.translate(_TO_ASCII).upper()
        if not a[:17].isdigit() or check_char(a[:17]) != a[17]:
            return s  # 18 digits but not an ID number: left alone
    return mask(s)


def mask_text(s: str) -> str:
    """`s` with every ID-shaped number masked (`430103********1234`); other text unchanged."""
    if not s or len(s) < 15:
        return s
    return _ID_SHAPED.sub(_mask, s)
