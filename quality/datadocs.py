"""Great Expectations Data Docs of the quality gate, built into `docs/quality/` of the store and
made to work offline.

`build_docs(report, store)` renders GX's site for a `quality.report.QualityReport` (or bare,
already sanitised validation results) into a temporary directory, then post-processes every page
(`_offline_page`): an intranet reaches no CDN, so the Bootstrap, jQuery, vega … files GX's page
templates load from CDNs are vendored from npm (`safetynet/review/static/vendor/data-docs/`, see
`infra/update-frontend.sh`), copied into the site's `static/vendor/`, and the pages point there;
GX's S3 logo and its newsletter footer (a tracking link) go, links out of the site become text,
each page gets a real title, and GX's random block ids are numbered so that a re-build writes
the same bytes. Every page and the JSON/text report is passed through `quality.report.scrub`
(anything shaped like an 18-character ID number is masked) before it is written.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Iterable
from html import escape as escape_html
from pathlib import Path
from typing import TYPE_CHECKING

import safetynet
from quality.gate import gx_context
from quality.report import QualityReport, scrub
from safetynet.core import paths
from safetynet.core.store import ObjectStore

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuiteValidationResult

log = logging.getLogger(__name__)

DOCS_PREFIX = paths.DOCS_QUALITY
_TEXT_SUFFIXES = (".html", ".htm", ".json", ".js", ".css", ".txt", ".md", ".svg")

#: the npm files GX's pages would load from CDNs (fetched by infra/update-frontend.sh)
_DOCS_VENDOR = Path(safetynet.__file__).parent / "review" / "static" / "vendor" / "data-docs"
_VEGA = "vegaEmbed("  # only a page drawing a chart needs vega (~0.8 MB); no other page loads it
#: CDN URL in GX 1.x's page templates → (vendored file under _DOCS_VENDOR, text a page must hold to
#: need it; None: every page). A URL missing here stays external and `build_docs` warns about it.
_DOCS_ASSETS: dict[str, tuple[str, str | None]] = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": ("bootstrap/bootstrap.min.css", None),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": ("bootstrap/bootstrap.min.js", None),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        ("bootstrap-dark/bootstrap-prefers-dark.min.css", None),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css":
        ("bootstrap-table/bootstrap-table.min.css", None),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": ("bootstrap-table/bootstrap-table.min.js", None),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        ("bootstrap-table/bootstrap-table-filter-control.min.css", None),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        ("bootstrap-table/bootstrap-table-filter-control.min.css", None),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        ("bootstrap-table/bootstrap-table-filter-control.min.js", None),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        ("bootstrap-datepicker/bootstrap-datepicker.min.css", None),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        ("bootstrap-datepicker/bootstrap-datepicker.min.js", None),
    "https://code.jquery.com/jquery-3.7.1.min.js": ("jquery/jquery.min.js", None),
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": ("popper.js/popper.min.js", None),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": ("fontawesome/css/all.min.css", None),
    "https://cdn.jsdelivr.net/npm/vega@5": ("vega/vega.min.js", _VEGA),
    "https://cdn.jsdelivr.net/npm/vega-lite@5": ("vega/vega-lite.min.js", _VEGA),
    "https://cdn.jsdelivr.net/npm/vega-embed@6": ("vega/vega-embed.min.js", _VEGA),
}
DOCS_TITLE = "数据质量报告 Data quality"
_SCRIPT_TAG = re.compile(r'<script\b[^>]*\bsrc="(https?://[^"]+)"[^>]*>\s*</script>', re.IGNORECASE)
_LINK_TAG = re.compile(r'<link\b[^>]*\bhref="(https?://[^"]+)"[^>]*>', re.IGNORECASE)
_SRI_ATTR = re.compile(r'\s(?:integrity|crossorigin)="[^"]*"', re.IGNORECASE)
_LOCAL_STATIC = re.compile(r'\b(src|href)="(?:\./|(?:\.\./)+)static/')
_STYLE_BLOCK = re.compile(r"<style\b[^>]*>.*?</style>", re.IGNORECASE | re.DOTALL)
_CSS_REMOTE_URL = re.compile(r"""url\(\s*(['"]?)https?://[^)'"]*\1\s*\)""", re.IGNORECASE)
_GX_LOGO = re.compile(r"<img\b[^>]*\blogo-long\.png[^>]*>", re.IGNORECASE | re.DOTALL)
_TRACKING_FOOTER = re.compile(r"<footer>(?:(?!</footer>).)*?(?:newsletter|utm_)(?:(?!</footer>).)*</footer>",
                              re.IGNORECASE | re.DOTALL)
_EXTERNAL_LINK = re.compile(r'<a\b[^>]*\bhref="https?://[^"]*"[^>]*>(.*?)</a>', re.IGNORECASE | re.DOTALL)
_TITLE = re.compile(r"<title>.*?</title>", re.IGNORECASE | re.DOTALL)
_BREADCRUMB = re.compile(r'aria-current="page">([^<]*)</li>')
#: GX names each collapsible block with a fresh uuid4: the same page would differ on every build
_COLLAPSE_ID = re.compile(r"-collapse-body-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
#: what still reaches outside the site after `_offline_page` (a GX upgrade adding a CDN, say)
_EXTERNAL_REF = re.compile(r"""(?:\b(?:src|href)\s*=\s*["']?|url\(\s*["']?)(?:https?:)?//([^/"')\s]+)""",
                           re.IGNORECASE)


def _offline_page(html: str, rel: str, title: str, used: set[str]) -> str:
    """One GX page made self-contained: CDN files → the site's vendored copies (`used` collects
    them), GX's logo (an S3 image) → the site title, the newsletter footer (tracking link) dropped,
    links out of the site reduced to their text, a real `<title>`, GX's own static links at the
    page's actual depth (its favicon link is one level short on validation pages)."""
    up = "../" * rel.count("/")
    needs_chart = _VEGA in html

    def asset(m: re.Match) -> str:
        url = m.group(1)
        if url not in _DOCS_ASSETS:
            return m.group(0)
        local, needed_for = _DOCS_ASSETS[url]
        if needed_for == _VEGA and not needs_chart:
            return ""
        used.add(local)
        # SRI needs a CORS fetch, which a page opened from file:// cannot make (same bytes as the CDN's)
        return _SRI_ATTR.sub("", m.group(0).replace(url, f"{up}static/vendor/{local}"))

    html = _SCRIPT_TAG.sub(asset, html)
    html = _LINK_TAG.sub(asset, html)
    html = _LOCAL_STATIC.sub(lambda m: f'{m.group(1)}="{up}static/', html)
    html = _STYLE_BLOCK.sub(lambda m: _CSS_REMOTE_URL.sub("none", m.group(0)), html)  # GX's dark-mode logo
    esc_title = escape_html(title)
    html = _GX_LOGO.sub(f'<span class="h5 m-0 text-body">{esc_title}</span>', html)
    html = _TRACKING_FOOTER.sub("", html)
    html = _EXTERNAL_LINK.sub(lambda m: m.group(1), html)
    crumb = _BREADCRUMB.search(html)
    page_title = f"{crumb.group(1).strip()} · {esc_title}" if crumb and rel != "index.html" else esc_title
    first = True

    def one_title(_m: re.Match) -> str:  # GX writes two <title>s: a generic one and an empty one
        nonlocal first
        keep, first = first, False
        return f"<title>{page_title}</title>" if keep else ""

    return _TITLE.sub(one_title, html)


def _stable_ids(html: str) -> str:
    """GX's random collapse-block ids numbered in page order: a re-build writes the same bytes."""
    seen: dict[str, int] = {}
    return _COLLAPSE_ID.sub(lambda m: f"-collapse-body-{seen.setdefault(m.group(1), len(seen) + 1)}", html)


def _docs_title(report: QualityReport | None, snap: str, store: ObjectStore) -> str:
    """`数据质量报告 Data quality · <county or store> · <snapshot date>`: the index title and site name."""
    where = (report.county if report is not None else None) or store.url
    return " · ".join(x for x in (DOCS_TITLE, where, snap) if x)


def build_docs(report: QualityReport | Iterable[ExpectationSuiteValidationResult], store: ObjectStore,
               prefix: str = DOCS_PREFIX) -> list[str]:
    """Build GX Data Docs for the report and write them to `docs/quality/` in the store.

    GX's own site builder renders into a temporary directory; every page is made self-contained
    (`_offline_page`: vendored copies instead of CDNs, no S3 logo, no tracking link, a real title),
    passed through `scrub` (anything shaped like an ID number is masked) and written with
    `store.write_bytes`. Validation pages live under `validations/<suite>/snapshot-<date>/…` (a
    re-run of the same snapshot overwrites them); `index.html` is the latest build and
    `index-<date>.html` a copy per snapshot. The masked JSON report goes to `reports/<date>.json`.

    Returns the pages and reports written: the same list for every build of the same report,
    whatever the store held before. The static assets under `static/` (GX's and the vendored
    files, shared by every build) are written only when missing or changed, and not listed.
    """
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    if isinstance(report, QualityReport) and report._context is not None:
        ctx = report._context
        snap = report.snapshot_date.isoformat()
        for key, res, suite in report._results.values():
            try:
                ctx.suites.add(suite)
            except Exception:  # already added by an earlier build of this report
                pass
            ctx.validation_results_store.set(key, res)
    else:  # bare (already sanitised) validation results: a fresh context holding just them
        ctx = gx_context()
        results = list(report.results() if isinstance(report, QualityReport) else report)
        for r in results:
            key = ValidationResultIdentifier(expectation_suite_identifier=ExpectationSuiteIdentifier(name=r.suite_name),
                                             run_id=r.meta["run_id"], batch_identifier=r.batch_id)
            ctx.validation_results_store.set(key, r)
        snap = str(getattr(results[0].meta.get("run_id"), "run_name", "") or "").removeprefix("snapshot-") \
            if results else ""
    title = _docs_title(report if isinstance(report, QualityReport) else None, snap, store)
    tmp = Path(tempfile.mkdtemp(prefix="sn-gx-docs-"))
    written: list[str] = []
    try:
        site = title  # GX shows the site name on the index page ("Data Docs | <name>")
        ctx.add_data_docs_site(site, {
            "class_name": "SiteBuilder", "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(tmp)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
        try:
            ctx.build_data_docs(site_names=[site])
        finally:  # the site stays configured on a reused context; drop it so a second build starts clean
            sites = dict(ctx.variables.data_docs_sites or {})
            sites.pop(site, None)
            ctx.variables.data_docs_sites = sites
        used: set[str] = set()
        pages: dict[str, bytes] = {}
        leaks: dict[str, int] = {}
        for p in sorted(x for x in tmp.rglob("*") if x.is_file()):
            rel = p.relative_to(tmp).as_posix()
            if rel.startswith("static/"):
                continue
            data = p.read_bytes()
            if p.suffix.lower() in _TEXT_SUFFIXES:
                text = data.decode("utf-8", errors="replace")
                if p.suffix.lower() in (".html", ".htm"):
                    text = _stable_ids(_offline_page(text, rel, title, used))
                    for host in _EXTERNAL_REF.findall(text):
                        leaks[host] = leaks.get(host, 0) + 1
                data = scrub(text).encode("utf-8")
            pages[rel] = data
        if leaks:
            log.warning("quality docs: pages still load from %s (GX's page templates changed: map the URLs in "
                        "quality.datadocs._DOCS_ASSETS and vendor the files with infra/update-frontend.sh)",
                        ", ".join(f"{h} ({n}×)" for h, n in sorted(leaks.items())))
        for package in sorted({u.split("/", 1)[0] for u in used}):  # with its fonts and licence
            shutil.copytree(_DOCS_VENDOR / package, tmp / "static" / "vendor" / package)
        # assets first, pages after: a page never points at a file not yet there. Static files come
        # from installed packages (GX's, npm's), never from data: no scrub (it would break vega.min.js)
        have = {e.path: e.size for e in store.list(f"{prefix}static/")}
        static = 0
        for p in sorted(x for x in (tmp / "static").rglob("*") if x.is_file()):
            dest = prefix + p.relative_to(tmp).as_posix()
            if have.get(dest) != p.stat().st_size:
                store.write_bytes(dest, p.read_bytes())
                static += 1
        for rel, data in pages.items():
            store.write_bytes(prefix + rel, data)
            written.append(prefix + rel)
            if rel == "index.html" and snap:
                store.write_bytes(f"{prefix}index-{snap}.html", data)
                written.append(f"{prefix}index-{snap}.html")
        if isinstance(report, QualityReport):
            d = report.snapshot_date.isoformat()
            store.write_bytes(f"{prefix}reports/{d}.json",
                              scrub(json.dumps(report.as_dict(), ensure_ascii=False, indent=1)).encode())
            store.write_bytes(f"{prefix}reports/{d}.txt", scrub(report.summary(max_lines=200)).encode())
            written += [f"{prefix}reports/{d}.json", f"{prefix}reports/{d}.txt"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("quality docs: %d files written under %s (%d static assets updated)", len(written),
             store.uri(prefix), static, extra={"event": "quality_docs", "files": len(written), "static": static})
    return written
