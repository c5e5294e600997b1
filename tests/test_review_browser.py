"""The review app in a real browser (Debian's Chromium driven by Playwright), on SQLite and PostgreSQL.

One scenario per database, as the people who use it would walk through it:

1. a street worker logs in through the form; the warning list holds only her street; an htmx
   filter (rule) narrows it, and the counts agree with the database;
2. she opens a household: members with masked ID numbers only, then records a visit and a
   dismissal on one case — the status badge follows, the timeline shows both;
3. she exports the list as Excel: Chinese headers, masked IDs only, as many rows as the list;
4. the next snapshot is imported: the dismissed case stays dismissed (or, if its facts changed
   materially, it re-opens with the change written on the household page);
5. the charts page draws its four charts (locally served ECharts, data from the JSON API);
6. an auditor finds her household view, both decisions and the export in the audit log, whose
   hash chain is intact.

List, household and charts pages must log no console errors (CSP violations would show there);
full-page screenshots of them go to var/screenshots/ (or $SAFETYNET_SCREENSHOTS; SQLite run only).

Only 127.0.0.1 is reachable from the browser (host resolver rules); no browser is downloaded.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect
from sqlalchemy import func, select

from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from safetynet.review import models as m
from safetynet.review.load import load_snapshot, material_change
from safetynet.review.queries import region_names
from tests.review_support import FIRST, NEXT, PASSWORD, STREET_A, live_server, publish_snapshot

pytestmark = [pytest.mark.integration]

SCREENSHOTS = Path(os.environ.get("SAFETYNET_SCREENSHOTS", Path(__file__).resolve().parents[1] / "var" / "screenshots"))
MASKED_ID = re.compile(r"\d{6}\*{8}\d{3}[\dX]")
# an 18-character ID number standing on its own (record keys such as JS2026… are letter-prefixed)
UNMASKED_ID = re.compile(r"(?<![0-9A-Za-z])\d{17}[\dX](?![0-9A-Za-z])")
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def next_store(published, tmp_path_factory) -> ObjectStore:
    """A copy of the shared store with the next snapshot (2026-12-01) published too."""
    copy_dir = tmp_path_factory.mktemp("review_browser_store") / "store"
    shutil.copytree(published.dir, copy_dir)
    old = os.environ.pop("SAFETYNET_KAFKA_BOOTSTRAP", None)
    try:
        publish_snapshot(copy_dir, NEXT)
    finally:
        if old is not None:
            os.environ["SAFETYNET_KAFKA_BOOTSTRAP"] = old
    return ObjectStore.from_settings(Settings(store=str(copy_dir)))


@pytest.fixture(scope="module")
def server(review_db):
    srv = live_server(review_db.engine)
    yield srv
    srv.stop()


# ---- helpers --------------------------------------------------------------------------------------
class Console:
    """Console errors and uncaught exceptions of a page (CSP violations are reported as errors)."""

    def __init__(self, page):
        self.errors: list[str] = []
        self.favicon_missing = False

        def on_console(msg) -> None:
            if msg.type != "error":
                return
            src = (msg.location or {}).get("url", "")
            if src.endswith("/favicon.ico"):  # the browser's own request; the app has no icon (cosmetic)
                self.favicon_missing = True
                return
            self.errors.append(f"{page.url}: {msg.text} [{src}]")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: uncaught {exc}"))

    def assert_clean(self, where: str) -> None:
        assert not self.errors, f"browser console errors on the {where} page: {self.errors}"


def new_page(browser, server):
    ctx = browser.new_context(base_url=server.url, locale="zh-CN", viewport={"width": 1366, "height": 900},
                              accept_downloads=True)
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    return ctx, page, Console(page)


def log_in(page, server, start: str, username: str) -> None:
    """Open `start` unauthenticated, get sent to the login form, log in, land back on `start`."""
    page.goto(start)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("form[action='/login'] button[type=submit]")
    page.wait_for_url(server.url + start)


def count_warnings(engine, day, **where) -> int:
    w = m.warnings.c
    with engine.connect() as c:
        return c.scalar(select(func.count()).select_from(m.warnings).where(
            w.snapshot_date == day, *(getattr(w, k) == v for k, v in where.items())))


def all_id_numbers(engine) -> set[str]:
    with engine.connect() as c:
        ids = set(c.scalars(select(m.members.c.id_no)))
        ids |= {x for x in c.scalars(select(m.warnings.c.subject_id_no)) if x}
    assert len(ids) > 1000
    return ids


def assert_no_unmasked(text: str, ids: set[str], where: str) -> None:
    found = UNMASKED_ID.findall(text)
    assert not found, f"unmasked ID numbers in {where}: {found[:3]}"
    leaked = [i for i in ids if i in text]
    assert not leaked, f"known ID numbers in {where}: {leaked[:3]}"


def pick_case(engine, next_store) -> dict:
    """The highest-ranked case of street A (list order) whose concern is still warned on in NEXT."""
    from safetynet.publish import snapshot

    nxt = {r["alert_key"] for r in snapshot.read(next_store, "warnings", NEXT, identified=True).to_pylist()}
    w = m.warnings.c
    with engine.connect() as c:
        rows = c.execute(select(w.alert_key, w.household_no, w.rule_id, w.rule_title_zh, w.warning_id)
                         .where(w.snapshot_date == FIRST, w.street_code == STREET_A)
                         .order_by(w.score.desc(), w.household_no, w.warning_id)).mappings().all()
    persisting = [dict(r) for r in rows if r["alert_key"] in nxt]
    assert persisting, "no warning of street A persists into the next snapshot"
    return persisting[0]


def shot(page, name: str, enabled: bool) -> None:
    if enabled:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def case_status(page, key: str):
    return page.locator(f'[id="case-{key}"] h3 .status')


# ---- the scenario ---------------------------------------------------------------------------------
def test_street_worker_decides_exports_and_auditor_traces(review_db, server, next_store, browser, tmp_path):
    eng = review_db.engine
    screenshots = review_db.kind == "sqlite"
    street_name = region_names()[STREET_A]
    ids = all_id_numbers(eng)
    case = pick_case(eng, next_store)
    key, hh = case["alert_key"], case["household_no"]

    ctx, page, console = new_page(browser, server)
    try:
        # 1. log in; only street A; an htmx filter narrows the list consistently --------------------------
        log_in(page, server, "/", "street_a")
        street_total = count_warnings(eng, FIRST, street_code=STREET_A)
        assert 0 < street_total < count_warnings(eng, FIRST), "street A should hold some, not all, warnings"
        expect(page.locator("#total")).to_have_text(str(street_total))
        expect(page.locator(".summary")).to_contain_text(f"快照 {FIRST}")
        rows = page.locator("table.list tbody tr")
        expect(rows).to_have_count(min(street_total, 50))
        for cell in rows.locator("td:nth-child(5)").all_inner_texts():
            assert cell.splitlines()[0].strip() == street_name, cell
        street_opts = page.locator("select[name=street] option").evaluate_all("os => os.map(o => o.value)")
        assert street_opts == ["", STREET_A]
        assert_no_unmasked(page.content(), ids, "the list page")

        rule_total = count_warnings(eng, FIRST, street_code=STREET_A, rule_id=case["rule_id"])
        assert rule_total < street_total or street_total == 1
        rule_opt = page.locator(f"select[name=rule] option[value='{case['rule_id']}']")
        expect(rule_opt).to_have_text(f"{case['rule_title_zh']}（{rule_total}）")
        with page.expect_request(lambda r: r.headers.get("hx-request") == "true" and "rule=" in r.url):
            page.select_option("select[name=rule]", case["rule_id"])  # htmx: change → GET, swap #page
        expect(page).to_have_url(re.compile(rf"[?&]rule={case['rule_id']}"))
        expect(page.locator("#total")).to_have_text(str(rule_total))
        expect(rows).to_have_count(min(rule_total, 50))
        expect(page.locator("select[name=rule]")).to_have_value(case["rule_id"])
        assert set(rows.locator("td:nth-child(3)").all_inner_texts()) == {case["rule_title_zh"]}
        for cell in rows.locator("td:nth-child(5)").all_inner_texts():
            assert cell.splitlines()[0].strip() == street_name, cell
        console.assert_clean("list")

        # 2. the household: masked members; visit, then dismissal; badges and timeline ------------------
        page.locator(f"table.list a[href='/households/{hh}']").first.click()
        page.wait_for_url(f"{server.url}/households/{hh}")
        expect(page.locator("h1")).to_have_text(f"家庭 {hh}")
        with eng.connect() as c:
            n_members = c.scalar(select(func.count()).select_from(m.members).where(m.members.c.household_no == hh))
            names = set(c.scalars(select(m.members.c.name).where(m.members.c.household_no == hh)))
        member_ids = page.locator("section.card:has(h2:text-is('家庭成员')) tbody tr td:nth-child(2)")
        expect(member_ids).to_have_count(n_members)
        for shown in member_ids.all_inner_texts():
            assert MASKED_ID.fullmatch(shown.strip()), shown
        html = page.content()
        assert_no_unmasked(html, ids, "the household page")
        assert not [n for n in names if len(n) > 1 and n in html], "a member's full name is on the page"

        card = page.locator(f'[id="case-{key}"]')
        expect(case_status(page, key)).to_have_text("待处置")
        visit_note = "浏览器测试：已入户走访，核实家庭收入情况"
        visit = card.locator("form[data-action='visit']")
        visit.locator("input[name=note]").fill(visit_note)
        with page.expect_navigation():
            visit.locator("button[type=submit]").click()
        expect(case_status(page, key)).to_have_text("已走访核实")

        dismiss_note = "浏览器测试：经核实家庭已有稳定收入来源"
        dismiss = card.locator("form[data-action='dismiss']")
        dismiss.locator("select[name=reason_code]").select_option("verified_no_risk")
        dismiss.locator("input[name=note]").fill(dismiss_note)
        with page.expect_navigation():
            dismiss.locator("button[type=submit]").click()
        expect(case_status(page, key)).to_have_text("已排除")
        expect(card.locator("form[data-action='visit'], form[data-action='dismiss']")).to_have_count(0)
        expect(card.locator("form[data-action='close']")).to_have_count(1)

        timeline = page.locator("ol.timeline li.action")
        expect(timeline.filter(has_text="走访核实（待处置 → 已走访核实）").filter(has_text=visit_note)).to_have_count(1)
        expect(timeline.filter(has_text="排除（已走访核实 → 已排除），原因：核实无风险")
               .filter(has_text=dismiss_note)).to_have_count(1)
        with eng.connect() as c:
            assert c.scalar(select(m.cases.c.status).where(m.cases.c.alert_key == key)) == "dismissed"
        assert_no_unmasked(page.content(), ids, "the household page after the decisions")
        console.assert_clean("household")
        shot(page, "review-household.png", screenshots)

        # 3. Excel export of the (unfiltered) list ----------------------------------------------------------
        page.goto("/")
        expect(page.locator("#total")).to_have_text(str(street_total))
        console.assert_clean("list")
        shot(page, "review-list.png", screenshots)
        with page.expect_download() as dl_info:
            page.click("#export-xlsx")
        dl = dl_info.value
        assert re.fullmatch(r"预警清单_\d{4}-\d{2}-\d{2}\.xlsx", dl.suggested_filename), dl.suggested_filename
        xlsx = tmp_path / "export.xlsx"
        dl.save_as(xlsx)
        check_export(xlsx, street_total, street_name, case["warning_id"], ids)

        # 4. the next snapshot: the dismissed case stays dismissed, unless its facts changed materially --
        res = load_snapshot(eng, next_store, NEXT)
        assert res.loaded and res.snapshot_date == NEXT
        change = material_change_of(eng, key)
        page.goto("/")
        expect(page.locator(".summary")).to_contain_text(f"快照 {NEXT}")
        expect(page.locator("#total")).to_have_text(str(count_warnings(eng, NEXT, street_code=STREET_A)))
        want_status, want_zh = ("new", "待处置") if change else ("dismissed", "已排除")
        n_status = _count_status(eng, want_status)
        with page.expect_request(lambda r: r.headers.get("hx-request") == "true" and "status=" in r.url):
            page.select_option("select[name=status]", want_status)
        expect(page.locator("#total")).to_have_text(str(n_status))
        row = rows.filter(has=page.locator(f"a[href='/households/{hh}']")).filter(has_text=case["rule_title_zh"])
        expect(row).to_have_count(1)
        expect(row.locator(".status")).to_have_text(want_zh)
        if change:
            expect(row).to_contain_text("重新开启：")
        page.goto(f"/households/{hh}")
        expect(case_status(page, key)).to_have_text(want_zh)
        reopened = page.locator(f'[id="case-{key}"] p.warn', has_text="因事实发生实质变化而重新开启")
        if change:
            expect(reopened).to_contain_text(change)
        else:
            expect(reopened).to_have_count(0)
        expect(page.locator("ol.timeline li.action").filter(has_text=visit_note)).to_have_count(1)
        expect(page.locator("ol.timeline li.action").filter(has_text=dismiss_note)).to_have_count(1)

        # 5. charts ---------------------------------------------------------------------------------------
        page.goto("/charts")
        page.wait_for_selector('body[data-charts-ready="1"]')
        page.wait_for_timeout(700)  # let the echarts animations finish before the screenshot
        for cid in ("chart-street", "chart-rule", "chart-time", "chart-progress"):
            expect(page.locator(f"#{cid} canvas").first).to_be_visible()
        console.assert_clean("charts")
        shot(page, "review-charts.png", screenshots)
    finally:
        ctx.close()

    # 6. the auditor traces it all -----------------------------------------------------------------------
    actx, apage, aconsole = new_page(browser, server)
    try:
        log_in(apage, server, "/audit", "auditor")
        expect(apage.locator("#chain")).to_contain_text("完整")
        apage.fill("form.filters input[name=username]", "street_a")
        apage.click("form.filters button[type=submit]")
        expect(apage).to_have_url(re.compile(r"/audit\?username=street_a"))
        expect(apage.locator("#chain")).to_contain_text("哈希链校验：完整")
        arows = apage.locator("table.audit tbody tr")
        expect(arows.first).to_be_visible()
        assert set(arows.locator("td:nth-child(3)").all_inner_texts()) == {"street_a"}

        def entries(action_zh: str, obj: str):
            return arows.filter(has=apage.locator("td:nth-child(6)", has_text=re.compile(f"^{action_zh}$"))) \
                        .filter(has=apage.locator("td:nth-child(7)", has_text=re.compile(f"^{re.escape(obj)}$")))

        expect(entries("查看家庭详情", f"household:{hh}").first).to_be_visible()
        decisions = entries("处置", f"case:{key}")
        expect(decisions).to_have_count(2)
        details = " ".join(decisions.locator("td:nth-child(9)").all_inner_texts())
        assert '"decision":"visit"' in details and '"decision":"dismiss"' in details, details
        export = entries("导出", "warnings:xlsx")
        expect(export).to_have_count(1)
        expect(export.locator("td:nth-child(9)")).to_contain_text(f'"rows":{street_total}')
        assert_no_unmasked(apage.content(), ids, "the audit page")
        aconsole.assert_clean("audit")
    finally:
        actx.close()


def check_export(path: Path, total: int, street_name: str, warning_id: str, ids: set[str]) -> None:
    from openpyxl import load_workbook

    from safetynet.review.app import EXPORT_HEADERS

    wb = load_workbook(path, read_only=True)
    try:
        ws = wb["预警清单"]
        rows = [list(r) for r in ws.iter_rows(values_only=True)]
    finally:
        wb.close()
    header, body = rows[0], rows[1:]
    assert header[0] == "快照日期"
    assert header == EXPORT_HEADERS
    assert len(body) == total
    col = {h: i for i, h in enumerate(header)}
    for r in body:
        assert r[col["快照日期"]] == FIRST.isoformat()
        assert r[col["街道（乡镇）"]] == street_name
        shown = r[col["当事人身份号码（脱敏）"]]
        assert shown in (None, "") or MASKED_ID.fullmatch(shown), shown
        for v in r:
            if isinstance(v, str):
                assert_no_unmasked(v, ids, "the Excel export")
            elif isinstance(v, int):
                assert len(str(v)) < 17, f"a long number in the export: {v}"
    mine = [r for r in body if r[col["预警编号"]] == warning_id]
    assert len(mine) == 1 and mine[0][col["处置状态"]] == "已排除", mine


def material_change_of(engine, key: str) -> str | None:
    """What the loader decided for the case: material_change(the warning decided on, the new one)."""
    w, c = m.warnings.c, m.cases.c
    with engine.connect() as con:
        case = con.execute(select(m.cases).where(c.alert_key == key)).mappings().one()
        old = con.execute(select(m.warnings).where(w.warning_id == case["decided_warning_id"])
                          .order_by(w.snapshot_date)).mappings().first()
        new = con.execute(select(m.warnings).where(w.alert_key == key, w.snapshot_date == NEXT)).mappings().one()
    change = material_change(dict(old), dict(new))
    assert case["status"] == ("new" if change else "dismissed"), (case["status"], change)
    assert (case["reopen_note"] or None) == change or not change
    return change


def _count_status(engine, status: str) -> int:
    w, c = m.warnings.c, m.cases.c
    with engine.connect() as con:
        return con.scalar(select(func.count()).select_from(m.warnings.join(m.cases, c.alert_key == w.alert_key))
                          .where(w.snapshot_date == NEXT, w.street_code == STREET_A, c.status == status))
