"""PRC resident ID numbers (GB 11643-1999): check character, 15→18 upgrade, validation, masking.

This is the reference implementation and the one home of these rules: the check character is
computed once (`check_chars`; `check_char` is its one-number case) and generated as SQL from the
same `WEIGHTS`/`CHECK` (`check_sql`, the normaliser's `sn_idcheck` macro); the vectorised SQL in
`schemas.normalise` must agree with it (a property test holds them to that); the generator uses
it to mint valid numbers. Masking for display (`mask`, `mask_value`, `mask_text`, `looks_like_id`)
lives here too, for every layer.
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


_WEIGHTS = np.asarray(WEIGHTS, dtype=np.int64)
_CHECKS = np.asarray(list(CHECK))


def check_chars(first17: np.ndarray) -> np.ndarray:
    """Check characters for an (n, 17) array of digits → array of 1-char strings. The one computation
    of GB 11643 in Python (`check_char` is its one-number case; `check_sql` the same in SQL)."""
    return _CHECKS[first17.astype(np.int64) @ _WEIGHTS % 11]


def check_char(first17: str) -> str:
    """The GB 11643 check character of the first 17 digits."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError(f"not 17 digits: {len(first17)} characters")
    return str(check_chars(np.frombuffer(first17.encode("ascii"), np.uint8).reshape(1, 17) - ord("0"))[0])


def check_sql(first17: str) -> str:
    """The check character as a SQL (DuckDB) expression over `first17`, an expression of 17 digits (text).

    Generated from `WEIGHTS` and `CHECK`: the digits are read off one BIGINT (17 digits fit), which
    is several times faster than 17 substring casts."""
    digits = f"TRY_CAST(substr({first17}, 1, 17) AS BIGINT)"
    total = " + ".join(f"({digits} // {10 ** (16 - i)} % 10) * {w}" for i, w in enumerate(WEIGHTS))
    return f"substr('{CHECK}', ((({total}) % 11) + 1)::INTEGER, 1)"


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


# ---- masking: the one implementation (review app, exports, profiles, quality reports, logs) ----
_DIGIT = "0-9０-９"
#: a run of 15 or 18 (the last may be X) digits, not inside a longer run of digits
_ID_SHAPED = re.compile(rf"(?<![{_DIGIT}])(?:[{_DIGIT}]{{17}}[{_DIGIT}XxＸｘ]|[{_DIGIT}]{{15}})(?![{_DIGIT}XxＸｘ])")


def looks_like_id(v: str | None) -> bool:
    """`v` has an ID number's shape (18 digits, the last may be X, or a legacy 15; full-width digits
    count), whatever its check character: what must never be shown or logged unmasked."""
    return bool(v) and _ID_SHAPED.fullmatch(str(v)) is not None


def mask(id_no: str | None) -> str:
    """An ID number for display: first 6 and last 4 kept (前6后4, `430103********1234`); a value of 10
    characters or fewer entirely masked."""
    if not id_no:
        return ""
    s = str(id_no)
    if len(s) <= 10:
        return "*" * len(s)
    return s[:6] + "*" * (len(s) - 10) + s[-4:]


def mask_value(value: object, pii: str = "none") -> str:
    """How a value of a contract field is shown, by its `pii` class; None as `null`.

    `direct`: an ID number (ID-shaped) as `mask`, any other direct identifier (a name, an address)
    keeps only its first character (`张*`, `欧***`); `quasi` (a plate, a birth date) partly (first
    2 and last 1 kept, short values entirely masked); anything else as it is."""
    if value is None:
        return "null"
    s = str(value)
    if not s or pii not in ("direct", "quasi"):
        return s
    if pii == "direct":
        return mask(s) if looks_like_id(s) else s[:1] + "*" * max(len(s) - 1, 1)
    return s[:2] + "*" * max(len(s) - 3, 1) + s[-1:] if len(s) > 3 else "*" * len(s)


#: quality reports: any run of 18 (the last may be X) not inside letters or digits
_ID_SHAPED_ANY_CHECK = re.compile(r"(?<![0-9A-Za-z])[0-9]{17}[0-9Xx](?![0-9A-Za-z])")


def _mask(m: re.Match[str]) -> str:
    s = m.group(0)
    if len(s) == 18:
        a = s.translate(_FULLWIDTH).upper()
        if not a[:17].isdigit() or check_char(a[:17]) != a[17]:
            return s  # 18 digits but not an ID number: left alone
    return mask(s)


def mask_text(s: str, *, bad_ids: bool = False) -> str:
    """`s` with every ID-shaped number masked (`430103********1234`); other text unchanged.

    Logs and quarantine reasons (default): an 18-digit run whose check character is wrong (a claim
    or account number) is left alone, and a legacy 15-digit run is masked. Quality reports
    (`bad_ids=True`), whose examples are the bad values themselves: every 18-character run is
    masked whatever its check character (a mistyped ID is still a person's), and 15-digit runs are
    left alone (report JSON holds floats such as `16.666666666666664`)."""
    if not s or len(s) < 15:
        return s
    if bad_ids:
        return _ID_SHAPED_ANY_CHECK.sub(lambda m: mask(m.group(0)), s)
    return _ID_SHAPED.sub(_mask, s)
