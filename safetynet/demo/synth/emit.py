"""Emission: the district's truth as departments deliver it — Kafka events and files, with dirt.

Transports (see `CHANNELS`): most feeds are Kafka events (JSON envelopes keyed by the connector's
message key); files are dropped as department systems do: property as two GBK CSV snapshots
(`property_20261015.csv`, `property_20261031.csv`, Chinese headers; clean keeps the newest),
housing_aid and disability as XLSX (some real Excel date/number cells, some text), dangerous_house
as GB18030 CSV, income_check as UTF-8-with-BOM CSV (English headers), the last employment month
as GBK CSV and one pension month as JSON Lines. A feed generated from its contract alone (no entry
in `CHANNELS`) arrives as Kafka events, or as one UTF-8 CSV drop if it is a snapshot feed (`channels`),
with the same dirt; it is emitted after the others, so it never shifts their event ids.

Dirt, counted exactly (`Emission.dirt[feed][kind]`):

* normalisable — accepted, and the clean value equals the truth: lower-case `x`, surrounding
  spaces, full-width digits and legacy 15-digit IDs (also inside `members`), `城市`, booleans as
  是/否 · 1/0 · Y/N · true/false, money as `1,234.50` / `1234.5元` / JSON numbers, dates as
  `2024/3/5` · `20240305` · `2024年3月5日` / Excel date cells, months as `202610` · `2026年10月`,
  lower-case credit codes, full-width region codes, text with surrounding spaces, unknown
  payload fields (additive evolution); redelivered events (same event_id twice), corrections
  (an earlier wrong version of the key), deletes (an extra record upserted then deleted) and
  reinstated claims (deleted, then upserted again later);
* quarantined — *extra* records (the truth stays clean), each breaking exactly one rule of
  `schemas.normalise.QUARANTINE_RULES` (a rule applies to a feed when the feed has a field of its kind,
  the channel can carry it, and, for `unknown_field`, the feed's evolution is frozen), plus whole
  files: one lacking a required column (`file_header`) and undecodable ones (`file_encoding`).

Counts per feed and kind are 2–4, fixed by the seed. `Emission.expected[feed]` is what ingest
must report (input, accepted, quarantined by rule) and `clean_rows[feed]` what clean must keep.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa

from safetynet.core import paths
from safetynet.demo.synth import ids as idmod
from safetynet.demo.synth.model import MONTH_START, MONTHS
from safetynet.demo.synth.truth import District, truth_schema
from schemas import envelope as envelopes
from schemas import idno
from schemas.contract import Contract, Field
from schemas.normalise import QUARANTINE_RULES
from schemas.registry import contracts, get

TZ = dt.timezone(dt.timedelta(hours=8))
_FW = str.maketrans("0123456789X", "０１２３４５６７８９Ｘ")
_CAP = int(dt.datetime(2026, 10, 31, 23, 0, tzinfo=TZ).timestamp())


# ---- results -----------------------------------------------------------------------------------
@dataclass
class Expected:
    """What ingest must report for one feed."""

    input: int = 0
    accepted: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)

    def add(self, rule: str | None, n: int = 1) -> None:
        self.input += n
        if rule is None:
            self.accepted += n
        else:
            self.quarantined[rule] = self.quarantined.get(rule, 0) + n


@dataclass
class Emission:
    events: dict[str, list[tuple[bytes, bytes | None]]]  # feed id → (key, value) in publishing order; None: a tombstone
    files: dict[str, bytes]  # landing-relative path `<department>/<feed>/<name>` → bytes
    expected: dict[str, Expected]
    clean_rows: dict[str, int]
    dirt: dict[str, Counter]  # feed id → dirt kind → count (normalisable kinds and quarantine rules)

    @property
    def total_events(self) -> int:
        return sum(len(v) for v in self.events.values())


# ---- channels ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Channel:
    kind: str  # kafka | csv | xlsx | jsonl
    name: str = ""  # file name for file channels
    encoding: str = "utf-8"
    header: str = "zh"  # zh | en
    select: Callable[[dict], bool] | None = None  # which truth rows go here (None: all)
    snapshot: str = "new"  # property: "old" for the older snapshot


def _month_is(m: str) -> Callable[[dict], bool]:
    return lambda r: r["month"] == m


CHANNELS: dict[str, tuple[Channel, ...]] = {
    "public_security.person": (Channel("kafka"),),
    "public_security.vehicle": (Channel("kafka"),),
    "human_resources.employment": (Channel("kafka", select=lambda r: r["month"] != MONTHS[-1]),
                                   Channel("csv", f"employment_{MONTHS[-1].replace('-', '')}.csv", "gbk",
                                           select=_month_is(MONTHS[-1]))),
    "human_resources.unemployment": (Channel("kafka"),),
    "human_resources.pension": (Channel("kafka", select=lambda r: r["month"] != MONTHS[9]),
                                Channel("jsonl", f"pension_{MONTHS[9].replace('-', '')}.jsonl", select=_month_is(MONTHS[9]))),
    "medical_insurance.claim": (Channel("kafka"),),
    "medical_insurance.enrollment": (Channel("kafka"),),
    "housing.property": (Channel("csv", "property_20261015.csv", "gbk", snapshot="old"),
                         Channel("csv", "property_20261031.csv", "gbk")),
    "housing.housing_aid": (Channel("xlsx", "housing_aid_20261031.xlsx"),),
    "housing.dangerous_house": (Channel("csv", "dangerous_house_20261031.csv", "gb18030"),),
    "civil_affairs.assistance_case": (Channel("kafka"),),
    "civil_affairs.assistance_payment": (Channel("kafka"),),
    "civil_affairs.income_check": (Channel("csv", "income_check_20261031.csv", "utf-8-sig", header="en"),),
    "disabled_persons_federation.disability": (Channel("xlsx", "disability_20261031.xlsx"),),
}


def channels(c: Contract) -> tuple[Channel, ...]:
    """How a feed is delivered: its entry in `CHANNELS`; a feed generated from its contract alone
    arrives as Kafka events or, for a snapshot feed (without member lists), as one UTF-8 CSV drop."""
    if c.feed_id in CHANNELS:
        return CHANNELS[c.feed_id]
    if c.mode == "snapshot" and all(f.kind != "members" for f in c.fields):
        return (Channel("csv", f"{c.feed}_20261031.csv", "utf-8-sig"),)
    return (Channel("kafka"),)


#: Whole-file dirt: (feed, file name, rule).
BAD_FILES = (("civil_affairs.income_check", "income_check_20261030_缺列.csv", "file_header"),
             ("housing.housing_aid", "housing_aid_20261020_补录.xlsx", "file_header"),
             ("housing.dangerous_house", "dangerous_house_20261025.csv", "file_encoding"),
             ("disabled_persons_federation.disability", "disability_20261020.xlsx", "file_encoding"))

_KIND_RULE = {"id_no": ("id_no_format", "id_no_birth_date", "id_no_checksum"), "region_code": ("region_code_format",),
              "credit_code": ("credit_code_format",), "date": ("date_format",), "datetime": ("datetime_format",),
              "month": ("month_format",), "money": ("money_format",), "decimal": ("decimal_format",),
              "int": ("int_format",), "bool": ("bool_format",), "enum": ("enum_value",), "urban_rural": ("enum_value",),
              "members": ("members_format",)}
_BAD_ENUM = {"gender": "未知", "relation_to_head": "邻居", "status": "失踪", "vehicle_type": "拖拉机", "scheme": "新农合",
             "category": "五保", "usage": "车库", "aid_type": "实物配租", "rating": "E", "result": "待复核",
             "hukou_type": "城乡", "urban_rural": "城乡"}


def applicable_rules(c: Contract, channels: tuple[Channel, ...]) -> list[str]:
    """Quarantine rules a feed's records can break, given its fields and channels."""
    kinds = {f.kind for f in c.fields}
    rules = ["required_missing"] if any(f.required for f in c.fields) else []
    for k, rs in _KIND_RULE.items():
        if k in kinds:
            rules += [r for r in rs if r not in rules]
    if any(f.min is not None or f.max is not None for f in c.fields):
        rules.append("out_of_range")
    chans = {ch.kind for ch in channels}
    if chans & {"kafka", "jsonl"}:
        rules.append("json_malformed")
    if "kafka" in chans:
        rules.append("envelope_invalid")
        rules.append("tombstone")  # a department deleting with a null value instead of an op "delete" envelope
    if "csv" in chans:
        rules.append("row_shape")
        rules.append("quote_unbalanced")  # a quote opened and never closed on its line
        if any(f.kind == "string" and f.required for f in c.fields):
            rules.append("control_char")  # a vertical tab pasted into a text cell
    if c.evolution == "frozen" and chans & {"kafka", "jsonl"}:
        rules.append("unknown_field")
    # other systems' habits (after the rules above: their draws stay as they were)
    if chans & {"kafka", "jsonl"} and any(f.kind == "string" and f.required for f in c.fields):
        rules.append("json_structure")  # an object where a name belongs
    if chans & {"kafka", "jsonl", "xlsx"} and any(f.kind == "id_no" for f in c.fields):
        rules.append("number_precision")  # an ID number sent as a number (a JSON number, an Excel number cell)
    if chans & {"csv", "xlsx"} and any(f.required for f in c.fields):
        rules.append("total_row")  # a 合计 row at the end of an export
    return rules


def _channel_ok(rule: str, ch: Channel) -> bool:
    if rule in ("envelope_invalid", "tombstone"):
        return ch.kind == "kafka"
    if rule == "json_malformed":
        return ch.kind in ("kafka", "jsonl")
    if rule in ("row_shape", "quote_unbalanced", "control_char"):
        return ch.kind == "csv"
    if rule in ("unknown_field", "json_structure"):
        return ch.kind in ("kafka", "jsonl")
    if rule == "number_precision":
        return ch.kind in ("kafka", "jsonl", "xlsx")
    if rule == "total_row":
        return ch.kind in ("csv", "xlsx")
    return True


# ---- values ------------------------------------------------------------------------------------
def _canon(f: Field, v):
    """The canonical text of a truth value (what a tidy department export would carry)."""
    if v is None:
        return None
    k = f.kind
    if k == "date":
        return v.isoformat()
    if k == "datetime":
        return v.astimezone(TZ).strftime("%Y-%m-%d %H:%M:%S")
    if k == "money":
        return f"{v:.2f}"
    if k == "decimal":
        s = format(v.normalize(), "f")
        return s
    if k in ("int", "bool", "text_list", "members"):
        return v
    return str(v)


def _legacy15(s: str) -> str | None:
    return s[:6] + s[8:17] if s[6:8] == "19" else None


def _id_variant(s: str, kind: str) -> str | None:
    if kind == "id_lower_x":
        return s.lower() if s.endswith("X") else None
    if kind == "id_spaces":
        return f"  {s}\u3000"
    if kind == "id_fullwidth":
        return s.translate(_FW)
    if kind == "id_legacy15":
        return _legacy15(s)
    raise KeyError(kind)


def _date_variant(iso: str, kind: str) -> str:
    y, m, d = (int(x) for x in iso.split("-"))
    return {"date_slash": f"{y}/{m}/{d}", "date_compact": f"{y}{m:02d}{d:02d}", "date_chinese": f"{y}年{m}月{d}日"}[kind]


def _money_variant(s: str, kind: str) -> str | None:
    v = Decimal(s)
    if kind == "money_comma":
        return f"{v:,.2f}" if v >= 1000 else None
    if kind == "money_yuan":
        return format(v.normalize(), "f") + "元"
    raise KeyError(kind)


#: rule → (field kind, a value of that kind no parser accepts)
_UNPARSEABLE = {
    "date_format": ("date", "2026-02-30"), "datetime_format": ("datetime", "2026-13-01 10:00:00"),
    "month_format": ("month", "2026-13"), "money_format": ("money", "约500元"), "decimal_format": ("decimal", "一半"),
    "int_format": ("int", "待定"), "bool_format": ("bool", "不详"),
}


def _breaker(c: Contract, rule: str, rec: dict, rng: np.random.Generator) -> dict:
    """A copy of `rec` breaking exactly `rule` (first failing field in contract order)."""
    r = dict(rec)
    fields = list(c.fields)

    def pick(pred) -> Field:
        cands = [f for f in fields if pred(f)]
        return cands[int(rng.integers(0, len(cands)))]

    if rule == "required_missing":
        f = pick(lambda f: f.required)
        r[f.name] = None
    elif rule in ("id_no_format", "id_no_birth_date", "id_no_checksum"):
        f = pick(lambda f: f.kind == "id_no")
        s = rec[f.name]
        if rule == "id_no_format":
            r[f.name] = s[:16]
        elif rule == "id_no_birth_date":
            s17 = s[:10] + "13" + s[12:17]
            r[f.name] = s17 + idno.check_char(s17)
        else:
            r[f.name] = s[:17] + idno.CHECK[(idno.CHECK.index(s[17]) + 1) % 11]
    elif rule in ("region_code_format", "credit_code_format"):  # a code cut short
        kind = rule.removesuffix("_format")
        f = pick(lambda f, k=kind: f.kind == k)
        r[f.name] = rec[f.name][:10]
    elif rule in _UNPARSEABLE:
        kind, bad = _UNPARSEABLE[rule]
        f = pick(lambda f, k=kind: f.kind == k)
        r[f.name] = bad
    elif rule == "enum_value":
        f = pick(lambda f: f.kind in ("enum", "urban_rural"))
        bad = _BAD_ENUM.get(f.name, "未知")
        r[f.name] = bad if bad not in f.values else bad + "？"
    elif rule == "members_format":
        f = pick(lambda f: f.kind == "members")
        r[f.name] = []
    elif rule == "control_char":
        f = pick(lambda f: f.kind == "string" and f.required)
        v = str(rec[f.name])
        r[f.name] = v[:1] + "\x0b" + v[1:]
    elif rule == "json_structure":
        f = pick(lambda f: f.kind == "string" and f.required)
        r[f.name] = {"名称": rec[f.name]}
    elif rule == "number_precision":  # typed as a number: an X has no number, its place a 0
        f = pick(lambda f: f.kind == "id_no" and rec[f.name] is not None)
        s = rec[f.name]
        r[f.name] = int(s[:17] + (s[17] if s[17] != "X" else "0"))
    elif rule == "total_row":
        f = pick(lambda f: f.required)
        r[f.name] = "合计"
    elif rule == "out_of_range":
        f = pick(lambda f: f.min is not None or f.max is not None)
        r[f.name] = "-100.00" if (f.min is not None and f.min >= 0 and f.kind == "money") else (
            str(int(f.max) + 1) if f.max is not None else str(int(f.min) - 5))
    else:
        raise KeyError(rule)
    return r


# ---- the emitter -------------------------------------------------------------------------------
class _Emitter:
    def __init__(self, d: District):
        self.d = d
        self.seed = d.seed
        self.events: dict[str, list[tuple[int, int, bytes, bytes | None]]] = {}
        self.files: dict[str, bytes] = {}
        self.expected: dict[str, Expected] = {fid: Expected() for fid in contracts()}
        self.dirt: dict[str, Counter] = {fid: Counter() for fid in contracts()}
        self._seq = 0
        self._extra: Iterator[str] | None = None
        self._eid_base: dict[str, int] = {}

    # -- helpers ----------------------------------------------------------------------------------
    def rng(self, *parts: str) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, *"/".join(parts).encode()]))

    def k(self, *parts: str) -> int:
        return 2 + int(self.rng("count", *parts).integers(0, 3))

    def extra_id(self) -> str:
        if self._extra is None:
            pool = idmod.outside_ids(2000, self.rng("extra-ids"), exclude=set(self.d.outside_ids.tolist()))
            self._extra = iter(x.decode() for x in pool.tolist())
        return next(self._extra)

    def event_id(self, fid: str) -> str:
        if fid not in self._eid_base:
            h = hashlib.blake2b(f"{self.seed}/{fid}".encode(), digest_size=16).digest()
            self._eid_base[fid] = int.from_bytes(h, "big")
        self._seq += 1
        return str(uuid.UUID(int=(self._eid_base[fid] + self._seq) % (1 << 128), version=4))

    def envelope(self, c: Contract, payload: dict, ts: int, op: str = envelopes.UPSERT, eid: str | None = None) -> dict:
        return envelopes.wrap({k: v for k, v in payload.items() if v is not None},
                             event_id=eid or self.event_id(c.feed_id), source=c.department, feed=c.feed, op=op,
                             occurred_at=dt.datetime.fromtimestamp(ts, TZ).isoformat(), schema_version=c.version)

    def put_event(self, c: Contract, key: str, env: dict | bytes | None, ts: int, rule: str | None) -> bytes | None:
        """Record one event (`env` None: a tombstone, a message without a value)."""
        value = env if env is None or isinstance(env, bytes) else envelopes.encode(env)
        self._seq += 1
        self.events.setdefault(c.feed_id, []).append((ts, self._seq, str(key).encode(), value))
        self.expected[c.feed_id].add(rule)
        return value

    # -- per feed -----------------------------------------------------------------------------------
    def run(self) -> Emission:
        # hand-written feeds first, so a feed added later never shifts their event ids or extra IDs
        for _fid, c in sorted(contracts().items(), key=lambda fc: fc[0] not in CHANNELS):
            self.feed(c, channels(c))
        for fid, name, rule in BAD_FILES:
            self.bad_file(get(fid), name, rule)
        events = {fid: [(k, v) for _, _, k, v in sorted(evs, key=lambda e: (e[0], e[1]))]
                  for fid, evs in self.events.items()}
        clean = {fid: self.d.rows(fid) for fid in contracts()}
        return Emission(events, self.files, self.expected, clean, self.dirt)

    def records(self, c: Contract, snapshot: str = "new") -> list[dict]:
        if c.feed_id == "housing.property":
            t = pa.table(self.d.property_rows(snapshot), schema=truth_schema(c))
        else:
            t = self.d.table(c.feed_id)
        out: list[dict] = []
        fs = list(c.fields)
        for batch in t.to_batches(max_chunksize=100_000):
            for row in batch.to_pylist():
                out.append({f.name: _canon(f, row[f.name]) for f in fs})
        return out

    def feed(self, c: Contract, channels: tuple[Channel, ...]) -> None:
        fid = c.feed_id
        rows_by_snap = {"new": self.records(c)}
        if any(ch.snapshot == "old" for ch in channels):
            rows_by_snap["old"] = self.records(c, "old")
        per_ch: list[list[dict]] = []
        for ch in channels:
            rows = rows_by_snap[ch.snapshot]
            per_ch.append([r for r in rows if ch.select is None or ch.select(r)])
        # quarantine records: k per applicable rule, spread over the channels that can carry them
        qrec: list[list[tuple[str, dict]]] = [[] for _ in channels]
        rr = self.rng("quarantine", fid)
        for rule in applicable_rules(c, channels):
            ok = [i for i, ch in enumerate(channels) if _channel_ok(rule, ch) and per_ch[i]]
            if not ok:
                continue
            for j in range(self.k(fid, rule)):
                i = ok[j % len(ok)]
                base = per_ch[i][int(rr.integers(0, len(per_ch[i])))]
                if rule in ("json_malformed", "envelope_invalid", "tombstone", "row_shape", "unknown_field", "quote_unbalanced"):
                    rec = dict(base)
                else:
                    rec = _breaker(c, rule, base, rr)
                qrec[i].append((rule, rec))
                self.dirt[fid][rule] += 1
        for i, ch in enumerate(channels):
            getattr(self, "ch_" + ch.kind)(c, ch, per_ch[i], qrec[i])

    # -- normalisable dirt -----------------------------------------------------------------------
    def choose(self, fid: str, ch: Channel, rows: list[dict], kinds: list[tuple[str, Callable[[dict], bool]]]
               ) -> dict[int, list[str]]:
        """Rows for each dirt kind (k of them where the kind's predicate holds). Kinds touching the same
        field (`_group`) never share a row; kinds on different fields may."""
        rng = self.rng("dirt", fid, ch.kind, ch.name)
        order = rng.permutation(len(rows)) if rows else np.zeros(0, np.int64)
        taken: dict[int, list[str]] = {}
        used: set[tuple[int, str]] = set()
        pos = 0
        for kind, pred in kinds:
            want = self.k(fid, ch.name, kind)
            g = _group(kind)
            got, scan = 0, 0
            while got < want and scan < len(order):
                i = int(order[(pos + scan) % len(order)])
                scan += 1
                if (i, g) not in used and pred(rows[i]):
                    used.add((i, g))
                    taken.setdefault(i, []).append(kind)
                    got += 1
            pos += scan
            self.dirt[fid][kind] += got
        return taken

    def dirt_kinds(self, c: Contract, ch: Channel) -> list[tuple[str, Callable[[dict], bool]]]:
        """Normalisable dirt applicable to a feed's channel: (kind, row predicate)."""
        f_id = next((f.name for f in c.fields if f.kind == "id_no"), None)
        out: list[tuple[str, Callable[[dict], bool]]] = []
        if f_id:
            out += [("id_lower_x", lambda r: str(r[f_id]).endswith("X")), ("id_spaces", lambda r: True),
                    ("id_fullwidth", lambda r: True), ("id_legacy15", lambda r: str(r[f_id])[6:8] == "19")]
        strings = [f.name for f in c.fields if f.kind == "string" and f.required]
        if strings:
            out.append(("text_spaces", lambda r: True))
        kinds = {f.kind for f in c.fields}
        if "urban_rural" in kinds:
            u = next(f.name for f in c.fields if f.kind == "urban_rural")
            out.append(("urban_城市", lambda r: r[u] == "城镇"))
        if "members" in kinds:
            ms = next(f.name for f in c.fields if f.kind == "members")
            out += [("member_id_lower_x", lambda r: any(m["id_no"].endswith("X") for m in r[ms])),
                    ("member_id_legacy15", lambda r: any(m["id_no"][6:8] == "19" for m in r[ms])),
                    ("member_id_fullwidth", lambda r: True)]
        money = [f.name for f in c.fields if f.kind == "money"]
        dates = [f.name for f in c.fields if f.kind == "date"]
        if ch.kind == "kafka":
            if money:
                out.append(("money_number", lambda r: r[money[0]] is not None))
            if "bool" in kinds:
                out.append(("bool_text", lambda r: True))
            if c.evolution == "additive":
                out.append(("additive_field", lambda r: True))
        else:
            if money:
                out += [("money_comma", lambda r: r[money[0]] is not None and Decimal(r[money[0]]) >= 1000),
                        ("money_yuan", lambda r: r[money[0]] is not None)]
            if dates:
                out += [(k, lambda r: r[dates[0]] is not None) for k in ("date_slash", "date_compact", "date_chinese")]
            if "month" in kinds:
                mo = next(f.name for f in c.fields if f.kind == "month")
                out += [(k, lambda r: r[mo] is not None) for k in ("month_compact", "month_chinese")]
            if "credit_code" in kinds:
                cc = next(f.name for f in c.fields if f.kind == "credit_code")
                out.append(("credit_lower", lambda r: any(ch.isalpha() for ch in r[cc])))
            if "region_code" in kinds:
                out.append(("region_fullwidth", lambda r: True))
            if "datetime" in kinds:
                ts = next(f.name for f in c.fields if f.kind == "datetime")
                out += [(k, lambda r: r[ts] is not None) for k in ("datetime_slash", "datetime_iso_t")]
            if ch.kind == "xlsx" and dates:
                out.append(("date_text_in_xlsx", lambda r: r[dates[0]] is not None))
        return out

    def apply(self, c: Contract, kind: str, rec: dict, ch: Channel) -> dict:
        """`rec` with one normalisable dirt kind applied (the clean value stays the truth)."""
        r = dict(rec)
        fs = {f.name: f for f in c.fields}
        f_id = next((f.name for f in c.fields if f.kind == "id_no"), None)
        money = [n for n, f in fs.items() if f.kind == "money"]
        dates = [n for n, f in fs.items() if f.kind == "date"]
        if kind.startswith("id_"):
            r[f_id] = _id_variant(r[f_id], kind)
        elif kind == "text_spaces":
            n = next(f.name for f in c.fields if f.kind == "string" and f.required)
            r[n] = f" {r[n]}  "
        elif kind == "urban_城市":
            n = next(f.name for f in c.fields if f.kind == "urban_rural")
            r[n] = "城市"
        elif kind.startswith("member_id_"):
            sub = kind.removeprefix("member_")
            n = next(f.name for f in c.fields if f.kind == "members")
            ms = [dict(m) for m in r[n]]
            for m in ms:  # the first member the variant applies to
                v = _id_variant(m["id_no"], sub)
                if v is not None:
                    m["id_no"] = v
                    break
            r[n] = ms
        elif kind == "money_number":
            r[money[0]] = float(Decimal(r[money[0]]))
        elif kind == "bool_text":
            for n, f in fs.items():
                if f.kind == "bool" and r[n] is not None:
                    r[n] = ("是", "1", "Y")[self._seq % 3] if r[n] else ("否", "0", "N")[self._seq % 3]
        elif kind == "additive_field":
            r["_ext_system_note"] = "导出批次 2026-10"
        elif kind in ("money_comma", "money_yuan"):
            r[money[0]] = _money_variant(r[money[0]], kind)
        elif kind in ("date_slash", "date_compact", "date_chinese"):
            r[dates[0]] = _date_variant(r[dates[0]], kind)
        elif kind == "date_text_in_xlsx":
            r[dates[0]] = " " + r[dates[0]]  # a text cell, not a date cell
        elif kind in ("month_compact", "month_chinese"):
            n = next(f.name for f in c.fields if f.kind == "month")
            y, m = r[n].split("-")
            r[n] = f"{y}{m}" if kind == "month_compact" else f"{y}年{int(m)}月"
        elif kind == "credit_lower":
            n = next(f.name for f in c.fields if f.kind == "credit_code")
            r[n] = r[n].lower()
        elif kind == "region_fullwidth":
            n = next(f.name for f in c.fields if f.kind == "region_code")
            r[n] = r[n].translate(_FW)
        elif kind in ("datetime_slash", "datetime_iso_t"):
            n = next(f.name for f in c.fields if f.kind == "datetime")
            r[n] = r[n].replace("-", "/") if kind == "datetime_slash" else r[n].replace(" ", "T")
        else:
            raise KeyError(kind)
        return r

    # -- Kafka -------------------------------------------------------------------------------------
    def base_ts(self, fid: str, rec: dict, rng: np.random.Generator) -> int:
        def at(days: int, lo_h: float, hi_h: float) -> int:
            return int(days * 86400 - 8 * 3600 + rng.uniform(lo_h, hi_h) * 3600)

        oct1 = int((dt.date(2026, 10, 1) - dt.date(1970, 1, 1)).days)
        if fid in ("human_resources.employment", "civil_affairs.assistance_payment", "human_resources.pension"):
            m = MONTHS.index(rec["month"])
            if fid == "human_resources.employment":
                ts = at(int(MONTH_START[m + 1]), 48, 9 * 24)
            else:
                ts = at(int(MONTH_START[m]) + (19 if "payment" in fid else 14), 8, 18)
        elif fid == "human_resources.unemployment":
            last = max(d for d in (rec["registered_date"], rec.get("status_date")) if d)
            ts = at(_days(last), 9, 60)
        elif fid == "medical_insurance.claim":
            ts = at(_days(rec["settle_date"]), 10, 58)
        elif fid == "medical_insurance.enrollment":
            ts = at(oct1 + 19, 0, 10 * 24)
        else:
            ts = at(oct1, 0, 30 * 24)
        # nothing about a person happens before their birth; an event's earlier versions (a
        # correction 3 days before) neither
        born = _born_ts(get(fid), rec)
        if born is not None:
            ts = max(ts, born + 4 * 86400)
        return min(ts, _CAP)

    def wrong_version(self, c: Contract, rec: dict) -> dict:
        """A valid but wrong earlier version of `rec` (a non-key value differs)."""
        r = dict(rec)
        for kind in ("money", "date", "enum", "string"):
            for f in c.fields:
                if (f.name in c.key or f.kind != kind or r.get(f.name) is None
                        or (kind == "money" and f.max is not None)):  # +100 might break the maximum
                    continue
                v = r[f.name]
                if kind == "money":
                    r[f.name] = f"{Decimal(v) + 100:.2f}"
                elif kind == "date":
                    r[f.name] = (dt.date.fromisoformat(v) - dt.timedelta(days=1)).isoformat()
                elif kind == "enum":
                    r[f.name] = next(x for x in f.values if x != v)
                else:
                    r[f.name] = v + "（待核）"
                return r
        return r

    def fresh_key(self, c: Contract, rec: dict, i: int) -> dict:
        """An extra record: `rec` with a key no truth row has."""
        r = dict(rec)
        fid = c.feed_id
        if fid == "public_security.person":
            r["id_no"] = self.extra_id()
        elif fid == "public_security.vehicle":
            r["plate_no"] = f"湘AD{(i * 7919 + self.seed) % 100000:05d}"
        elif fid == "human_resources.employment":
            codes = self.d.employers[1]
            r["employer_credit_code"] = codes[(codes.index(rec["employer_credit_code"]) + 1 + i) % len(codes)]
            r["employer_name"] = self.d.employers[0][codes.index(r["employer_credit_code"])]
        elif fid == "human_resources.unemployment":
            r["registered_date"] = (dt.date.fromisoformat(rec["registered_date"]) - dt.timedelta(days=400 + i)).isoformat()
        elif fid == "human_resources.pension":
            r["month"] = MONTHS[8]
        elif fid == "medical_insurance.claim":
            r["claim_id"] = rec["claim_id"][:10] + f"{900_000_000 + i:09d}"
        elif fid == "medical_insurance.enrollment":
            r["month"] = MONTHS[10]
        elif fid == "civil_affairs.assistance_case":
            r["case_no"] = rec["case_no"][:-6] + f"{900_000 + i:06d}"
        elif fid == "civil_affairs.assistance_payment":
            r["month"] = MONTHS[5]
        else:  # a feed generated from its contract: an outside person's ID, or a key value it never draws
            make = {"id_no": lambda f: self.extra_id(), "string": lambda f: f"{rec[f.name]}-删{i}",
                    "date": lambda f: f"2001-01-{i % 28 + 1:02d}", "month": lambda f: f"2001-{i % 12 + 1:02d}"}
            f = next((c.field(k) for k in c.key if c.field(k).kind in make), None)
            if f is None:
                raise KeyError(f"{fid}: no key field of kind {'/'.join(make)} to make a fresh key with")
            r[f.name] = make[f.kind](f)
        return r

    def ch_kafka(self, c: Contract, ch: Channel, rows: list[dict], qrec: list[tuple[str, dict]]) -> None:
        from connectors.base import connectors

        fid = c.feed_id
        mkey = connectors()[fid].message_key if fid in connectors() else c.key[0]
        rng = self.rng("ts", fid)
        kinds = self.dirt_kinds(c, ch)
        special = ["redelivered", "correction", "delete"] + (["reinstated"] if fid == "medical_insurance.claim" else [])
        # events dated before the record's own (a correction's wrong version, a reinstated claim, a
        # deleted extra record in early October) only for people born well before them
        early = _days("2026-09-01") * 86400

        def settled(r: dict) -> bool:
            b = _born_ts(c, r)
            return b is None or b < early

        taken = self.choose(fid, ch, rows, kinds + [(s, (lambda r: True) if s == "redelivered" else settled)
                                                    for s in special])
        key_only = list(c.key)
        n_delete = 0
        for i, rec in enumerate(rows):
            ts = self.base_ts(fid, rec, rng)
            ks = taken.get(i, [])
            kind = next((k for k in ks if k in special), None)
            payload = rec
            for k in ks:
                if k not in special:
                    payload = self.apply(c, k, payload, ch)
            if kind == "correction":
                wrong = self.wrong_version(c, rec)
                self.put_event(c, rec[mkey], self.envelope(c, wrong, ts - 3 * 86400), ts - 3 * 86400, None)
            if kind == "reinstated":
                self.put_event(c, rec[mkey], self.envelope(c, rec, ts - 2 * 86400), ts - 2 * 86400, None)
                gone = self.envelope(c, {k: rec[k] for k in key_only}, ts - 86400, op=envelopes.DELETE)
                self.put_event(c, rec[mkey], gone, ts - 86400, None)
            value = self.put_event(c, rec[mkey], self.envelope(c, payload, ts), ts, None)
            if kind == "redelivered":
                self.put_event(c, rec[mkey], value, min(ts + 3600, _CAP), None)
            if kind == "delete":
                extra = self.fresh_key(c, rec, n_delete)
                n_delete += 1
                t0 = int(dt.datetime(2026, 10, 5, 9, tzinfo=TZ).timestamp()) + int(rng.integers(0, 15 * 86400))
                self.put_event(c, extra[mkey], self.envelope(c, extra, t0), t0, None)
                gone = self.envelope(c, {k: extra[k] for k in key_only}, t0 + 2 * 86400, op=envelopes.DELETE)
                self.put_event(c, extra[mkey], gone, t0 + 2 * 86400, None)
        bad_env = [lambda e: e.pop(envelopes.EVENT_ID), lambda e: e.update({envelopes.OP: "update"}),
                   lambda e: e.update({envelopes.FEED: c.feed + "_v2"}),
                   lambda e: e.update({envelopes.SOURCE: "unknown_dept"}),
                   lambda e: e.update({envelopes.SCHEMA_VERSION: c.version + 1}),
                   lambda e: e.update({envelopes.OCCURRED_AT: "昨天"}),
                   lambda e: e.update({envelopes.PAYLOAD: "(见附件)"})]
        for j, (rule, rec) in enumerate(qrec):
            ts = int(dt.datetime(2026, 10, 2, 8, tzinfo=TZ).timestamp()) + int(rng.integers(0, 28 * 86400))
            born = _born_ts(c, rec)  # a record to quarantine for its own fault, not for predating a birth
            ts = min(max(ts, born + 86400), _CAP) if born is not None else ts
            key = rec.get(mkey) or "?"
            env = self.envelope(c, rec, ts)
            if rule == "envelope_invalid":
                bad_env[j % len(bad_env)](env)
                self.put_event(c, key, env, ts, rule)
            elif rule == "json_malformed":
                text = json.dumps(env, ensure_ascii=False)
                self.put_event(c, key, text[: len(text) // 2].encode(), ts, rule)
            elif rule == "unknown_field":
                env[envelopes.PAYLOAD]["_unknown"] = "x"
                self.put_event(c, key, env, ts, rule)
            elif rule == "tombstone":
                self.put_event(c, key, None, ts, rule)
            else:
                self.put_event(c, key, env, ts, rule)

    # -- files ---------------------------------------------------------------------------------------
    def file_rows(self, c: Contract, ch: Channel, rows: list[dict], qrec: list[tuple[str, dict]]
                  ) -> list[tuple[dict, str | None]]:
        """Truth rows (with normalisable dirt) and quarantine rows, interleaved deterministically."""
        taken = self.choose(c.feed_id, ch, rows, self.dirt_kinds(c, ch))
        out: list[tuple[dict, str | None]] = []
        for i, r in enumerate(rows):
            for k in taken.get(i, []):
                r = self.apply(c, k, r, ch)
            out.append((r, None))
        rng = self.rng("interleave", c.feed_id, ch.name)
        lo = min(len(out), 60)  # keep the CSV sniffer's sample tidy: dirt goes after the first rows
        for rule, rec in qrec:
            pos = int(rng.integers(lo, len(out) + 1))
            out.insert(pos, (rec, rule))
        for _, rule in out:
            self.expected[c.feed_id].add(rule)
        return out

    def ch_csv(self, c: Contract, ch: Channel, rows: list[dict], qrec: list[tuple[str, dict]]) -> None:
        items = self.file_rows(c, ch, rows, qrec)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow([f.label_zh if ch.header == "zh" else f.name for f in c.fields])
        bools = (("是", "否"), ("1", "0"), ("Y", "N"), ("true", "false"))
        for n, (rec, rule) in enumerate(items):
            cells = []
            for f in c.fields:
                v = rec[f.name]
                if v is None:
                    cells.append("")
                elif isinstance(v, bool):
                    cells.append(bools[n % 4][0 if v else 1])
                    self.dirt[c.feed_id]["bool_" + "/".join(bools[n % 4])] += 1
                elif isinstance(v, list):
                    cells.append("、".join(v))
                else:
                    cells.append(str(v))
            if rule == "row_shape":
                cells += ["备注", "多余列"]
            if rule == "quote_unbalanced":  # the line ends in a quote that is never closed
                line = io.StringIO()
                csv.writer(line, lineterminator="").writerow(cells)
                buf.write(line.getvalue() + ',"备注\r\n')
                continue
            w.writerow(cells)
        self.files[f"{c.prefix}/{ch.name}"] = buf.getvalue().encode(ch.encoding)

    def ch_xlsx(self, c: Contract, ch: Channel, rows: list[dict], qrec: list[tuple[str, dict]]) -> None:
        import openpyxl

        items = self.file_rows(c, ch, rows, qrec)
        wb = openpyxl.Workbook(write_only=True)
        ws = wb.create_sheet(c.title_zh)
        ws.append([f.label_zh for f in c.fields])
        cells_n = Counter()
        for n, (rec, _) in enumerate(items):
            row = []
            for f in c.fields:
                v = rec[f.name]
                if v is None:
                    row.append(None)
                elif f.kind == "date" and _iso_date(v) and n % 3 != 0:
                    row.append(_iso_date(v))  # a real Excel date cell
                    cells_n["excel_date_cell"] += 1
                elif f.kind == "money" and isinstance(v, str) and _is_plain_number(v) and n % 2 == 0:
                    row.append(float(v))  # a number cell
                    cells_n["excel_number_cell"] += 1
                elif f.kind == "int" and isinstance(v, int):
                    row.append(v if n % 2 else float(v))
                elif isinstance(v, list):
                    row.append((",", "、", ";")[n % 3].join(v))
                else:
                    row.append(v)
            ws.append(row)
        self.files[f"{c.prefix}/{ch.name}"] = _xlsx_bytes(wb)
        self.dirt[c.feed_id].update(cells_n)

    def ch_jsonl(self, c: Contract, ch: Channel, rows: list[dict], qrec: list[tuple[str, dict]]) -> None:
        items = self.file_rows(c, ch, rows, qrec)
        lines = []
        for n, (rec, rule) in enumerate(items):
            obj = {k: v for k, v in rec.items() if v is not None}
            money = [f.name for f in c.fields if f.kind == "money" and isinstance(obj.get(f.name), str)
                     and _is_plain_number(obj[f.name])]
            if money and n % 5 == 0:
                obj[money[0]] = float(obj[money[0]])  # JSON number
            text = json.dumps(obj, ensure_ascii=False)
            if rule == "json_malformed":
                text = text[: len(text) // 2]
            lines.append(text)
        self.files[f"{c.prefix}/{ch.name}"] = ("\n".join(lines) + "\n").encode()

    def bad_file(self, c: Contract, name: str, rule: str) -> None:
        if rule == "file_header":
            fields = [f for f in c.fields if f.required]
            drop = fields[-1]
            if name.endswith(".xlsx"):
                import openpyxl

                wb = openpyxl.Workbook(write_only=True)
                ws = wb.create_sheet("Sheet1")
                ws.append([f.label_zh for f in c.fields if f is not drop])
                ws.append(["补录数据"] * (len(c.fields) - 1))
                data = _xlsx_bytes(wb)
            else:
                hdr = ",".join(f.name for f in c.fields if f is not drop)
                data = ("\ufeff" + hdr + "\r\n" + ",".join(["x"] * (len(c.fields) - 1)) + "\r\n").encode("utf-8")
        else:
            if name.endswith(".xlsx"):
                data = b"PK\x03\x04" + hashlib.sha256(name.encode()).digest() * 8  # a truncated, corrupt workbook
            else:
                data = b"\xff\xfe\x00\xd8\x00garbage\x81\x30"  # a UTF-16 BOM, then bytes no decoder accepts
        self.files[f"{c.prefix}/{name}"] = data
        self.expected[c.feed_id].add(rule)
        self.dirt[c.feed_id][rule] += 1


def _xlsx_bytes(wb) -> bytes:
    """The workbook's bytes, made reproducible: openpyxl stamps the save time into docProps/core.xml
    and every zip entry, so both are rewritten with the snapshot's date."""
    import re
    import zipfile

    buf = io.BytesIO()
    wb.save(buf)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "docProps/core.xml":
                data = re.sub(rb"(<dcterms:(?:created|modified)[^>]*>)[^<]*", rb"\g<1>2026-10-31T00:00:00Z", data)
            zout.writestr(zipfile.ZipInfo(info.filename, date_time=(2026, 10, 31, 0, 0, 0)), data,
                          compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def _iso_date(v) -> dt.date | None:
    if not isinstance(v, str) or len(v) != 10 or v[4] != "-":
        return None
    try:
        return dt.date.fromisoformat(v)
    except ValueError:
        return None


_EVENT_KINDS = ("redelivered", "correction", "delete", "reinstated")


def _group(kind: str) -> str:
    """The field a dirt kind touches (kinds of one group never share a row)."""
    if kind in _EVENT_KINDS:
        return "event"
    if kind.startswith("member_id_"):
        return "members"
    return kind.split("_")[0]


def _is_plain_number(s: str) -> bool:
    try:
        Decimal(s)
        return True
    except Exception:
        return False


def _born_ts(c: Contract, rec: dict) -> int | None:
    """The latest birth (epoch seconds, 10:00 Beijing) among the persons a record names — its ID
    fields and member list — or None; values that are not valid ID numbers are skipped."""
    ids = [rec.get(f) for f in c.id_fields]
    for f in c.fields:
        if f.kind == "members" and isinstance(rec.get(f.name), list | tuple):
            ids += [m.get("id_no") for m in rec[f.name] if isinstance(m, dict)]
    days = [_days(f"{v[6:10]}-{v[10:12]}-{v[12:14]}") for v in ids
            if isinstance(v, str) and len(v) == 18 and v[6:14].isdigit() and idno.is_valid(v)]
    return max(days) * 86400 + 2 * 3600 if days else None


def _days(iso: str) -> int:
    return (dt.date.fromisoformat(iso) - dt.date(1970, 1, 1)).days


def emit(d: District) -> Emission:
    """Deliveries of the district's truth, with dirt, and the exact counts ingest and clean must report."""
    import gc

    enabled = gc.isenabled()
    gc.disable()  # millions of small dicts and bytes, none cyclic: the collector would only rescan them
    try:
        return _Emitter(d).run()
    finally:
        if enabled:
            gc.enable()


# ---- writing ---------------------------------------------------------------------------------------
def write_files(em: Emission, out_dir: str | Path) -> None:
    """Landing files under `out_dir/landing/…`; events as JSON Lines per topic under `out_dir/events/`.

    Each event line is `{"key": …, "value": …}` with the value as text (malformed values too; `null`
    for a tombstone), so a replay publishes exactly the same bytes.
    """
    out = Path(out_dir)
    for rel, data in em.files.items():
        p = out / paths.landing_file(rel)  # the store's layout
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (out / "events").mkdir(parents=True, exist_ok=True)
    for fid, msgs in em.events.items():
        with (out / "events" / f"{get(fid).topic}.jsonl").open("w", encoding="utf-8") as f:
            for k, v in msgs:
                f.write(json.dumps({"key": k.decode(), "value": None if v is None else v.decode("utf-8", "replace")},
                                   ensure_ascii=False) + "\n")
    manifest = {fid: {"input": e.input, "accepted": e.accepted, "quarantined": e.quarantined, "clean_rows": em.clean_rows[fid]}
                for fid, e in em.expected.items()}
    (out / "expected.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")


def write_truth_parquet(d: District, out_dir: str | Path) -> None:
    """One Parquet per feed (`<feed_id>.parquet`, the expected clean content) plus `planted.parquet`."""
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for fid in contracts():
        pq.write_table(d.table(fid), out / f"{fid}.parquet", compression="zstd")
    pq.write_table(d.planted, out / "planted.parquet")


__all__ = [
    "BAD_FILES",
    "CHANNELS",
    "QUARANTINE_RULES",
    "Emission",
    "Expected",
    "applicable_rules",
    "emit",
    "write_files",
    "write_truth_parquet",
]
