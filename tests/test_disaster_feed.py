"""应急 受灾人员: an emergency-management export in its own words, through the real ingest and clean."""

from __future__ import annotations

from safetynet.intake import ingest
from safetynet.intake.clean import clean_feed, clean_path
from schemas import idno
from schemas.registry import get


def _id(s17: str) -> str:
    return s17 + idno.check_char(s17)


def test_a_disaster_statistics_export_is_mapped_validated_and_cleaned(local_settings, local_store):
    c = get("emergency_management.disaster")
    a, b = _id("43010319700305201"), _id("43010319851111302")
    rows = ["公民身份号码,受灾日期,灾害类型,直接经济损失,房屋受损情况,行政区划代码",
            f"{a},2026/7/2,洪水,\"38,500.00\",倒塌房屋,430103011003",
            f"{b},2026年7月2日,内涝,1200元,一般损坏,430103011003",
            f"{b},2026-08-15,旱灾,800,未损坏,430103011003",
            f"{a},2026-07-03,泥石流,100,倒塌,430103011003"]  # not a disaster type the contract knows
    local_store.write_bytes("landing/emergency_management/disaster/受灾人员_20260820.csv",
                            ("\n".join(rows) + "\n").encode("gbk"))
    s = local_settings.model_copy(update={"mappings": local_settings.work_dir / "none", "max_quarantine_rate": 0.5})
    r = ingest.ingest(s, local_store, [c.feed_id], kafka=False).feeds[c.feed_id]
    assert (r.input, r.accepted, dict(r.quarantined)) == (4, 3, {"enum_value": 1})
    clean_feed(local_store, c)
    got = {(g["id_no"], g["disaster_date"].isoformat(), g["disaster_type"], str(g["direct_loss"]), g["house_damage"])
           for g in local_store.read_parquet(clean_path(c)).to_pylist()}
    assert got == {(a, "2026-07-02", "洪涝", "38500.00", "倒塌"), (b, "2026-07-02", "洪涝", "1200.00", "部分损坏"),
                   (b, "2026-08-15", "干旱", "800.00", "无")}
