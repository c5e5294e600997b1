"""`safetynet demo` and `safetynet generate`: the synthetic district end to end.

Demo-only: registered with the CLI through the `safetynet.commands` entry point group
(pyproject.toml), so no runtime module imports this package. It plays the departments' part
(publishing events, dropping files), starts the embedded broker when no Kafka is configured, and
then runs the same ingest, build and publish as `safetynet run`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from safetynet.cli import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_UNHEALTHY,
    UsageError,
    _console,
    _named,
    _open_store,
    _print_import,
    _published_warnings,
    _say,
    _settings,
    policy_for_data,
    print_summary,
    print_warnings,
    progress_bar,
    regions_import,
    run_build,
    run_ingest,
    store_location,
)
from safetynet.core import paths

log = logging.getLogger(__name__)

#: The synthetic district plants every kind of dirty record in every feed — up to half of a
#: small feed's records — so its runs judge feed health against this rate unless
#: SAFETYNET_MAX_QUARANTINE_RATE is set. Real feeds keep the default (5 %).
SYNTHETIC_MAX_QUARANTINE_RATE = 0.75


def _load_district(args: argparse.Namespace):
    from safetynet.demo.synth import emit, generate

    t0 = time.perf_counter()
    if args.persons < 1:
        raise UsageError(f"--persons {args.persons}: give a number of persons")
    try:
        d = generate(persons=args.persons, seed=args.seed, counties=tuple(getattr(args, "counties", None) or ()))
    except ValueError as e:
        if "persons must be at least" not in str(e):
            raise
        raise UsageError(f"--persons {args.persons}: {e}") from None  # the district's planted households need room
    em = emit(d)
    log.info("generated %d persons in %.1fs", args.persons, time.perf_counter() - t0)
    return d, em


def publish_emission(settings, store, em, enabled: bool) -> None:
    """Publish the generated events to their topics and drop the files (with progress)."""
    from connectors.kafka_producer import ensure_topics, publish
    from safetynet.demo.departments import drop_files
    from schemas.registry import get

    total = sum(len(v) for v in em.events.values())
    if total:
        ensure_topics(settings.kafka_bootstrap, [get(f).topic for f in em.events])
    with progress_bar(enabled, total, "发布事件 publishing events") as adv:
        for fid, msgs in em.events.items():
            publish(settings.kafka_bootstrap, get(fid).topic, msgs, progress=lambda n, f=fid: adv(n, f))
    drop_files(store, em.files)


def cmd_generate(args: argparse.Namespace) -> int:
    s = _settings(args)
    if not args.out and not s.kafka_bootstrap:
        raise UsageError("no Kafka to publish to (SAFETYNET_KAFKA_BOOTSTRAP or --kafka): use `safetynet demo` "
                         "for an embedded broker, or --out DIR to write files only")
    d, em = _load_district(args)
    con = _console()
    if args.out:
        from safetynet.demo.synth.emit import write_files, write_truth_parquet

        out = Path(args.out)
        write_files(em, out)
        write_truth_parquet(d, out / "truth")
        written = []
        for county, listed in city_regions(d):
            regions_csv = out / f"regions-{county}.csv"
            regions_csv.write_bytes(listed)
            written.append(str(regions_csv))
        con.print(f"wrote landing files and truth Parquet under {out}; the district's streets and communities: "
                  f"{', '.join(written)} (`safetynet regions import` it)")
        return EXIT_OK
    store = _open_store(s, create=True)
    if d.counties:
        for county, listed in city_regions(d):
            _print_import(regions_import(store, listed, f"regions-{county}.csv"), store, con)
    else:
        import_district_regions(store, con)
    publish_emission(s, store, em, s.progress)
    con.print(f"published {em.total_events:,} events and dropped {len(em.files)} files into {store.url}/{paths.LANDING}")
    return EXIT_OK


def _wipe_demo_store(settings) -> None:
    """`demo --fresh`: start from an empty local store — but never wipe one the demo did not make."""
    import shutil

    path = Path(store_location(settings))
    if not path.exists():
        return
    if not path.is_dir():
        raise UsageError(f"the demo store {path} is a file, not a directory; give another --store")
    # `paths.DEMO_MARKER` is written by `safetynet demo` into the store it makes: only such a store is wiped
    if any(path.iterdir()) and not (path / paths.DEMO_MARKER).exists():
        raise UsageError(f"{path} holds a store the demo did not make, and the demo starts from an empty one: give "
                         "it another --store (or --no-fresh to add the demo's data to this store)")
    shutil.rmtree(path)


def cmd_demo(args: argparse.Namespace) -> int:
    from safetynet.core.store import open_store
    from safetynet.demo.broker import EmbeddedBroker

    s = _settings(args)
    con = _console()
    if "max_quarantine_rate" not in s.model_fields_set:
        s = s.model_copy(update={"max_quarantine_rate": SYNTHETIC_MAX_QUARANTINE_RATE})
    if args.fresh and not s.store.startswith("s3://"):
        _wipe_demo_store(s)
    store = _named(open_store(s))
    if not store.exists(paths.DEMO_MARKER):
        store.write_bytes(paths.DEMO_MARKER, json.dumps({"persons": args.persons, "seed": args.seed}).encode())
    _say(con, ("兜底保障数据枢纽 demo", "bold"), f": {args.persons:,} persons (seed {args.seed}), store {store.url}")
    import_district_regions(store, con)
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
        pol = policy_for_data(store, d.as_of, None)
        res = run_build(s, store, d.as_of, pol)
        con.print(f"quality gate, monitoring build, warnings and publish in {time.perf_counter() - t3:.1f}s"
                  + (f"; {res.kafka_published:,} warnings produced to hub.warnings.v1" if res.kafka_published else ""))
    finally:
        if broker:
            broker.stop()
    print_warnings(res, con)
    from safetynet.publish import export

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

    from safetynet.core.settings import Settings
    from safetynet.review import cli as review_cli
    from safetynet.review import db

    engine = review_cli._engine(s)
    res = review_cli.load_latest(s, engine)
    users = review_cli.demo_users(engine)
    t = Table(title="预警处置系统 demo accounts (one per role; passwords are new on every demo run)")
    for col in ("username", "password", "role", "region 辖区"):
        t.add_column(col)
    for row in users:
        t.add_row(*row)
    con.print(t)
    url = db.url_of(s)
    where = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url.split("@")[-1]  # no password
    if res is None:
        con.print(f"review database {where}: no published snapshot to load")
    elif res.loaded:
        con.print(f"review database {where}: snapshot {res.snapshot_date} — {res.warnings:,} warnings loaded, "
                  f"{res.new_cases:,} new cases")
    else:
        con.print(f"review database {where}: snapshot {res.snapshot_date} already loaded (same manifest)")
    default = s.store == Settings.model_fields["store"].default
    _say(con, ("open the review app:", "bold"), " .venv/bin/safetynet serve" + ("" if default else f" --store {s.store}")
         + "   → http://127.0.0.1:8000/")


def district_regions() -> tuple[str, bytes]:
    """(county, list) of the synthetic district's streets and communities, as a county publishes
    it (12-digit codes, `safetynet.intake.regions.to_published_csv`)."""
    from safetynet.demo.synth.district import DISTRICT_CODE, region_tree
    from safetynet.intake.regions import to_published_csv

    names = {}
    for r in region_tree().table().to_pylist():
        names[r["street_code"]] = r["street_name"]
        names[r["region_code"]] = r["name"]
    return DISTRICT_CODE, to_published_csv(names)


def city_regions(d) -> list[tuple[str, bytes]]:
    """(county, its published street and community list) per county of a generated city
    (`generate(..., counties=...)`: the district's streets split among them); one district: its list."""
    if not d.counties:
        return [district_regions()]
    from safetynet.demo.synth.district import region_tree
    from safetynet.intake.regions import to_published_csv

    tree = region_tree()
    names: dict[str, dict[str, str]] = {c: {} for c in d.counties}
    for r, street in zip(tree.table().to_pylist(), tree.street.tolist(), strict=True):
        county = d.street_county(int(street))
        names[county][county + r["street_code"][6:]] = r["street_name"]
        names[county][county + r["region_code"][6:]] = r["name"]
    return [(c, to_published_csv(n)) for c, n in names.items()]


def import_district_regions(store, con) -> None:
    """The demo district's list, imported as any county's is (`safetynet regions import`)."""
    county, data = district_regions()
    _print_import(regions_import(store, data, f"regions-{county}.csv"), store, con)


def _counties(text: str) -> tuple[str, ...]:
    codes = tuple(c.strip() for c in text.split(",") if c.strip())
    if not codes or any(len(c) != 6 or not c.isdigit() for c in codes) or len(set(codes)) != len(codes):
        raise argparse.ArgumentTypeError(f"{text!r}: distinct 6-digit county codes, comma-separated (430103,430104)")
    return codes


def add_parsers(sub: argparse._SubParsersAction, store_opts) -> None:
    """`safetynet generate` and `safetynet demo` (registered in the `safetynet.commands` entry point group)."""
    for name, fn, hlp in (("generate", cmd_generate, "generate a synthetic district and send its data"),
                          ("demo", cmd_demo, "generate, publish, ingest, build and publish a snapshot, load the "
                           "review app (embedded broker)")):
        sp = sub.add_parser(name, help=hlp)
        store_opts(sp)
        sp.add_argument("--persons", type=int, default=20_000)
        sp.add_argument("--seed", type=int, default=20261101)
        if name == "generate":
            sp.add_argument("--out", help="write landing files and truth Parquet to this directory instead")
            sp.add_argument("--counties", type=_counties, default=None, metavar="CODE,CODE",
                            help="a city of several counties, e.g. 430103,430104: the district's streets split into "
                            "one block per county (each needs its policy file, quality/policy/<county>-<year>.toml)")
        else:
            sp.add_argument("--fresh", action=argparse.BooleanOptionalAction, default=True,
                            help="start from an empty local store (default: yes; only a store the demo made is "
                            "wiped)")
        sp.set_defaults(func=fn)
