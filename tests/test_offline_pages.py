"""Pages that must work on an intranet without internet, in a real browser (Debian's Chromium).

The review app's Swagger UI (`/api/docs`) and the Great Expectations Data Docs are opened with every
request that is neither to 127.0.0.1 nor to a local file aborted (and no name but 127.0.0.1
resolvable). Each page must make no request out, have no failed request, no console error and no
Content-Security-Policy violation, and render: Swagger UI every API operation, Data Docs their
tables (Bootstrap styles and the bootstrap-table plugin applied, i.e. the vendored files loaded).

The Data Docs are also checked as files: nothing in them points outside the site, no GX logo from
S3, no newsletter link with tracking parameters, a title that names the county; a re-build of the
same report lists the same files and writes the same page bytes, in the same or a fresh store;
every CDN file GX's templates name is vendored, and a chart page draws with the vendored vega.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from playwright.sync_api import expect

from quality import datadocs, gate
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from safetynet.review.app import CSP
from tests.review_support import FIRST, live_server, new_review_db

pytestmark = [pytest.mark.integration]

TIMEOUT_MS = 20_000
EXTERNAL = re.compile(r"""(?:\b(?:src|href)\s*=\s*["']?|url\(\s*["']?)(?:https?:)?//""", re.IGNORECASE)
LOCAL_REF = re.compile(r"""\b(?:src|href)="(?!https?:|data:|#|mailto:|javascript:)([^"]+)\"""")


class Offline:
    """A browser page cut off from everything but 127.0.0.1 and files, recording what went wrong."""

    def __init__(self, browser):
        self.ctx = browser.new_context(locale="zh-CN", viewport={"width": 1366, "height": 900})
        self.ctx.set_default_timeout(TIMEOUT_MS)
        self.blocked: list[str] = []
        self.failed: list[str] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.ctx.route("**/*", self._route)
        self.page = self.ctx.new_page()
        # CSP violations as the page itself sees them (init scripts are not subject to the page's CSP)
        self.page.add_init_script("window.__csp = []; document.addEventListener('securitypolicyviolation', "
                                  "e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("requestfailed", lambda r: self.failed.append(f"{r.url} ({r.failure})"))
        self.page.on("response", lambda r: r.status >= 400 and self.failed.append(f"{r.url} (HTTP {r.status})"))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(
            f"{m.text} [{(m.location or {}).get('url', '')}]"))
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught {exc}"))

    def _route(self, route) -> None:
        url = urlsplit(route.request.url)
        if url.scheme in ("file", "data") or (url.scheme in ("http", "https") and url.hostname == "127.0.0.1"):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort("internetdisconnected")

    def assert_clean(self, where: str) -> None:
        csp = self.page.evaluate("window.__csp")
        assert not self.blocked, f"{where}: requests to the internet: {self.blocked}"
        assert not self.failed, f"{where}: failed requests: {self.failed}"
        assert not csp, f"{where}: Content-Security-Policy violations: {csp}"
        assert not self.errors, f"{where}: console errors: {self.errors}"

    def close(self) -> None:
        self.ctx.close()


@pytest.fixture
def offline(browser):
    o = Offline(browser)
    yield o
    o.close()


# ---- Swagger UI -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    rdb, close = new_review_db("sqlite", tmp_path_factory.mktemp("offline_docs"))
    srv = live_server(rdb.engine)
    yield srv
    srv.stop()
    close()


def test_swagger_ui_renders_offline_under_the_csp(offline, server):
    page = offline.page
    resp = page.goto(server.url + "/api/docs")
    assert resp.status == 200
    assert resp.headers["content-security-policy"] == CSP and "unsafe-inline" not in CSP
    html = resp.text()
    assert not EXTERNAL.search(html), "the docs page references another host"
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "an inline script (the CSP refuses it)"
    spec = page.request.get(server.url + "/api/openapi.json").json()
    operations = sum(len(ops) for ops in spec["paths"].values())
    assert operations >= 10
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("预警处置 API")
    blocks = page.locator(".opblock")
    expect(blocks.first).to_be_visible()
    expect(blocks).to_have_count(operations)
    # the UI works, not only draws: an operation opens, with its "Try it out" button
    page.locator(".opblock-summary").first.click()
    expect(page.locator(".try-out__btn").first).to_be_visible()
    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert icon.startswith("/static/") and page.request.get(server.url + icon).status == 200
    offline.assert_clean("/api/docs")
    assert all(urlsplit(u).hostname == "127.0.0.1" for u in offline.requests if not u.startswith("data:"))


def test_oauth2_redirect_page_has_no_inline_script(offline, server):
    resp = offline.page.request.get(server.url + "/docs/oauth2-redirect")
    assert resp.status == 200 and resp.headers["content-security-policy"] == CSP
    srcs = re.findall(r'<script src="([^"]+)"></script>', resp.text())
    assert srcs and all(s.startswith("/static/") for s in srcs)
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", resp.text())
    assert all(offline.page.request.get(server.url + s).status == 200 for s in srcs)


# ---- Data Docs ------------------------------------------------------------------------------------
def _docs_dir(store: ObjectStore) -> Path:
    return Path(store.dir) / "docs" / "quality"  # type: ignore[attr-defined]


def _pages(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text("utf-8") for p in sorted(root.rglob("*.html"))}


def test_data_docs_point_nowhere_outside_the_site(published):
    root = _docs_dir(published)
    pages = _pages(root)
    assert "index.html" in pages and any(p.startswith("validations/") for p in pages)
    for rel, html in pages.items():
        assert not EXTERNAL.search(html), f"{rel}: {EXTERNAL.search(html).group(0)}…"
        for bad in ("utm_", "newsletter", "amazonaws", "integrity=", "crossorigin="):
            assert bad not in html, f"{rel} holds {bad!r}"
        for ref in LOCAL_REF.findall(html):  # every file a page names is in the site
            target = (root / rel).parent / unquote(ref.split("#")[0].split("?")[0])
            assert target.resolve().is_file(), f"{rel} points at {ref}, which is not there"
    title = f"{datadocs.DOCS_TITLE} · 430103 · {FIRST.isoformat()}"
    assert re.search(r"<title>(.*?)</title>", pages["index.html"]).group(1) == title
    assert not re.search(r"\bsn_\d+", pages["index.html"])
    assert pages[f"index-{FIRST.isoformat()}.html"] == pages["index.html"]


def test_data_docs_render_offline(offline, published):
    root = _docs_dir(published)
    page = offline.page
    validation = next(p for p in sorted(root.glob("validations/output/**/*.html")))
    suite = next(p for p in sorted(root.glob("expectations/feed/**/*.html")))
    for path in (root / "index.html", validation, suite):
        page.goto(path.as_uri())
        page.wait_for_load_state("load")
        expect(page.locator("table >> visible=true").first).to_be_visible()
        assert page.evaluate("typeof jQuery === 'function' && typeof jQuery.fn.bootstrapTable === 'function'")
        # Bootstrap's stylesheet applied (.pl-5 = 3rem), the page's title is the site's
        assert page.evaluate("getComputedStyle(document.querySelector('.container-fluid')).paddingLeft") == "48px"
        assert datadocs.DOCS_TITLE in page.title()
        offline.assert_clean(path.relative_to(root).as_posix())
        assert all(u.startswith(("file:", "data:")) for u in offline.requests), offline.requests
    # the index's suite and validation lists are bootstrap-table tables (the plugin ran)
    page.goto((root / "index.html").as_uri())
    results = page.locator(".bootstrap-table table >> visible=true").first
    expect(results).to_be_visible()
    assert results.locator("tbody tr").count() >= 3
    offline.assert_clean("index.html")


@pytest.mark.slow  # Great Expectations validation and Data Docs, twice
def test_data_docs_rebuild_is_the_same(tmp_path):
    """Identical runs: the same files listed (static assets already present or not) and the same pages."""
    from safetynet.demo.synth import generate

    tables = generate(persons=1000, seed=5).tables()
    feeds = ["public_security.person", "medical_insurance.claim"]
    report = gate.validate(tables, dt.date(2026, 11, 1), feeds=feeds, county="430103")

    def store(name: str) -> ObjectStore:
        return ObjectStore.from_settings(Settings(store=str(tmp_path / name), work_dir=tmp_path / "work"))

    a, b = store("a"), store("b")
    first = datadocs.build_docs(report, a)
    again = datadocs.build_docs(report, a)
    fresh = datadocs.build_docs(gate.validate(tables, dt.date(2026, 11, 1), feeds=feeds, county="430103"), b)
    assert first == again == fresh
    assert not any(p.startswith("docs/quality/static/") for p in first)
    pages_a, pages_b = _pages(tmp_path / "a" / "docs" / "quality"), _pages(tmp_path / "b" / "docs" / "quality")
    assert pages_a == pages_b
    listed = {e.path: e.size for e in a.list("docs/quality/static/")}
    assert listed == {e.path: e.size for e in b.list("docs/quality/static/")}
    # only the libraries the pages use: no chart on these pages, so no vega
    assert any("/static/vendor/bootstrap/" in p for p in listed)
    assert not any("/static/vendor/vega/" in p for p in listed)


@pytest.mark.slow  # imports Great Expectations (seconds)
def test_every_cdn_file_gx_loads_is_vendored():
    """Each CDN URL of GX's templates maps to a file `infra/update-frontend.sh` vendored."""
    import great_expectations

    templates = Path(great_expectations.__file__).parent / "render" / "view" / "templates"
    urls = {u for t in templates.glob("*.j2") if not t.name.startswith("markdown")
            for u in re.findall(r'<(?:script|link)\b[^>]*\b(?:src|href)="(https?://[^"]+)"', t.read_text("utf-8"))}
    assert urls and urls <= set(datadocs._DOCS_ASSETS), f"CDN files GX loads that are not vendored: {urls - set(datadocs._DOCS_ASSETS)}"
    for local, _ in datadocs._DOCS_ASSETS.values():
        assert (datadocs._DOCS_VENDOR / local).is_file(), local


def test_a_chart_draws_offline(offline, tmp_path):
    """A page with a chart (GX's graph block: vega-embed of a vega-lite spec) gets the vendored vega."""
    head = "\n".join(f'<script src="{u}"></script>' for u, (_, need) in datadocs._DOCS_ASSETS.items()
                     if u.endswith((".js", "@5", "@6")) and (need or "jquery" in u))
    spec = ('{"data": {"values": [{"k": "a", "n": 3}, {"k": "b", "n": 5}]}, "mark": "bar", '
            '"encoding": {"x": {"field": "k", "type": "nominal"}, "y": {"field": "n", "type": "quantitative"}}}')
    raw = (f"<!DOCTYPE html><html><head><title>x</title>{head}</head><body><div id='g'></div>"
           f"<script>vegaEmbed('#g', {spec}, {{actions: false}}).catch(console.error);</script></body></html>")
    used: set[str] = set()
    html = datadocs._offline_page(raw, "charts/page.html", datadocs.DOCS_TITLE, used)
    assert {"vega/vega.min.js", "vega/vega-lite.min.js", "vega/vega-embed.min.js"} <= used
    assert not EXTERNAL.search(html)
    (tmp_path / "charts").mkdir()
    (tmp_path / "charts" / "page.html").write_text(html, "utf-8")
    for package in {u.split("/")[0] for u in used}:
        shutil.copytree(datadocs._DOCS_VENDOR / package, tmp_path / "static" / "vendor" / package)
    offline.page.goto((tmp_path / "charts" / "page.html").as_uri())
    expect(offline.page.locator("#g svg, #g canvas").first).to_be_visible()
    offline.assert_clean("a chart page")
    # and a page without a chart loads no vega at all
    plain: set[str] = set()
    assert "vega" not in datadocs._offline_page(raw.replace("vegaEmbed(", "draw("), "p.html", "t", plain)
    assert not any(u.startswith("vega/") for u in plain)
