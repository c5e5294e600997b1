"""Minting valid GB 11643 ID numbers, vectorised.

Residents get sequence numbers 000–899 (unique per region prefix, birth date and sex; the last
digit's parity is the sex: odd = male); people outside the register (outside co-owners, the
generator's extra dirt records) get 900–999, so the two sets can never collide.
"""

from __future__ import annotations

import numpy as np

from safetynet.demo.synth.district import BIRTH_PREFIXES, OUTSIDE_PREFIXES
from safetynet.demo.synth.model import days_to_ymd, ymd_days
from schemas import idno

PREFIXES: tuple[str, ...] = tuple(dict.fromkeys(["430103", *(p for p, _ in BIRTH_PREFIXES), *OUTSIDE_PREFIXES]))
P_LOCAL = PREFIXES.index("430103")
P_CHANGSHA_COUNTY = PREFIXES.index("430121")
P_ELSEWHERE = np.array([PREFIXES.index(p) for p, _ in BIRTH_PREFIXES])
P_ELSEWHERE_W = np.array([w for _, w in BIRTH_PREFIXES], float) / sum(w for _, w in BIRTH_PREFIXES)
P_OUTSIDE = np.array([PREFIXES.index(p) for p in OUTSIDE_PREFIXES] + list(P_ELSEWHERE))
_PREFIX_DIGITS = np.array([[int(c) for c in p] for p in PREFIXES], np.uint8)
_SLOTS = 450  # resident sequence slots per (prefix, birth date, sex): 2*450 = 000…899


def mint(prefix_idx: np.ndarray, birth_days: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """18-character ID numbers ('S18') from prefix index, birth date (days) and 3-digit sequence."""
    n = len(seq)
    y, m, d = days_to_ymd(birth_days)
    dig = np.empty((n, 17), np.uint8)
    dig[:, :6] = _PREFIX_DIGITS[prefix_idx]
    for i, (v, w) in enumerate(((y, 4), (m, 2), (d, 2), (np.asarray(seq, np.int64), 3))):
        off = (0, 4, 6, 8)[i]
        for k in range(w):
            dig[:, 6 + off + k] = (v // 10 ** (w - 1 - k)) % 10
    out = np.empty((n, 18), np.uint8)
    out[:, :17] = dig + 48
    out[:, 17] = np.char.encode(idno.check_chars(dig), "ascii").view(np.uint8)
    return out.view("S18").ravel()


def assign_resident_ids(birth_days: np.ndarray, male: np.ndarray, prefix_idx: np.ndarray,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Unique resident IDs; a (prefix, date, sex) group over its 450 slots moves people to other prefixes."""
    prefix_idx = prefix_idx.astype(np.int64).copy()
    b = np.asarray(birth_days, np.int64)
    mal = np.asarray(male, np.int64)
    for _ in range(50):
        key = (prefix_idx * 200_000 + (b + 60_000)) * 2 + mal
        order = np.argsort(key, kind="stable")
        k = key[order]
        start = np.r_[0, np.flatnonzero(k[1:] != k[:-1]) + 1]
        lens = np.diff(np.r_[start, len(k)])
        rank = np.empty(len(k), np.int64)
        rank[order] = np.arange(len(k)) - np.repeat(start, lens)
        over = rank >= _SLOTS
        if not over.any():
            break
        prefix_idx[over] = rng.choice(P_ELSEWHERE, size=int(over.sum()), p=P_ELSEWHERE_W)
    else:  # pragma: no cover - needs absurd densities
        raise RuntimeError("could not assign unique ID numbers")
    offset = (key * 2654435761 >> 7) % _SLOTS  # a per-group start, so sequences look scattered
    seq = ((rank + offset) % _SLOTS) * 2 + mal
    return mint(prefix_idx, b, seq), prefix_idx


def outside_ids(n: int, rng: np.random.Generator, *, exclude: set[bytes] | frozenset = frozenset(),
                min_year: int = 1940, max_year: int = 2004) -> np.ndarray:
    """`n` distinct IDs of people outside the register (sequence 900–999), none in `exclude`."""
    out: list[bytes] = []
    seen = set(exclude)
    while len(out) < n:
        k = (n - len(out)) * 2 + 8
        y = rng.integers(min_year, max_year + 1, k)
        m = rng.integers(1, 13, k)
        d = rng.integers(1, 29, k)
        ids = mint(rng.choice(P_OUTSIDE, k), ymd_days(y, m, d), rng.integers(900, 1000, k))
        for v in ids.tolist():
            if v not in seen:
                seen.add(v)
                out.append(v)
                if len(out) == n:
                    break
    return np.array(out, "S18")
