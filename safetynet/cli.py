"""`safetynet` — the command line. The same functions the Airflow tasks call, nothing more.

Settings are built once here (env vars `SAFETYNET_*`, then flags) and passed down. Errors are
one actionable line; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import SecretStr, ValidationError

log = logging.getLogger("safetynet")

#: Exit codes of every command (documented in the README).
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_UNHEALTHY, EXIT_BUSY = 0, 1, 2, 3, 4
#: The synthetic district plants every kind of dirty record in every feed — up to half of a
#: small feed's records — so its runs judge feed health against this rate unless
#: SAFETYNET_MAX_QUARANTINE_RATE is set. Real feeds keep the default (5 %).
SYNTHETIC_MAX_QUARANTINE_RATE = 0.75


# ---- output helpers ---------------------------------------------------------------------------
def _console():
    from rich.console import Console

    return Console(highlight=False, width=_width())


def _width() -> int | None:
    """A terminal's own width; wide lines in logs and pipes (CI), where rich would assume 80."""
    return None if sys.stdout.isatty() else 200


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int | None, label: str) -> Iterator:
    """A rich progress bar on a terminal; a no-op callable elsewhere (CI logs stay clean)."""
    if not enabled or not sys.stderr.isatty():
        yield lambda *a, **k: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detail]}"), TimeRemainingColumn(), transient=False) as p:
        task = p.add_task(label, total=total, detail="")

        def advance(n: int, detail: str = "") -> None:
            p.update(task, advance=n, detail=detail)

        yield advance


def _settings(args: argparse.Namespace):
    from safetynet.settings import Settings

    s = Settings()
    upd = {}
    if getattr(args, "store", None):
        upd["store"] = args.store
    if getattr(args, "kafka", None):
        upd["kafka_bootstrap"] = args.kafka
    if getattr(args, "no_progress", False):
        upd["progress"] = False
    if getattr(args, "wait_lease", None) is not None:
        upd["lease_wait_s"] = args.wait_lease
    return s.model_copy(update=upd) if upd else s


# ---- commands ---------------------------------------------------------------------------------
def cmd_policy(args: argparse.Namespace) -> int:
    from safetynet import policy

    con = _console()
    if args.action == "init":
        out = Path(args.out)
        if out.exists() and not args.force:
            con.print(f"[red]error[/red]: {out} exists (use --force to overwrite)")
            return 2
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(policy.init_text(args.region, args.year, args.urban_dibao, args.rural_dibao, args.name or ""),
                       encoding="utf-8")
        con.print(f"wrote {out}: region {args.region}, year {args.year}, 低保 urban {args.urban_dibao:g} / rural "
                  f"{args.rural_dibao:g} 元/人/月, default thresholds — check them before use")
        return 0
    try:
        pol = policy.load(args.file) if args.file else policy.for_region(args.region, args.year)
    except policy.PolicyError as e:
        con.print(f"[red]error[/red]: {e}")
        return 2
    print(json.dumps({"version": pol.version, "checksum": pol.checksum, **pol.model_dump(exclude={"checksum"})},
                     ensure_ascii=False, indent=1))
    return 0


def cmd_feeds(args: argparse.Namespace) -> int:
    from rich.table import Table

    from connectors.base import connectors
    from schemas.registry import contracts

    if args.json:
        print(json.dumps([c.describe() for c in contracts().values()], ensure_ascii=False, indent=1))
        return 0
    if args.topics:  # what docker-compose's kafka-topics job creates (see infra/airflow/airflow-init.sh)
        from safetynet.pipeline import WARNINGS_TOPIC

        print("\n".join(sorted({c.topic for c in contracts().values()}) + [WARNINGS_TOPIC]))
        return 0
    conns = connectors()
    t = Table(title="部门数据源 Department feeds")
    for col in ("feed id", "部门", "名称", "ver", "topic", "key", "mode", "evolution", "cadence", "fields", "PII"):
        t.add_column(col)
    for fid, c in contracts().items():
        t.add_row(fid, c.department_zh, c.title_zh, str(c.version), c.topic, ",".join(c.key), c.mode, c.evolution,
                  f"{c.cadence_hours}h", str(len(c.fields)), ",".join(c.pii_fields) + ("" if fid in conns else " (no connector!)"))
    _console().print(t)
    return 0


def cmd_feeds_profile(args: argparse.Namespace) -> int:
    from connectors import profile
    from connectors.base import connectors
    from schemas.registry import get

    s = _settings(args)
    c = get(args.feed)
    mapping = connectors()[c.feed_id].load_mapping(s.mappings)
    if args.kafka is not None:
        bootstrap = args.kafka or s.kafka_bootstrap
        if not bootstrap:
            print("safetynet: --kafka needs HOST:PORT or SAFETYNET_KAFKA_BOOTSTRAP", file=sys.stderr)
            return EXIT_USAGE
        from connectors.kafka_topic import sample

        p = profile.profile_values(c, mapping, sample(bootstrap, c.topic, args.sample), c.topic)
    else:
        files = []
        for raw in args.paths:
            path = Path(raw)
            for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
                if f.is_file():
                    files.append((f.name, f.read_bytes()))
        if not files:
            print("safetynet: give the export files (or a folder) to profile, or --kafka", file=sys.stderr)
            return EXIT_USAGE
        p = profile.profile_files(c, mapping, files)
    con = _console()
    from rich.markup import escape

    for line in profile.render(c, p):
        con.print(escape(line))
    out = Path(args.out or f"{c.feed_id}.suggested.toml")
    out.write_text(p.suggested_mapping(c, mapping if any(x != "built-in" for x in mapping.sources) else None),
                   encoding="utf-8")
    con.print(f"suggested mapping: {out} — fill it in, save it as {s.mappings}/{c.feed_id}.toml, "
              "then `safetynet check-config` and `safetynet ingest`")
    if mapping.sources:
        con.print(f"(profiled with the mapping in force: {', '.join(mapping.sources)}, sha256 {mapping.sha256[:12]}…)")
    return EXIT_OK


def cmd_feeds_release(args: argparse.Namespace) -> int:
    import getpass

    from safetynet import health
    from safetynet.clean import clean_feed
    from safetynet.store import open_store
    from schemas.registry import get

    s = _settings(args)
    store = open_store(s)
    c = get(args.feed)
    paths = health.release(store, c, by=getpass.getuser())
    counts = clean_feed(store, c)
    _console().print(f"{c.feed_id}: released {len(paths)} held file(s); clean state rebuilt: {counts.rows:,} rows"
                     + ("" if paths else " (nothing was held)"))
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from safetynet.settings import Settings

    s = _settings(args)
    con = _console()
    for name, field in Settings.model_fields.items():
        v = getattr(s, name)
        shown = "********" if isinstance(v, SecretStr) else v
        con.print(f"  SAFETYNET_{name.upper():<24} = {escape(str(shown))}   [dim]{escape(field.description or '')}[/dim]")
    problems = s.problems()
    from connectors.base import load_mappings
    from connectors.mapping import MappingError

    try:
        maps = load_mappings(s.mappings)
        own = {fid: m for fid, m in maps.items() if any(src != "built-in" for src in m.sources)}
        con.print(f"mappings: {s.mappings} — {len(own)} deployment file(s)"
                  + "".join(f"\n  {fid}: sha256 {m.sha256[:12]}… ({', '.join(m.sources)}; "
                            f"{len(m.raw_headers)} headers, {sum(len(v) for v in m.values.values())} values"
                            + (f", max_quarantine_rate {m.max_quarantine_rate}" if m.max_quarantine_rate is not None else "")
                            + ")" for fid, m in own.items()), markup=False)
    except MappingError as e:
        problems += e.problems
    try:
        from safetynet.store import open_store

        st = open_store(s)
        st.write_bytes("_catalog/.check", b"ok")
        st.delete("_catalog/.check")
        con.print(f"[green]store reachable[/green]: {st.url}")
    except Exception as e:
        problems.append(f"store {s.store} not usable: {e}")
    if s.kafka_bootstrap:
        try:
            from kafka import KafkaAdminClient

            KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, request_timeout_ms=5000).close()
            con.print(f"[green]kafka reachable[/green]: {s.kafka_bootstrap}")
        except Exception as e:
            problems.append(f"kafka {s.kafka_bootstrap} not reachable: {e}")
    else:
        con.print("kafka: not configured (SAFETYNET_KAFKA_BOOTSTRAP); `safetynet demo` starts an embedded broker")
    for p in problems:
        con.print(f"[red]problem[/red]: {escape(p)}")
    return 1 if problems else 0


def _load_district(args: argparse.Namespace):
    from safetynet.synth import emit, generate

    t0 = time.perf_counter()
    d = generate(persons=args.persons, seed=args.seed)
    em = emit(d)
    log.info("generated %d persons in %.1fs", args.persons, time.perf_counter() - t0)
    return d, em


def publish_emission(settings, store, em, enabled: bool) -> None:
    """Publish the generated events to their topics and drop the files (with progress)."""
    from safetynet.broker import ensure_topics
    from safetynet.publish import drop_files, publish
    from schemas.registry import get

    total = sum(len(v) for v in em.events.values())
    if total:
        ensure_topics(settings.kafka_bootstrap, [get(f).topic for f in em.events])
    with progress_bar(enabled, total, "发布事件 publishing events") as adv:
        for fid, msgs in em.events.items():
            publish(settings.kafka_bootstrap, get(fid).topic, msgs, progress=lambda n, f=fid: adv(n, f))
    drop_files(store, em.files)


def cmd_generate(args: argparse.Namespace) -> int:
    from safetynet.store import open_store

    s = _settings(args)
    d, em = _load_district(args)
    con = _console()
    if args.out:
        from safetynet.synth.emit import write_files, write_truth_parquet

        out = Path(args.out)
        write_files(em, out)
        write_truth_parquet(d, out / "truth")
        con.print(f"wrote landing files and truth Parquet under {out}")
        return 0
    store = open_store(s)
    if not s.kafka_bootstrap:
        con.print("[red]error[/red]: no Kafka to publish to (SAFETYNET_KAFKA_BOOTSTRAP or --kafka); "
                  "use `safetynet demo` for an embedded broker, or --out DIR to write files only")
        return 2
    publish_emission(s, store, em, s.progress)
    con.print(f"published {em.total_events:,} events and dropped {len(em.files)} files into {store.url}/landing/")
    return 0


def run_ingest(settings, store, feeds=None, kafka=True, files=True):
    """Ingest + clean with a progress bar; returns (ingest report, clean counts)."""
    from connectors.base import connectors
    from safetynet.clean import clean_all
    from safetynet.ingest import ingest

    from safetynet import lease

    selected = feeds or list(connectors())
    # one writer per feed: ingest and clean under the feeds' leases (ingest takes them itself otherwise)
    with lease.held(store, selected, run_id="cli", ttl_s=settings.lease_ttl_s, wait_s=settings.lease_wait_s):
        with progress_bar(settings.progress, None, "接入 ingesting") as adv:
            report = ingest(settings, store, selected, kafka=kafka, files=files, progress=lambda f, n: adv(n, f))
        with progress_bar(settings.progress, len(selected), "清洗 cleaning") as adv:
            from schemas.registry import get

            cleaned = {}
            for f in selected:
                cleaned.update(clean_all(store, [get(f)]))
                adv(1, f)
    return report, cleaned


def print_summary(report, cleaned, expected=None) -> bool:
    """The per-feed table: input, accepted, quarantined by reason, clean rows and health (✗ with
    the drift to fix); True if everything reconciles (and matches `expected`, if given)."""
    from rich.markup import escape
    from rich.table import Table

    from schemas.registry import get

    t = Table(title=f"接入汇总 Ingest run {report.run_id}", show_lines=False)
    for col in ("feed", "名称", "kafka", "files", "input", "accepted", "quarantined", "rate", "by reason",
                "clean rows", "ok"):
        t.add_column(col, justify="right" if col in ("kafka", "files", "input", "accepted", "quarantined", "rate",
                                                     "clean rows") else "left")
    all_ok = True
    tot = [0, 0, 0, 0, 0, 0]
    notes: list[str] = []
    for fid, fc in report.feeds.items():
        cc = cleaned.get(fid)
        ok = fc.reconciles and (cc is None or cc.reconciles)
        if expected and fid in expected:
            e = expected[fid]
            ok = ok and e.input == fc.input and e.accepted == fc.accepted and dict(e.quarantined) == {
                k: v for k, v in fc.quarantined.items() if v}
        all_ok &= ok
        h = fc.health
        healthy = h is None or not h.unhealthy
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(fc.quarantined.items()))
        mark = ("[green]✓[/green]" if healthy else "[red]✗ unhealthy[/red]") if ok else "[red]✗[/red]"
        t.add_row(fid, get(fid).title_zh, f"{fc.kafka_records:,}", f"{fc.file_records:,}", f"{fc.input:,}",
                  f"{fc.accepted:,}", f"{fc.quarantined_total:,}", f"{h.rate:.1%}" if h else "-", reasons,
                  f"{cc.rows:,}" if cc else "-", mark)
        if h is not None:
            notes += [f"[red]✗ {escape(x)}[/red]" for x in h.problems]
            notes += [f"  [yellow]drift[/yellow]: {escape(x)}" for x in h.drift]
        for i, v in enumerate((fc.kafka_records, fc.file_records, fc.input, fc.accepted, fc.quarantined_total,
                               cc.rows if cc else 0)):
            tot[i] += v
    bad = report.unhealthy
    t.add_row("[bold]total[/bold]", "", *(f"{v:,}" for v in tot[:5]), "", "", f"{tot[5]:,}",
              "[green]✓[/green]" if all_ok and not bad else "[red]✗[/red]")
    con = _console()
    con.print(t)
    for n in notes:
        con.print(n)
    if bad:
        con.print(f"[red]unhealthy feeds: {', '.join(bad)}[/red] — their deliveries are held out of clean/ "
                  "(the previous clean state stays in force). Fix the mapping (`safetynet feeds profile`) and "
                  "ingest again, or publish on the previous state with `safetynet run --accept-unhealthy FEED`.")
    con.print(f"input = accepted + quarantined for every feed: {'yes' if report.reconciles else 'NO'}"
              + ("; matches the generator's expected counts" if expected and all_ok else ""))
    con.print(f"run manifest: {report.manifest}")
    return all_ok


def cmd_ingest(args: argparse.Namespace) -> int:
    from safetynet.store import open_store

    s = _settings(args)
    store = open_store(s)
    report, cleaned = run_ingest(s, store, args.feed or None, kafka=not args.no_kafka and bool(s.kafka_bootstrap),
                                 files=not args.no_files)
    if not s.kafka_bootstrap and not args.no_kafka:
        _console().print("note: SAFETYNET_KAFKA_BOOTSTRAP is not set, so only file drops were ingested")
    if not print_summary(report, cleaned):
        return EXIT_FAILURE
    return EXIT_UNHEALTHY if report.unhealthy else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from safetynet.broker import EmbeddedBroker
    from safetynet.store import open_store

    s = _settings(args)
    con = _console()
    if "max_quarantine_rate" not in s.model_fields_set:
        s = s.model_copy(update={"max_quarantine_rate": SYNTHETIC_MAX_QUARANTINE_RATE})
    if args.fresh and not s.store.startswith("s3://"):
        import shutil

        shutil.rmtree(Path(s.store.removeprefix("file://")), ignore_errors=True)
    store = open_store(s)
    con.print(f"[bold]兜底保障数据枢纽 demo[/bold]: {args.persons:,} persons (seed {args.seed}), store {store.url}")
    t0 = time.perf_counter()
    d, em = _load_district(args)
    con.print(f"generated the district in {time.perf_counter() - t0:.1f}s: {em.total_events:,} events, "
              f"{len(em.files)} drop files")
    broker = None
    if not s.kafka_bootstrap:
        s.work_dir.mkdir(parents=True, exist_ok=True)
        broker = EmbeddedBroker(log_file=s.work_dir / "broker.log").start()
        s = s.model_copy(update={"kafka_bootstrap": broker.bootstrap})
        con.print(f"started the embedded Kafka-protocol broker (tansu) at {broker.bootstrap}")
    try:
        t1 = time.perf_counter()
        publish_emission(s, store, em, s.progress)
        con.print(f"published events and dropped files in {time.perf_counter() - t1:.1f}s")
        t2 = time.perf_counter()
        report, cleaned = run_ingest(s, store)
        con.print(f"ingested and cleaned in {time.perf_counter() - t2:.1f}s")
        ok = print_summary(report, cleaned, em.expected)
        con.print(f"clean datasets: {store.url}/clean/   quarantine: {store.url}/quarantine/")
        t3 = time.perf_counter()
        res = run_build(s, store, d.as_of)
        con.print(f"quality gate, monitoring build, warnings and publish in {time.perf_counter() - t3:.1f}s"
                  + (f"; {res.kafka_published:,} warnings produced to hub.warnings.v1" if res.kafka_published else ""))
    finally:
        if broker:
            broker.stop()
    print_warnings(res, con)
    from safetynet import export

    out = Path(s.work_dir) / f"warnings-{d.as_of}.xlsx"
    export.write(_published_warnings(store, d.as_of), out)
    con.print(f"published snapshot {d.as_of}: {res.persons:,} persons, {res.households:,} households, "
              f"{res.warnings.num_rows:,} warnings; {res.published_line(store.url)}")
    if res.quality is not None:
        con.print(f"data quality: {res.quality.summary()}\nData Docs: {store.url}/docs/quality/ ({len(res.docs)} files)")
    con.print(f"warning list (Excel, masked IDs): {out}")
    _demo_review(s, con)
    return (EXIT_UNHEALTHY if report.unhealthy else EXIT_OK) if ok else EXIT_FAILURE


def _demo_review(s, con) -> None:
    """Load the snapshot into the review app's database, one demo account per role, and say how to open it."""
    from rich.table import Table

    from safetynet.review import cli as review_cli

    engine = review_cli._engine(s)
    res = review_cli.load_latest(s, engine)
    users = review_cli.demo_users(engine)
    t = Table(title="预警处置系统 demo accounts (one per role; passwords are new on every demo run)")
    for col in ("username", "password", "role", "region 辖区"):
        t.add_column(col)
    for row in users:
        t.add_row(*row)
    con.print(t)
    if res is not None and res.loaded:
        con.print(f"review database: {res.warnings:,} warnings loaded, {res.new_cases:,} new cases")
    con.print(f"[bold]open the review app:[/bold] .venv/bin/safetynet serve --store {s.store}   "
              "→ http://127.0.0.1:8000/")


def _published_warnings(store, snapshot_date):
    from safetynet import snapshot

    return snapshot.read(store, "warnings", snapshot_date, identified=True)  # masked on export


def _date(v: str) -> dt.date:
    try:
        return dt.date.fromisoformat(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {v!r}") from None


def run_build(settings, store, snapshot_date: dt.date, policy_file: str | None = None, accept_unhealthy=()):
    """Build, warnings, quality gate and publish from clean/ (shared by `run` and `demo`)."""
    from safetynet import pipeline

    pol = pipeline.load_policy(pipeline.county_of(store), snapshot_date, policy_file)
    try:
        return pipeline.build_snapshot(settings, store, snapshot_date, pol, accept_unhealthy=accept_unhealthy)
    except pipeline.QualityGateFailed as e:
        _console().print(f"[red]{e}[/red]\nData Docs: {store.url}/docs/quality/")
        raise


def print_warnings(res, con) -> None:
    """Counts by rule and by street, and the top of the ranked list (masked)."""
    import pyarrow.compute as pc
    from rich.table import Table

    from quality.rules import RULES
    from safetynet import snapshot
    from safetynet.regions import region_names

    w = res.warnings
    titles = {r.id: (r.title_zh, r.severity) for r in RULES}
    t = Table(title=f"预警汇总 Warnings {res.snapshot_date} (policy {res.policy_version})")
    for col in ("rule", "规则", "级别", "warnings"):
        t.add_column(col, justify="right" if col == "warnings" else "left")
    counts = dict(snapshot.count_by(w, "rule_id")) if w.num_rows else {}
    for r in RULES:
        t.add_row(r.id, titles[r.id][0], titles[r.id][1], f"{counts.get(r.id, 0):,}")
    t.add_row("[bold]total[/bold]", "", "", f"{w.num_rows:,}")
    con.print(t)
    streets = region_names()  # blank for streets outside the reference table
    t2 = Table(title="按街道 by street")
    for col in ("street", "街道", "warnings", "households"):
        t2.add_column(col, justify="right" if col in ("warnings", "households") else "left")
    for code, n in sorted(snapshot.count_by(w, "street_code")):
        hh = len(set(w.filter(pc.equal(w["street_code"], code))["household_no"].to_pylist()))
        t2.add_row(code, streets.get(code, ""), f"{n:,}", f"{hh:,}")
    con.print(t2)


def cmd_run(args: argparse.Namespace) -> int:
    from safetynet.store import open_store

    s = _settings(args)
    store = open_store(s)
    con = _console()
    accept = args.accept_unhealthy or []
    report, cleaned = run_ingest(s, store, kafka=bool(s.kafka_bootstrap) and not args.no_kafka)
    ok = print_summary(report, cleaned)
    refused = [f for f in report.unhealthy if f not in accept]
    if refused:
        con.print(f"[red]not published[/red]: unhealthy feed(s) {', '.join(refused)} (see above); "
                  f"exit {EXIT_UNHEALTHY}")
        return EXIT_UNHEALTHY
    res = run_build(s, store, args.snapshot_date, args.policy, accept)
    if res.accepted_unhealthy:
        con.print(f"[yellow]published on the previous clean state of unhealthy feed(s) "
                  f"{', '.join(res.accepted_unhealthy)} (--accept-unhealthy)[/yellow]: recorded in the manifest, "
                  "and warnings of rules reading them list them in stale_inputs")
    if res.quality is not None:
        con.print(f"data quality: {res.quality.summary()}\nData Docs: {store.url}/docs/quality/ ({len(res.docs)} files)")
    print_warnings(res, con)
    con.print(f"published snapshot {args.snapshot_date}: {res.persons:,} persons, {res.households:,} households, "
              f"{res.warnings.num_rows:,} warnings; {res.published_line(store.url)}"
              + (f"; {res.kafka_published:,} warnings produced to hub.warnings.v1" if res.kafka_published else ""))
    return EXIT_OK if ok else EXIT_FAILURE


def cmd_warnings(args: argparse.Namespace) -> int:
    from safetynet import export, snapshot
    from safetynet.store import open_store

    s = _settings(args)
    store = open_store(s)
    w = snapshot.read(store, "warnings", args.snapshot_date, identified=True,  # masked on export
                      version=args.version)
    n = export.write(w, Path(args.out))
    _console().print(f"wrote {n:,} warnings of snapshot {w['snapshot_date'][0] if n else args.snapshot_date} "
                     f"to {args.out}")
    return 0


def cmd_snapshots_list(args: argparse.Namespace) -> int:
    """Published snapshot dates and their versions: the current one, rows, policy, inputs, quality."""
    import datetime as _dt
    import json as _json

    from rich.table import Table

    from safetynet import snapshot
    from safetynet.store import open_store

    store = open_store(_settings(args))
    days = [args.date] if args.date else snapshot.snapshots(store)
    out = []
    for day in days:
        try:
            current = snapshot.pointer(store, day)["version"]
        except FileNotFoundError:
            print(f"safetynet: no published snapshot {day} in {store.url}", file=sys.stderr)
            return EXIT_USAGE
        mtimes = {e.path: e.mtime_ns for e in store.list(f"{snapshot.MANIFESTS}/{day.isoformat()}/", ".json")}
        for v in snapshot.versions(store, day) or [current]:
            m = snapshot.manifest(store, day, v)
            q = m.get("quality") or {}
            inputs = m.get("inputs") or {}
            t = mtimes.get(f"{snapshot.MANIFESTS}/{day.isoformat()}/v{v}.json")
            out.append({
                "snapshot_date": day.isoformat(), "version": v, "current": v == current,
                "published_at": _dt.datetime.fromtimestamp(t / 1e9, _dt.UTC).isoformat(timespec="seconds") if t else None,
                "rows": {k: d["rows"] for k, d in m["datasets"].items()}, "policy_version": m.get("policy_version"),
                "quality_ok": q.get("ok"), "quality_failures": len(q.get("failures") or []),
                "inputs": {fid: i.get("rows") for fid, i in sorted(inputs.items())},
                "inputs_missing": sorted(f for f, i in inputs.items() if i.get("missing")),
                "inputs_stale": sorted(f for f, i in inputs.items() if i.get("stale")),
                "inputs_unhealthy": sorted(f for f, i in inputs.items() if i.get("unhealthy")),
            })
    if args.json:
        print(_json.dumps(out, ensure_ascii=False, indent=1))
        return EXIT_OK
    if not out:
        _console().print(f"no published snapshot in {store.url}")
        return EXIT_OK
    t = Table(title=f"已发布快照 Published snapshots · {store.url}")
    for col in ("date", "ver", "current", "published (UTC)", "warnings", "persons", "households", "policy",
                "quality", "inputs (feeds: rows)", "stale / unhealthy / missing"):
        t.add_column(col)
    for r in out:
        q = "—" if r["quality_ok"] is None else ("✓ passed" if r["quality_ok"] else "✗ failed")
        if r["quality_failures"]:
            q += f" ({r['quality_failures']} warnings)" if r["quality_ok"] else f" ({r['quality_failures']})"
        n_in = sum(v or 0 for v in r["inputs"].values())
        flags = " / ".join(", ".join(x) or "—" for x in (r["inputs_stale"], r["inputs_unhealthy"], r["inputs_missing"]))
        t.add_row(r["snapshot_date"], f"v{r['version']}", "●" if r["current"] else "", r["published_at"] or "",
                  f"{r['rows'].get('warnings', 0):,}", f"{r['rows'].get('monitoring/person', 0):,}",
                  f"{r['rows'].get('monitoring/household', 0):,}", r["policy_version"] or "", q,
                  f"{len(r['inputs'])}: {n_in:,}", flags)
    _console().print(t)
    return EXIT_OK


def cmd_snapshots_prune(args: argparse.Namespace) -> int:
    """Keep the last N versions per date, the current one, and every version a review decision references."""
    from sqlalchemy import select

    from safetynet import snapshot
    from safetynet.review import db
    from safetynet.review import models as m
    from safetynet.store import open_store

    s = _settings(args)
    if args.db:
        s = s.model_copy(update={"review_db": args.db})
    store = open_store(s)
    url = db.url_of(s)
    eng = db.engine_for(url)
    db.migrate(eng)
    with eng.connect() as c:
        refs = {(r.snapshot_date, r.snapshot_version) for r in c.execute(
            select(m.actions.c.snapshot_date, m.actions.c.snapshot_version).distinct()
            .where(m.actions.c.snapshot_version.is_not(None)))}
        refs |= {(r.snapshot_date, r.version) for r in c.execute(select(m.snapshots.c.snapshot_date, m.snapshots.c.version))
                 if r.version is not None}
    eng.dispose()
    res = snapshot.prune(store, args.keep, refs, dry_run=args.dry_run)
    con = _console()
    con.print(f"review database consulted: {url.split('@')[-1]} — {len(refs)} (date, version) referenced by "
              "decisions or loaded")
    for day in res.kept:
        con.print(f"{day}: keep {', '.join(f'v{v}' for v in res.kept[day])}"
                  + (f"; {'would remove' if args.dry_run else 'removed'} {', '.join(f'v{v}' for v in res.removed[day])}"
                     if res.removed[day] else ""))
    con.print(f"{'dry run: nothing deleted' if args.dry_run else f'{res.files_removed} data files deleted'}")
    return EXIT_OK


def cmd_rules_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from quality.rules import RULES, SEVERITY_ZH

    t = Table(title="预警规则 Warning rules")
    for col in ("rule id", "ver", "severity", "kind", "title", "policy parameters"):
        t.add_column(col)
    for r in RULES:
        t.add_row(r.id, str(r.version), f"{r.severity} {SEVERITY_ZH.get(r.severity, '')}", r.kind, r.title_zh,
                  ", ".join(r.params))
    _console().print(t)
    return EXIT_OK


def cmd_rules_backtest(args: argparse.Namespace) -> int:
    """Backtest a policy file on published snapshots: prints per rule kept/added/removed, writes
    the differences as CSV; publishes nothing."""
    from safetynet import backtest, policy, snapshot
    from safetynet.store import open_store

    s = _settings(args)
    try:
        pol = policy.load(args.policy)
        rules = backtest.select_rules(args.rule)
    except (policy.PolicyError, backtest.UnknownRule) as e:
        print(f"safetynet: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not s.store.startswith("s3://") and not Path(s.store.removeprefix("file://")).expanduser().is_dir():
        print(f"safetynet: store {s.store} does not exist", file=sys.stderr)
        return EXIT_USAGE
    store = open_store(s)
    published = snapshot.snapshots(store)
    missing = [d for d in args.snapshot_date if d not in published]
    if missing:
        print(f"safetynet: no published snapshot for {', '.join(d.isoformat() for d in missing)}; published: "
              f"{', '.join(d.isoformat() for d in published) or 'none'}", file=sys.stderr)
        return EXIT_USAGE
    dates = list(dict.fromkeys(args.snapshot_date))
    out_dir = Path(args.out)
    results, files = [], []
    with progress_bar(s.progress, len(dates), "回测 backtest") as adv:
        for d in dates:
            res = backtest.backtest(store, d, pol, rules, include_retired=not args.rule,
                                    memory_limit=s.duckdb_memory_limit,
                                    step=lambda what, d=d: adv(0, f"{d} {what}"))
            files.append(backtest.write_csv(res, out_dir))
            results.append(res)
            adv(1, d.isoformat())
    con = _pipe_console()
    for res in results:
        backtest.render(res, con)
    for res, f in zip(results, files, strict=True):
        con.print(f"{res.snapshot_date}: {len(res.changes):,} differences (added/removed) → {f}", markup=False)
    con.print("nothing was published or written to the store", markup=False)
    return EXIT_OK


def _pipe_console():
    """A console for output that may be cut short (`| head`): once the reader has gone, the rest
    is dropped quietly and the command ends normally (rich's default exits with status 1)."""
    import os

    from rich.console import Console

    class PipeConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # the exit's flush cannot fail either
            os.close(devnull)

    return PipeConsole(highlight=False, width=_width())


# ---- entry point ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="safetynet", description="兜底保障数据枢纽 Safety-Net Data Hub")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("-v", "--verbose", action="store_true", help="info-level logs")
    sub = p.add_subparsers(dest="cmd", required=True)

    def store_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--store", help="store URL: path, file://…, or s3://bucket (default: $SAFETYNET_STORE)")
        sp.add_argument("--kafka", help="Kafka bootstrap host:port (default: $SAFETYNET_KAFKA_BOOTSTRAP)")
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")

    sp = sub.add_parser("feeds", help="list the department feeds and their contracts; profile a department's export")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--topics", action="store_true", help="the Kafka topics of every feed and the hub, one a line")
    sp.set_defaults(func=cmd_feeds)
    fsub = sp.add_subparsers(dest="action", required=False)
    fp = fsub.add_parser("profile", help="profile export files (or a sample of the topic) against a feed's contract "
                         "and suggest a mapping file; ingests nothing")
    fp.add_argument("paths", nargs="*", metavar="PATH", help="CSV/XLSX/JSON Lines files (or folders) of the department")
    fp.add_argument("--feed", required=True, help="feed id, e.g. housing.property")
    fp.add_argument("--kafka", nargs="?", const="", default=None, metavar="HOST:PORT",
                    help="profile a sample of the feed's topic instead (default: $SAFETYNET_KAFKA_BOOTSTRAP)")
    fp.add_argument("--sample", type=int, default=5000, help="messages to sample from the topic (default 5000)")
    fp.add_argument("--out", help="suggested mapping file (default: ./<feed>.suggested.toml)")
    fp.set_defaults(func=cmd_feeds_profile)
    fr = fsub.add_parser("release", help="accept a feed's held (unhealthy) deliveries as they are: their accepted "
                         "records join clean/, and the feed counts as healthy again")
    fr.add_argument("feed", metavar="FEED", help="feed id, e.g. medical_insurance.claim")
    store_opts(fr)
    fr.set_defaults(func=cmd_feeds_release)

    sp = sub.add_parser("check-config", help="show settings in force and check store and Kafka")
    store_opts(sp)
    sp.set_defaults(func=cmd_check_config)

    for name, fn, hlp in (("generate", cmd_generate, "generate a synthetic district and send its data"),
                          ("demo", cmd_demo, "generate, publish, ingest and summarise (embedded broker)")):
        sp = sub.add_parser(name, help=hlp)
        store_opts(sp)
        sp.add_argument("--persons", type=int, default=20_000)
        sp.add_argument("--seed", type=int, default=20261101)
        if name == "generate":
            sp.add_argument("--out", help="write landing files and truth Parquet to this directory instead")
        else:
            sp.add_argument("--fresh", action=argparse.BooleanOptionalAction, default=True,
                            help="start from an empty local store (default: yes)")
        sp.set_defaults(func=fn)

    sp = sub.add_parser("run", help="ingest, clean, quality gate, build, warnings and publish one snapshot")
    store_opts(sp)
    sp.add_argument("--snapshot-date", type=_date, required=True, help="YYYY-MM-DD: facts before this day")
    sp.add_argument("--policy", help="policy file (default: quality/policy/<county>-<year>.toml)")
    sp.add_argument("--no-kafka", action="store_true", help="file drops only")
    sp.add_argument("--wait-lease", type=float, metavar="SECONDS",
                    help="wait this long for another ingest holding a feed (default: $SAFETYNET_LEASE_WAIT_S, 0: exit 4)")
    sp.add_argument("--accept-unhealthy", action="append", metavar="FEED",
                    help="publish although this feed is unhealthy, on its previous clean state (recorded in the "
                         "manifest; its rules' warnings list it in stale_inputs); repeatable")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("snapshots", help="published snapshots and their versions: list them, prune old versions")
    ssub = sp.add_subparsers(dest="action", required=True)
    sl = ssub.add_parser("list", help="dates, versions (● current), rows, policy, inputs and quality of each version")
    store_opts(sl)
    sl.add_argument("--date", type=_date, help="only this snapshot date")
    sl.add_argument("--json", action="store_true")
    sl.set_defaults(func=cmd_snapshots_list)
    sr = ssub.add_parser("prune", help="delete old versions: keep the newest N per date, the current one and "
                         "every version a review decision references")
    store_opts(sr)
    sr.add_argument("--keep", type=int, required=True, help="versions to keep per date (≥ 1)")
    sr.add_argument("--db", help="review database URL (default: $SAFETYNET_REVIEW_DB or SQLite in the work dir)")
    sr.add_argument("--dry-run", action="store_true", help="show what would be deleted")
    sr.set_defaults(func=cmd_snapshots_prune)

    sp = sub.add_parser("warnings", help="published warnings")
    wsub = sp.add_subparsers(dest="action", required=True)
    we = wsub.add_parser("export", help="export a snapshot's warnings to .csv (UTF-8 with BOM) or .xlsx")
    store_opts(we)
    we.add_argument("--snapshot-date", type=_date, help="default: the latest published snapshot")
    we.add_argument("--version", type=int, help="a version of that date (default: its current one)")
    we.add_argument("--out", required=True, help="file ending .csv or .xlsx")
    we.set_defaults(func=cmd_warnings)

    sp = sub.add_parser("policy", help="policy parameters per region and year (quality/policy/)")
    psub = sp.add_subparsers(dest="action", required=True)
    pi = psub.add_parser("init", help="write a complete policy file for a new region with default thresholds")
    pi.add_argument("--region", required=True, help="6-digit county code (GB/T 2260)")
    pi.add_argument("--year", type=int, required=True)
    pi.add_argument("--urban-dibao", type=float, required=True, help="城市低保标准 元/人/月")
    pi.add_argument("--rural-dibao", type=float, required=True, help="农村低保标准 元/人/月")
    pi.add_argument("--name", help="region name, e.g. 长沙市天心区")
    pi.add_argument("--out", required=True, help="file to write (quality/policy/<region>-<year>.toml to ship it)")
    pi.add_argument("--force", action="store_true")
    ps = psub.add_parser("show", help="validate and print the policy in force for a region and year, or a file")
    ps.add_argument("--region", default="430103")
    ps.add_argument("--year", type=int, default=2026)
    ps.add_argument("--file", help="a policy file instead")
    sp.set_defaults(func=cmd_policy)

    sp = sub.add_parser("rules", help="the warning rules: list them; backtest a new policy file on published snapshots")
    rsub = sp.add_subparsers(dest="action", required=True)
    rl = rsub.add_parser("list", help="every warning rule: id, version, severity, kind, title, policy parameters")
    rl.set_defaults(func=cmd_rules_list)
    rb = rsub.add_parser("backtest", help="rebuild published snapshots on their published inputs with a new policy "
                         "file and compare with the published warnings (kept/added/removed per rule); publishes "
                         "nothing")
    rb.add_argument("--store", help="store URL: path, file://…, or s3://bucket (default: $SAFETYNET_STORE)")
    rb.add_argument("--no-progress", action="store_true", help="no progress bar")
    rb.add_argument("--policy", required=True, help="the new policy file (TOML)")
    rb.add_argument("--rule", action="extend", nargs="+", metavar="ID",
                    help="only these rule ids (default: every rule; see `safetynet rules list`)")
    rb.add_argument("--snapshot-date", type=_date, nargs="+", required=True, metavar="D",
                    help="published snapshot date(s) YYYY-MM-DD")
    rb.add_argument("--out", default=".", metavar="DIR",
                    help="directory for the differences, one backtest-<D>.csv per date (default: .)")
    rb.set_defaults(func=cmd_rules_backtest)

    sp = sub.add_parser("ingest", help="ingest everything waiting on the topics and in landing/, then clean")
    store_opts(sp)
    sp.add_argument("--feed", action="append", help="only this feed id (repeatable)")
    sp.add_argument("--no-kafka", action="store_true")
    sp.add_argument("--no-files", action="store_true")
    sp.add_argument("--wait-lease", type=float, metavar="SECONDS",
                    help="wait this long for another ingest holding a feed (default: $SAFETYNET_LEASE_WAIT_S, 0: exit 4)")
    sp.set_defaults(func=cmd_ingest)

    from safetynet.review import cli as review_cli

    review_cli.add_parsers(sub, _settings)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    from rich.console import Console
    from rich.logging import RichHandler

    logging.basicConfig(level=level, format="%(name)s: %(message)s", handlers=[RichHandler(show_path=False, console=Console(stderr=True, width=_width()))])
    from safetynet import logmask

    logmask.install()  # last line of defence: nothing ID-shaped leaves in a log line
    if not args.debug:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
        logging.getLogger("great_expectations").setLevel(logging.WARNING)  # it sets INFO on itself
    from connectors.mapping import MappingError
    from safetynet.lease import LeaseBusy
    from safetynet.pipeline import QualityGateFailed

    try:
        return args.func(args)
    except ValidationError as e:
        print(f"safetynet: configuration error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except MappingError as e:
        print(f"safetynet: {e}\nnothing was ingested; fix the mapping file(s) (see `safetynet feeds profile`)",
              file=sys.stderr)
        return EXIT_USAGE
    except QualityGateFailed as e:  # a data problem, reported where it was found
        if args.debug:
            raise
        if e.report is None:
            print(f"safetynet: not published: {e}", file=sys.stderr)
        return EXIT_UNHEALTHY
    except LeaseBusy as e:  # another ingest holds a feed: not an error of this run's data
        print(f"safetynet: not started: {e}", file=sys.stderr)
        return EXIT_BUSY
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"safetynet: error: {type(e).__name__}: {e}  (run with --debug for the traceback)", file=sys.stderr)
        return 1


def entry() -> None:
    """The console script: exit without interpreter teardown, where DuckDB's bindings print
    spurious leak warnings; logs and output are flushed first."""
    import os

    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
