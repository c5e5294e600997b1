"""The `District`: the generated truth, and its materialisation into contract-typed Arrow tables.

`District.table(feed_id)` is what `clean/<department>/<feed>/` must hold after ingest + clean of
the emission (same rows, same values, on the contract's columns). Tables are built lazily from
the frames and cached.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from safetynet.demo.synth import district as dist
from safetynet.demo.synth.model import (
    AID_TYPES,
    AS_OF,
    CASE_STATUS,
    CAT_CODE,
    CATEGORIES,
    CHECK_RESULTS,
    DIS_CATS,
    ENROL_STATUS,
    MED_SCHEMES,
    MONEY_T,
    MONTHS,
    PENSION_SCHEMES,
    PERSON_STATUS,
    PROPERTY_STATUS,
    RATINGS,
    RELATIONS,
    SUBSIDIES,
    UNEMP_STATUS,
    USAGES,
    VEHICLE_STATUS,
    VEHICLE_TYPES,
    Frame,
    arrow_codes,
    arrow_date,
    arrow_decimal,
    arrow_fixed,
    days_to_ymd,
    flen,
    rank_in_group,
)
from schemas.contract import Contract
from schemas.registry import contracts, get

DECIMAL_T = pa.decimal128(12, 4)
CHUNK = 1 << 22  # rows per Arrow chunk of a truth table
_PLATE_ALPHA = np.frombuffer(b"0123456789ABCDEFGHJKLMNPQRSTUVWXYZ", np.uint8)


def truth_schema(c: Contract) -> pa.Schema:
    """The contract's clean schema without the lineage columns."""
    return pa.schema([f for f in c.arrow_schema() if not f.name.startswith("_")], metadata=c.arrow_schema().metadata)


def _s(values: np.ndarray | list) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())


def _pad(values: np.ndarray, width: int) -> pa.Array:
    return pc.utf8_lpad(_s(np.asarray(values, np.int64)), width, "0")


def _join(*parts) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


@dataclass
class District:
    """A generated district: people, households, every feed's facts (frames) and the planted households.

    `as_of` is the snapshot date (facts run up to the day before); `planted` lists the planted and
    near-miss household per warning rule (see `safetynet.demo.synth.plant`).
    """

    seed: int
    policy: dict
    people: Frame
    households: Frame
    ids: np.ndarray  # 'S18' resident ID numbers, one per person
    outside_ids: np.ndarray  # 'S18' IDs of property owners outside the register
    employers: tuple[list[str], list[str]]  # names, credit codes
    facts: dict[str, Frame]
    planted_index: list[tuple[int, str, str, str]]  # (household index, rule, kind, note)
    generic: frozenset[str] = frozenset()  # feeds generated from their contract (`generate.generic_facts`)
    as_of: dt.date = AS_OF
    #: a city of several counties: the district's streets split into consecutive blocks, one per county
    #: code (the first keeps its streets' codes under the first county): region codes, 户号 and case
    #: numbers carry the street's county. Empty: the one district (`district.DISTRICT_CODE`).
    counties: tuple[str, ...] = ()
    _cache: dict[str, pa.Table] = field(default_factory=dict, repr=False)

    def street_county(self, street: int) -> str:
        """The county code of a street (index into `district.STREETS`)."""
        if not self.counties:
            return dist.DISTRICT_CODE
        return self.counties[street * len(self.counties) // len(dist.STREETS)]

    def _street_codes(self) -> pa.Array:
        return pa.array([f"{self.street_county(i)}{i + 1:03d}" for i in range(len(dist.STREETS))])

    def _region_codes(self) -> list[str]:
        tree = dist.region_tree()
        return [f"{self.street_county(int(st))}{c[6:]}" for c, st in zip(tree.code.tolist(), tree.street.tolist(),
                                                                         strict=True)]

    # ---- sizes ----------------------------------------------------------------------------------
    @property
    def persons(self) -> int:
        return flen(self.people)

    @property
    def n_households(self) -> int:
        return flen(self.households)

    def counts(self) -> dict[str, int]:
        """Truth rows per feed (the expected clean rows)."""
        return {fid: self.rows(fid) for fid in contracts()}

    def rows(self, feed_id: str) -> int:
        if feed_id == "public_security.person":
            return self.persons
        return flen(self.facts[feed_id])

    # ---- shared columns ---------------------------------------------------------------------------
    @property
    def id_array(self) -> pa.Array:
        if "__ids" not in self._cache:
            self._cache["__ids"] = pa.table({"x": arrow_fixed(self.ids)})
        return self._cache["__ids"]["x"].combine_chunks()

    def id_of(self, person: np.ndarray) -> pa.Array:
        return self.id_array.take(pa.array(np.asarray(person, np.int64)))

    @property
    def household_no(self) -> pa.Array:
        """户号: street code (9 digits) + a 6-digit serial within the street."""
        if "__hhno" not in self._cache:
            tree = dist.region_tree()
            region = self.households["region"].astype(np.int64)
            street = tree.street[region].astype(np.int64)
            serial = rank_in_group(street) + 1
            codes = self._street_codes()
            self._cache["__hhno"] = pa.table({"x": _join(codes.take(pa.array(street)), _pad(serial, 6))})
        return self._cache["__hhno"]["x"].combine_chunks()

    def region_code(self, region: np.ndarray) -> pa.Array:
        if "__codes" not in self._cache:
            self._cache["__codes"] = pa.table({"x": pa.array(self._region_codes(), pa.string())})
        return self._cache["__codes"]["x"].combine_chunks().take(pa.array(np.asarray(region, np.int64)))

    def address(self, region, road, num, bld, room) -> pa.Array:
        """住址/坐落: `…路N号B栋R室` in communities, `…街道X村G组N号` in villages."""
        tree = dist.region_tree()
        region = np.asarray(region, np.int64)
        streets = pa.array([s[0] for s in dist.STREETS]).take(pa.array(tree.street[region].astype(np.int64)))
        town = pa.array(list(tree.name)).take(pa.array(region))
        num_s, bld_s = _s(np.asarray(num, np.int64)), _s(np.asarray(bld, np.int64))
        comm = _join(dist.PROVINCE_CITY_DISTRICT, pa.array(dist.ROADS).take(pa.array(np.asarray(road, np.int64))),
                     num_s, "号", bld_s, "栋", _s(np.asarray(room, np.int64)), "室")
        vill = _join(dist.PROVINCE_CITY_DISTRICT, streets, town, num_s, "组", bld_s, "号")
        return pc.if_else(pa.array(tree.village[region]), vill, comm)

    def names(self, p: Frame) -> pa.Array:
        given = pa.array(list(dist.GIVEN_MALE + dist.GIVEN_FEMALE))
        g2 = p["g2"].astype(np.int64)
        return _join(pa.array([s for s, _ in dist.SURNAMES]).take(pa.array(p["sur"].astype(np.int64))),
                     given.take(pa.array(p["g1"].astype(np.int64))),
                     pc.fill_null(given.take(pa.array(g2, mask=g2 < 0)), ""))

    def case_no(self) -> pa.Array:
        """救助家庭编号: street code + category code + start year + serial."""
        if "__caseno" not in self._cache:
            cs = self.facts["civil_affairs.assistance_case"]
            tree = dist.region_tree()
            street = tree.street[self.households["region"][cs["hh"]].astype(np.int64)].astype(np.int64)
            codes = self._street_codes()
            cat = pa.array([CAT_CODE[c] for c in CATEGORIES]).take(pa.array(cs["cat"].astype(np.int64)))
            y, _, _ = days_to_ymd(cs["start"])
            self._cache["__caseno"] = pa.table({"x": _join(codes.take(pa.array(street)), cat, _s(y),
                                                             _pad(np.arange(flen(cs)) + 1, 6))})
        return self._cache["__caseno"]["x"].combine_chunks()

    # ---- tables -----------------------------------------------------------------------------------
    def frame(self, feed_id: str) -> Frame:
        return self.people if feed_id == "public_security.person" else self.facts[feed_id]

    def table(self, feed_id: str, keep: bool = True) -> pa.Table:
        """The truth of one feed: the contract's clean columns, in generation order.

        Built in chunks of `CHUNK` rows (a single Arrow string array cannot pass 2 GB, which the
        50 M employment rows of a 10 M district would), so compare sorted by the key. Kept for the
        next call unless `keep` is false (a caller writing each feed once: at 10 M persons the
        tables together hold 13 GB).
        """
        if feed_id in self._cache:
            return self._cache[feed_id] if keep else self._cache.pop(feed_id)
        c = get(feed_id)
        f = self.frame(feed_id)
        n = flen(f)
        build = partial(self.generic_columns, c) if feed_id in self.generic else getattr(self, "_t_" + c.feed)
        parts = [pa.table(build({k: v[lo:lo + CHUNK] for k, v in f.items()}, lo), schema=truth_schema(c))
                 for lo in range(0, n, CHUNK)] or [truth_schema(c).empty_table()]
        t = pa.concat_tables(parts)
        if keep:
            self._cache[feed_id] = t
        return t

    def tables(self) -> dict[str, pa.Table]:
        return {fid: self.table(fid) for fid in contracts()}

    @property
    def planted(self) -> pa.Table:
        """household_no, rule_id, kind ("planted" | "near_miss"), note — per warning rule."""
        from safetynet.demo.synth.plant import PLANTED_SCHEMA

        idx = np.array([r[0] for r in self.planted_index], np.int64)
        return pa.table({"household_no": self.household_no.take(pa.array(idx)),
                         "rule_id": [r[1] for r in self.planted_index], "kind": [r[2] for r in self.planted_index],
                         "note": [r[3] for r in self.planted_index]}, schema=PLANTED_SCHEMA)

    def _t_person(self, p: Frame, lo: int) -> dict:
        h = self.households
        hh = pa.array(p["hh"].astype(np.int64))
        addr = self.address(h["region"], h["road"], h["num"], h["bld"], h["room"])
        return {"id_no": self.id_array.slice(lo, flen(p)), "name": self.names(p),
                "gender": pc.if_else(pa.array(p["male"]), "男", "女"),
                "birth_date": arrow_date(p["birth"]), "household_no": self.household_no.take(hh),
                "relation_to_head": arrow_codes(p["rel"], RELATIONS), "region_code": self.region_code(h["region"]).take(hh),
                "address": addr.take(hh), "hukou_type": pc.if_else(pa.array(p["rural"]), "农村", "城镇"),
                "status": arrow_codes(p["status"], PERSON_STATUS), "status_date": arrow_date(p["sdate"])}

    def _t_vehicle(self, f: Frame, lo: int) -> dict:
        x = (f["plate"] * 7919 + 104_729) % 34 ** 5
        chars = np.stack([_PLATE_ALPHA[(x // 34 ** k) % 34] for k in range(4, -1, -1)], axis=1)
        plate = _join("湘A", arrow_fixed(np.ascontiguousarray(chars).view("S5").ravel()))
        return {"plate_no": plate, "owner_id_no": self.id_of(f["person"]), "vehicle_type": arrow_codes(f["vtype"], VEHICLE_TYPES),
                "registered_date": arrow_date(f["reg"]), "status": arrow_codes(f["status"], VEHICLE_STATUS)}

    def _t_employment(self, f: Frame, lo: int) -> dict:
        from safetynet.demo.synth.district import INSURANCE_SETS

        names, codes = self.employers
        e = pa.array(f["employer"].astype(np.int64))
        sets = pa.array([list(s) for s in INSURANCE_SETS], pa.list_(pa.string()))
        return {"id_no": self.id_of(f["person"]), "month": arrow_codes(f["month"], MONTHS),
                "employer_name": pa.array(names).take(e), "employer_credit_code": pa.array(codes).take(e),
                "wage": arrow_decimal(f["wage"], MONEY_T), "insurance_types": sets.take(pa.array(f["ins"].astype(np.int64)))}

    def _t_unemployment(self, f: Frame, lo: int) -> dict:
        return {"id_no": self.id_of(f["person"]), "registered_date": arrow_date(f["reg"]),
                "benefit_monthly": arrow_decimal(f["benefit"], MONEY_T, f["benefit"] >= 0),
                "status": arrow_codes(f["status"], UNEMP_STATUS), "status_date": arrow_date(f["sdate"])}

    def _t_pension(self, f: Frame, lo: int) -> dict:
        return {"id_no": self.id_of(f["person"]), "month": arrow_codes(f["month"], MONTHS),
                "amount": arrow_decimal(f["amount"], MONEY_T), "scheme": arrow_codes(f["scheme"], PENSION_SCHEMES)}

    @staticmethod
    def claim_ids(f: Frame, lo: int) -> pa.Array:
        """结算单号: JS + settlement date + a 9-digit serial (the claim's row number)."""
        y, m, d = days_to_ymd(f["date"])
        return _join("JS", _s(y * 10000 + m * 100 + d), _pad(lo + np.arange(flen(f)) + 1, 9))

    def _t_claim(self, f: Frame, lo: int) -> dict:
        from safetynet.demo.synth.district import DIAGNOSES, HOSPITALS

        dx = pa.array(f["dx"].astype(np.int64))
        s = f["serious"]
        return {"claim_id": self.claim_ids(f, lo), "id_no": self.id_of(f["person"]), "settle_date": arrow_date(f["date"]),
                "hospital_name": pa.array(HOSPITALS).take(pa.array(f["hosp"].astype(np.int64))),
                "inpatient": pa.array(f["inp"]), "diagnosis_code": pa.array([d[0] for d in DIAGNOSES]).take(dx),
                "diagnosis_name": pa.array([d[1] for d in DIAGNOSES]).take(dx),
                "total_amount": arrow_decimal(f["total"], MONEY_T), "fund_paid": arrow_decimal(f["fund"], MONEY_T),
                "out_of_pocket": arrow_decimal(f["oop"], MONEY_T), "serious_illness": pa.array(s == 1, mask=s < 0)}

    def _t_enrollment(self, f: Frame, lo: int) -> dict:
        return {"id_no": self.id_of(f["person"]), "scheme": arrow_codes(f["scheme"], MED_SCHEMES),
                "status": arrow_codes(f["status"], ENROL_STATUS), "month": arrow_codes(f["month"], MONTHS)}

    def property_rows(self, snapshot: str, f: Frame | None = None) -> dict:
        """Columns of the newest ("new", the truth) or the older ("old") property snapshot."""
        f = self.facts["housing.property"] if f is None else f
        sel = np.ones(flen(f), bool) if snapshot == "new" else f["in_old"]
        status = f["status"] if snapshot == "new" else f["old_status"]
        g = {k: v[sel] for k, v in f.items()}
        owner = np.where(g["person"] >= 0, 0, 1)
        ids = pc.if_else(pa.array(owner == 0), self.id_of(np.maximum(g["person"], 0)),
                         arrow_fixed(self.outside_ids).take(pa.array(np.maximum(g["outside"], 0).astype(np.int64))))
        pid = g["pid"].astype(np.int64)
        # 不动产单元号 (28 chars): region (12) + GB + parcel (5) + F + building (4) + unit (4)
        return {"property_id": _join(self.region_code(g["region"]), "GB", _pad(pid // 10_000 + 1, 5), "F",
                                     _pad(pid % 10_000 // 100 + 1, 4), _pad(pid % 100 + 1, 4)),
                "owner_id_no": ids, "share": arrow_decimal(g["share"], DECIMAL_T), "usage": arrow_codes(g["usage"], USAGES),
                "area_m2": arrow_decimal(g["area"], DECIMAL_T),
                "address": self.address(g["region"], g["road"], g["num"], g["bld"], g["room"]),
                "registered_date": arrow_date(g["reg"]), "status": arrow_codes(status[sel], PROPERTY_STATUS)}

    def _t_property(self, f: Frame, lo: int) -> dict:
        return self.property_rows("new", f)

    def _t_housing_aid(self, f: Frame, lo: int) -> dict:
        return {"id_no": self.id_of(f["person"]), "aid_type": arrow_codes(f["atype"], AID_TYPES),
                "amount_monthly": arrow_decimal(f["amount"], MONEY_T), "start_date": arrow_date(f["start"]),
                "end_date": arrow_date(f["end"])}

    def _t_dangerous_house(self, f: Frame, lo: int) -> dict:
        hh = pa.array(f["hh"].astype(np.int64))
        return {"household_no": self.household_no.take(hh),
                "region_code": self.region_code(self.households["region"]).take(hh),
                "rating": arrow_codes(f["rating"], RATINGS), "assessed_date": arrow_date(f["date"]),
                "renovated": pa.array(f["renov"])}

    def generic_columns(self, c: Contract, f: Frame, lo: int = 0) -> dict:
        """The columns of a feed generated from its contract: `generate.generic_facts` codes → values."""
        from safetynet.demo.synth.generate import NULL, generic_people, household_members

        h = self.households
        out = {}
        for fd in c.fields:
            code = f[fd.name]
            ok = code != NULL
            x = np.where(ok, code, 0)
            k = fd.kind
            if k == "id_no":
                a = self.id_of(x)
            elif fd.name == "name":
                a = self.names({g: self.people[g][x] for g in ("sur", "g1", "g2")})
            elif fd.name == "household_no":
                a = self.household_no.take(pa.array(x))
            elif fd.name == "address":
                a = self.address(*(h[g][x] for g in ("region", "road", "num", "bld", "room")))
            elif fd.name == "case_no":
                a = self.case_no().take(pa.array(x))
            elif k == "members":  # the household's members a record may name, as a case of it lists them
                n = len(x)
                cases = {"hh": x, "cat": np.full(n, -1), "applicant": np.zeros(n, np.int64)}
                a = self.member_lists(household_members(cases, self.people, generic_people(self.people)), n)
            elif k == "region_code":
                a = self.region_code(x)
            elif k == "credit_code":
                a = pa.array(self.employers[1]).take(pa.array(x))
            elif k == "string":
                a = _join(fd.label_zh, _pad(x + 1, 6))
            elif k in ("date", "datetime"):
                a = arrow_date(x) if k == "date" else pa.array(x, pa.timestamp("s", tz="Asia/Shanghai"))
            elif k in ("money", "decimal"):
                a = arrow_decimal(x, MONEY_T if k == "money" else DECIMAL_T)
            elif k in ("int", "bool"):
                a = pa.array(x.astype(np.int32)) if k == "int" else pa.array(x == 1)
            elif k == "text_list":
                a = pa.array([[v] for v in fd.values or (fd.label_zh,)], pa.list_(pa.string())).take(pa.array(x))
            else:  # enum, urban_rural, month
                a = arrow_codes(x, fd.values if k == "enum" else ("城镇", "农村") if k == "urban_rural" else MONTHS)
            out[fd.name] = a if ok.all() else pc.if_else(pa.array(ok), a, pa.scalar(None, a.type))
        return out

    def case_members(self) -> pa.Array:
        """list<struct<id_no, relation>> per case, in member order."""
        if "__members" in self._cache:
            return self._cache["__members"]["x"].combine_chunks()
        out = self.member_lists(self.facts["civil_affairs.case_member"], flen(self.facts["civil_affairs.assistance_case"]))
        self._cache["__members"] = pa.table({"x": out})
        return out

    def member_lists(self, mf: Frame, n: int) -> pa.Array:
        """list<struct<id_no, relation>> for `n` owners from member rows (`case` = owner, `person`, `rel`, `ord`)."""
        order = np.lexsort((mf["ord"], mf["case"]))
        owner = mf["case"][order].astype(np.int64)
        offsets = np.r_[0, np.cumsum(np.bincount(owner, minlength=n))].astype(np.int32)
        structs = pa.StructArray.from_arrays([self.id_of(mf["person"][order]), arrow_codes(mf["rel"][order], RELATIONS)],
                                             ["id_no", "relation"])
        return pa.ListArray.from_arrays(pa.array(offsets), structs)

    def _t_assistance_case(self, cs: Frame, lo: int) -> dict:
        hh = cs["hh"].astype(np.int64)
        n = flen(cs)
        return {"case_no": self.case_no().slice(lo, n), "applicant_id_no": self.id_of(cs["applicant"]),
                "category": arrow_codes(cs["cat"], CATEGORIES),
                "urban_rural": pc.if_else(pa.array(self.households["rural"][hh]), "农村", "城镇"),
                "region_code": self.region_code(self.households["region"][hh]),
                "monthly_amount": arrow_decimal(cs["amount"], MONEY_T), "start_date": arrow_date(cs["start"]),
                "end_date": arrow_date(cs["end"]), "status": arrow_codes(cs["status"], CASE_STATUS),
                "members": self.case_members().slice(lo, n)}

    def _t_assistance_payment(self, f: Frame, lo: int) -> dict:
        return {"case_no": self.case_no().take(pa.array(f["case"].astype(np.int64))), "month": arrow_codes(f["month"], MONTHS),
                "amount": arrow_decimal(f["amount"], MONEY_T)}

    def _t_income_check(self, f: Frame, lo: int) -> dict:
        return {"case_no": self.case_no().take(pa.array(f["case"].astype(np.int64))),
                "checked_at": pa.array(f["ts"], pa.timestamp("s", tz="Asia/Shanghai")),
                "monthly_income_per_capita": arrow_decimal(f["income"], MONEY_T),
                "assets_total": arrow_decimal(f["assets"], MONEY_T), "result": arrow_codes(f["result"], CHECK_RESULTS)}

    def _t_disability(self, f: Frame, lo: int) -> dict:
        subs = f["subs"].astype(np.int64)
        sets = pa.array([None, [SUBSIDIES[0]], [SUBSIDIES[1]], list(SUBSIDIES)], pa.list_(pa.string()))
        return {"id_no": self.id_of(f["person"]), "category": arrow_codes(f["cat"], DIS_CATS),
                "grade": pa.array(f["grade"].astype(np.int32)), "issued_date": arrow_date(f["issued"]),
                "subsidies": sets.take(pa.array(subs))}
