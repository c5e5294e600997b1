"""`safetynet` — the command line. The same functions the Airflow tasks call, nothing more.

Settings are built once here (env vars `SAFETYNET_*`, then flags) and passed down. A mistake the
user can put right is one actionable line on stderr and exit 2 (`UsageError` and the library's
own user-facing errors, mapped in `main`); `--debug` shows the traceback. Output is plain text
(never read as rich markup), and a reader that goes away (`| head`) ends nothing early.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

log = logging.getLogger("safetynet")

#: Exit codes of every command (documented in the README).
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_UNHEALTHY, EXIT_BUSY = 0, 1, 2, 3, 4
#: A write to stdout failed because its reader went away (`… | head`), as a shell reports SIGPIPE.
EXIT_PIPE = 141


class UsageError(Exception):
    """A mistake the user can put right — a wrong argument, a file or store that is not there, a
    date without a snapshot. `main` prints it as one line on stderr and exits 2 (no traceback)."""


# ---- output helpers ---------------------------------------------------------------------------
_CONSOLE_CLASS = None


def _console(markup: bool = False, stderr: bool = False):
    """The CLI's console. Strings are printed as they are: help texts (`s3://bucket[/prefix]`),
    paths, feed titles and error messages are never read as rich markup; style with `Text`
    (`_say`). `markup=True` only for renderers written in markup that escape their own data
    (`backtest.render`). A reader that goes away (`| head`) ends nothing early: the rest of the
    output is dropped and the command finishes its work (rich's default would exit 1)."""
    global _CONSOLE_CLASS
    from rich.console import Console

    if _CONSOLE_CLASS is None:
        class PipeConsole(Console):
            def on_broken_pipe(self) -> None:
                self.quiet = True
                _stdout_gone()

        _CONSOLE_CLASS = PipeConsole
    return _CONSOLE_CLASS(highlight=False, markup=markup, width=_width(), stderr=stderr)


def _say(con, *parts) -> None:
    """One line from plain strings and (text, style) pairs, none of it read as markup."""
    from rich.text import Text

    con.print(Text.assemble(*parts))


def _emit(text: str) -> None:
    """Plain text (JSON, one-a-line lists) on stdout; a reader that went away is no error."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_gone()


def _stdout_gone() -> None:
    """The reader of stdout went away: send the rest (and the exit's flush) to /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a real file (captured in tests)
        pass


def _width() -> int | None:
    """A terminal's own width; wide lines in logs and pipes (CI), where rich would assume 80."""
    return None if sys.stdout.isatty() else 200


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int | None, label: str) -> Iterator:
    """A rich progress bar (a spinner when the total is unknown) on stderr when stderr is a
    terminal; a no-op callable elsewhere, so pipes and CI logs stay clean."""
    if not enabled or not sys.stderr.isatty():
        yield lambda *a, **k: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    con = _console(stderr=True)
    cols: tuple[ProgressColumn, ...]
    if total is None:
        cols = (SpinnerColumn(), TextColumn("{task.description}", markup=False),
                TextColumn("{task.fields[detail]}", markup=False), TimeElapsedColumn())
    else:
        cols = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}", markup=False), TimeRemainingColumn())
    with Progress(*cols, console=con, transient=total is None) as p:
        task = p.add_task(label, total=total, detail="")

        def advance(n: int, detail: str = "") -> None:
            p.update(task, advance=n, detail=detail)

        yield advance


#: the name of our log handler on the root logger
_LOG_HANDLER = "safetynet"


def _setup_logging(level: int) -> None:
    """Our handler on the root logger (stderr, ISO-like times), its level the one asked for: a
    library that sets INFO on its own logger (great_expectations) shows nothing without -v."""
    from rich.console import Console
    from rich.logging import RichHandler

    root = logging.getLogger()
    ours = [h for h in root.handlers if h.get_name() == _LOG_HANDLER]
    if not ours and not root.handlers:  # an embedding program (pytest) keeps its own
        handler = RichHandler(show_path=False, console=Console(stderr=True, width=_width()),
                              log_time_format="%Y-%m-%d %H:%M:%S", omit_repeated_times=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        handler.set_name(_LOG_HANDLER)
        root.addHandler(handler)
        ours = [handler]
    for h in ours:
        h.setLevel(level)
    if ours:
        root.setLevel(level)


# ---- settings, stores and arguments ---------------------------------------------------------------
def _settings(args: argparse.Namespace):
    """The settings in force: `SAFETYNET_*` variables, overridden by the flags given (validated alike)."""
    from safetynet.core.settings import Settings

    upd = {}
    if getattr(args, "store", None):
        upd["store"] = args.store
    if getattr(args, "kafka", None):
        upd["kafka_bootstrap"] = args.kafka
    if getattr(args, "no_progress", False):
        upd["progress"] = False
    if getattr(args, "wait_lease", None) is not None:
        upd["lease_wait_s"] = args.wait_lease
    if getattr(args, "db", None):
        upd["review_db"] = args.db
    return Settings(**upd)


def store_location(settings) -> str:
    """Where the settings' store is, as a user would look for it: an absolute path, or the s3:// URL."""
    if settings.store.startswith("s3://"):
        return settings.store
    return str(Path(settings.store.removeprefix("file://")).expanduser().resolve())


def store_exists(settings) -> bool:
    """Whether there is a store (anything at all) where the settings point — looked at without
    creating anything (opening a store creates its directory or bucket)."""
    if not settings.store.startswith("s3://"):
        path = Path(store_location(settings))
        return path.is_dir() and any(path.iterdir())
    from minio import Minio

    from safetynet.core.store import StoreError

    if not settings.s3_endpoint:
        raise UsageError("SAFETYNET_STORE is s3:// but SAFETYNET_S3_ENDPOINT is not set")
    bucket, _, prefix = settings.store[5:].partition("/")
    endpoint = settings.s3_endpoint
    client = Minio(endpoint.split("://", 1)[-1].rstrip("/"),
                   access_key=settings.s3_access_key.get_secret_value() if settings.s3_access_key else None,
                   secret_key=settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None,
                   secure=endpoint.startswith("https://"), region=settings.s3_region)
    try:
        if not client.bucket_exists(bucket):
            return False
        return next(iter(client.list_objects(bucket, prefix=prefix.strip("/") + "/" if prefix else None)), None) \
            is not None
    except Exception as e:  # unreachable or refused: a failure, not the user's mistake
        raise StoreError(f"store {settings.store} not reachable at {endpoint}: {str(e).splitlines()[0][:200]}") from None


def open_existing_store(settings, why: str = ""):
    """The store the settings point at, which must exist: commands that read never create one.
    `why` replaces the default hint (which commands create a store)."""
    from safetynet.core.store import open_store

    if not store_exists(settings):
        where = store_location(settings)
        what = "" if where.startswith("s3://") else \
            " (the directory does not exist)" if not Path(where).exists() else " (the directory is empty)"
        raise UsageError(f"no store at {where}{what} — check --store or SAFETYNET_STORE"
                         + (why or "; `safetynet ingest`, `run` and `demo` create one"))
    return _named(open_store(settings))


def _named(store):
    """`store`, whose imported county lists now name regions in everything this command prints."""
    from safetynet.intake import regions

    regions.use_store(store)
    return store


#: why `ingest`/`run` without Kafka refuse a store that is not there (its landing/ would be inside it)
NOTHING_TO_INGEST = ("; nothing to ingest there: department files are dropped under <store>/landing/<department>/"
                     "<feed>/ (with Kafka configured, ingest makes a new store)")


def _open_store(settings, *, create: bool, why: str = ""):
    """The store; `create`: made if it is not there yet — and then said so (a typo'd --store
    shows at once instead of quietly filling a second store)."""
    from safetynet.core.store import open_store

    if not create:
        return open_existing_store(settings, why)
    new = not store_exists(settings)
    store = _named(open_store(settings))
    if new:
        _console(stderr=True).print(f"note: no store at {store_location(settings)} yet: made a new one")
    return store


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _date(v: str) -> dt.date:
    """A date as YYYY-MM-DD — the one form every command takes (20261101 is refused, with the fix)."""
    if not _ISO_DATE.fullmatch(v.strip()):
        hint = f" (write {v[:4]}-{v[4:6]}-{v[6:]})" if re.fullmatch(r"\d{8}", v.strip()) else ""
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {v!r}{hint}")
    try:
        return dt.date.fromisoformat(v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"no such day: {v!r}") from None


def _feed_id(v: str) -> str:
    """A feed id the registry knows; a typo gets the closest one."""
    import difflib

    from schemas.registry import contracts

    known = list(contracts())
    if v in known:
        return v
    close = difflib.get_close_matches(v, known, n=1, cutoff=0.5)
    raise argparse.ArgumentTypeError(f"unknown feed {v!r}" + (f"; did you mean {close[0]}?" if close else "")
                                     + " (`safetynet feeds` lists them)")


def _county(v: str) -> str:
    if not re.fullmatch(r"\d{6}", v):
        raise argparse.ArgumentTypeError(f"not a 6-digit county code (GB/T 2260): {v!r}")
    return v


def _region(v: str) -> str:
    if not re.fullmatch(r"\d{6}(\d{3}){0,2}", v):
        raise argparse.ArgumentTypeError(f"not a region code of 6 (county), 9 or 12 digits: {v!r}")
    return v


def _db(v: str) -> str:
    from safetynet.core.settings import db_url

    try:
        return db_url(v)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake reported as one line naming the command and where its help is."""

    def error(self, message: str):
        from schemas.idno import mask_text

        self.exit(EXIT_USAGE, f"{self.prog}: {mask_text(message)} (see `{self.prog} --help`)\n")


def _common(p: argparse.ArgumentParser, top: bool = False) -> None:
    """--debug and -v, accepted before or after the subcommand (below the top, SUPPRESS keeps a
    value given earlier: argparse would otherwise reset it to the subcommand's default)."""
    d = False if top else argparse.SUPPRESS
    p.add_argument("--debug", action="store_true", default=d, help="show tracebacks and debug logs")
    p.add_argument("-v", "--verbose", action="store_true", default=d, help="info-level logs")


def _subparsers(p: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for child in dict.fromkeys(a.choices.values()):
                yield child
                yield from _subparsers(child)


# ---- commands ---------------------------------------------------------------------------------
def cmd_policy(args: argparse.Namespace) -> int:
    from quality import policy

    con = _console()
    if args.action == "init":
        out = Path(args.out)
        if out.exists() and not args.force:
            raise UsageError(f"{out} exists (use --force to overwrite)")
        text = policy.init_text(args.region, args.year, args.urban_dibao, args.rural_dibao, args.name or "")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        con.print(f"wrote {out}: region {args.region}, year {args.year}, 低保 urban {args.urban_dibao:g} / rural "
                  f"{args.rural_dibao:g} 元/人/月, default thresholds — check them before use")
        return EXIT_OK
    pol = policy.load(args.file) if args.file else policy.for_region(args.region, args.year)
    _emit(json.dumps({"version": pol.version, "checksum": pol.checksum, **pol.model_dump(exclude={"checksum"})},
                     ensure_ascii=False, indent=1))
    return EXIT_OK


def cmd_feeds(args: argparse.Namespace) -> int:
    from rich.table import Table

    from connectors.base import connectors
    from schemas.registry import contracts

    if args.json:
        _emit(json.dumps([c.describe() for c in contracts().values()], ensure_ascii=False, indent=1))
        return EXIT_OK
    if args.topics:  # what docker-compose's kafka-topics job creates (see infra/airflow/airflow-init.sh)
        from schemas.outputs import SNAPSHOTS_TOPIC, WARNINGS_TOPIC

        _emit("\n".join(sorted({c.topic for c in contracts().values()}) + [SNAPSHOTS_TOPIC, WARNINGS_TOPIC]))
        return EXIT_OK
    conns = connectors()
    cs = contracts()
    from rich.measure import Measurement

    t = Table(title="部门数据源 Department feeds", caption="drop folder: landing/<department>/<feed>/ · "
              "topics one a line: `safetynet feeds --topics`")
    # ids and topics are what users type (feed folders, --feed, topic names): never cut short;
    # the other cells wrap (fold) rather than end in "…"
    whole = {"feed id": max(map(len, cs)), "topic": max(len(c.topic) for c in cs.values()),
             "key": max(len(k) for c in cs.values() for k in c.key),
             "PII": max((len(k) for c in cs.values() for k in c.pii_fields), default=3)}
    for col in ("feed id", "部门", "名称", "ver", "topic", "key", "mode", "evolution", "cadence", "fields", "PII"):
        t.add_column(col, no_wrap=col in whole, min_width=whole.get(col, 4), overflow="fold")
    for fid, c in cs.items():
        t.add_row(fid, c.department_zh, c.title_zh, str(c.version), c.topic, "\n".join(c.key), c.mode, c.evolution,
                  f"{c.cadence_hours}h", str(len(c.fields)), "\n".join(c.pii_fields) + ("" if fid in conns else "\n(no connector!)"))
    con = _console()
    # a terminal too narrow for the table gets it at its least width (the terminal wraps the lines)
    need = Measurement.get(con, con.options, t).minimum
    con.print(t, width=max(con.width, need))
    return EXIT_OK


def cmd_feeds_profile(args: argparse.Namespace) -> int:
    from connectors import profile
    from connectors.base import connectors
    from schemas.registry import get

    s = _settings(args)
    c = get(args.feed)
    mapping = connectors()[c.feed_id].load_mapping(s.mappings)
    if args.kafka is not None:
        if not s.kafka_bootstrap:  # `--kafka HOST:PORT` is in `s` already (`_settings`)
            raise UsageError("--kafka needs HOST:PORT or SAFETYNET_KAFKA_BOOTSTRAP")
        from connectors.kafka_topic import sample

        p = profile.profile_values(c, mapping, sample(s, c.topic, args.sample), c.topic)
    else:
        files = []
        for raw in args.paths:
            path = Path(raw)
            if not path.exists():
                raise UsageError(f"no such file or folder: {path}")
            for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
                if f.is_file():
                    files.append((f.name, f.read_bytes()))
        if not files:
            raise UsageError("give the export files (or a folder holding them) to profile, or --kafka")
        p = profile.profile_files(c, mapping, files)
    con = _console()
    for line in profile.render(c, p):
        con.print(line)
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

    from safetynet.intake import health
    from safetynet.intake.clean import clean_feed
    from schemas.registry import get

    s = _settings(args)
    store = open_existing_store(s)
    c = get(args.feed)
    paths = health.release(store, c, by=getpass.getuser())
    counts = clean_feed(store, c)
    _console().print(f"{c.feed_id}: released {len(paths)} held file(s); clean state rebuilt: {counts.rows:,} rows"
                     + ("" if paths else " (nothing was held)"))
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    """Settings in force and every problem at once: configuration problems exit 2, an unreachable
    store or broker 1."""
    from pydantic import SecretStr

    from safetynet.core.settings import Settings

    s = _settings(args)
    con = _console()
    for name, field in Settings.model_fields.items():
        v = getattr(s, name)
        shown = "********" if isinstance(v, SecretStr) else v
        _say(con, f"  SAFETYNET_{name.upper():<24} = {shown}   ", (field.description or "", "dim"))
    problems = s.problems()
    unreachable: list[str] = []
    from connectors.base import load_mappings
    from connectors.mapping import MappingError

    try:
        maps = load_mappings(s.mappings)
        own = {fid: m for fid, m in maps.items() if any(src != "built-in" for src in m.sources)}
        con.print(f"mappings: {s.mappings} — {len(own)} deployment file(s)"
                  + "".join(f"\n  {fid}: sha256 {m.sha256[:12]}… ({', '.join(m.sources)}; "
                            f"{len(m.raw_headers)} headers, {sum(len(v) for v in m.values.values())} values"
                            + (f", max_quarantine_rate {m.max_quarantine_rate}" if m.max_quarantine_rate is not None else "")
                            + ")" for fid, m in own.items()))
    except MappingError as e:
        problems += e.problems
    try:
        if not store_exists(s):
            con.print(f"store: no store at {store_location(s)} yet — `safetynet ingest`, `run` and `demo` create it")
        else:
            from safetynet.core import paths
            from safetynet.core.store import open_store

            st = open_store(s)
            st.write_bytes(paths.WRITE_CHECK, b"ok")
            st.delete(paths.WRITE_CHECK)
            _say(con, ("store reachable", "green"), f": {st.url}")
    except UsageError as e:
        problems.append(str(e))
    except Exception as e:
        unreachable.append(f"store {s.store} not usable: {_why(e)}")
    if s.kafka_bootstrap:
        try:
            from kafka import KafkaAdminClient

            KafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, request_timeout_ms=5000).close()
            _say(con, ("kafka reachable", "green"), f": {s.kafka_bootstrap}")
        except Exception as e:
            unreachable.append(f"kafka {s.kafka_bootstrap} not reachable: {_why(e)}")
    else:
        con.print("kafka: not configured (SAFETYNET_KAFKA_BOOTSTRAP); `safetynet demo` starts an embedded broker")
    for p in problems + unreachable:
        _say(con, ("problem", "red"), f": {p}")
    return EXIT_USAGE if problems else EXIT_FAILURE if unreachable else EXIT_OK


def _why(e: BaseException) -> str:
    """An exception's first line for a person; a message that is only its class's name (kafka's
    NoBrokersAvailable) says what happened instead."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text.removeprefix(f"{type(e).__name__}: ")  # kafka-python's errors name themselves
    return "no answer" if not text or text == type(e).__name__ else text[:300]


def run_ingest(settings, store, feeds=None, kafka=True, files=True):
    """Ingest + clean with a progress bar; returns (ingest report, clean counts). Folders under
    `landing/` that are no feed's are reported first (their files are never read)."""
    from connectors.base import connectors
    from connectors.drop_folder import stray_folders
    from safetynet.core import lease
    from safetynet.intake.clean import clean_all
    from safetynet.intake.ingest import ingest
    from schemas.registry import contracts

    if files:
        for line in stray_folders(store, list(contracts().values())):
            log.warning("drop: %s", line, extra={"event": "stray_landing"})
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
    from rich.table import Table
    from rich.text import Text

    from schemas.registry import get

    t = Table(title=f"接入汇总 Ingest run {report.run_id}", show_lines=False)
    for col in ("feed", "名称", "kafka", "files", "input", "accepted", "quarantined", "rate", "by reason",
                "clean rows", "ok"):
        t.add_column(col, justify="right" if col in ("kafka", "files", "input", "accepted", "quarantined", "rate",
                                                     "clean rows") else "left")
    all_ok = True
    tot = [0, 0, 0, 0, 0, 0]
    notes: list[Text] = []
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
        mark = (Text("✓", "green") if healthy else Text("✗ unhealthy", "red")) if ok else Text("✗", "red")
        t.add_row(fid, get(fid).title_zh, f"{fc.kafka_records:,}", f"{fc.file_records:,}", f"{fc.input:,}",
                  f"{fc.accepted:,}", f"{fc.quarantined_total:,}", f"{h.rate:.1%}" if h else "-", reasons,
                  f"{cc.rows:,}" if cc else "-", mark)
        if h is not None:
            notes += [Text(f"✗ {x}", "red") for x in h.problems]
            notes += [Text.assemble("  ", ("drift", "yellow"), f": {x}") for x in h.drift]
        if cc is not None and cc.reused_event_ids:
            notes.append(Text.assemble("  ", ("event ids reused", "yellow"), f": {fid}: {cc.reused_note()}"))
        for i, v in enumerate((fc.kafka_records, fc.file_records, fc.input, fc.accepted, fc.quarantined_total,
                               cc.rows if cc else 0)):
            tot[i] += v
    bad = report.unhealthy
    t.add_row(Text("total", "bold"), "", *(f"{v:,}" for v in tot[:5]), "", "", f"{tot[5]:,}",
              Text("✓", "green") if all_ok and not bad else Text("✗", "red"))
    con = _console()
    con.print(t)
    for n in notes:
        con.print(n)
    if bad:
        _say(con, (f"unhealthy feeds: {', '.join(bad)}", "red"), " — their deliveries are held out of clean/ "
             "(the previous clean state stays in force). Fix the mapping (`safetynet feeds profile`) and ingest "
             "again, or publish on the previous state with `safetynet run --accept-unhealthy FEED`.")
    con.print(f"input = accepted + quarantined for every feed: {'yes' if report.reconciles else 'NO'}"
              + ("; matches the generator's expected counts" if expected and all_ok else ""))
    con.print(f"run manifest: {report.manifest}")
    return all_ok


def _nothing_waiting(report, store, kafka: bool) -> None:
    from safetynet.core import paths

    if not any(fc.input or fc.empty_snapshots for fc in report.feeds.values()):
        _console().print(f"nothing was waiting: no new drops under {store.url}/{paths.LANDING}"
                         + (" and no new events on the topics" if kafka else ""))


def cmd_ingest(args: argparse.Namespace) -> int:
    s = _settings(args)
    kafka = not args.no_kafka and bool(s.kafka_bootstrap)
    # without Kafka there is nothing to take in where there is no store (its landing/ is inside it)
    store = _open_store(s, create=kafka, why=NOTHING_TO_INGEST)
    report, cleaned = run_ingest(s, store, args.feed or None, kafka=kafka, files=not args.no_files)
    if not s.kafka_bootstrap and not args.no_kafka:
        _console().print("note: SAFETYNET_KAFKA_BOOTSTRAP is not set, so only file drops were ingested")
    ok = print_summary(report, cleaned)
    _nothing_waiting(report, store, kafka)
    if not ok:
        return EXIT_FAILURE
    return EXIT_UNHEALTHY if report.unhealthy else EXIT_OK


def _published_warnings(store, snapshot_date):
    from safetynet.publish import snapshot

    return snapshot.read(store, "warnings", snapshot_date, identified=True)  # masked on export


def data_county(store, required: bool = True) -> str | None:
    """The county of the store's person register; None (if not `required`) before there is one."""
    from safetynet import pipeline

    try:
        return pipeline.county_of(store)
    except ValueError as e:
        if not required and "no clean person register" in str(e):
            return None
        raise UsageError(str(e)) from None


def policy_for_data(store, snapshot_date: dt.date, given=None, required: bool = True):
    """The policy to build with — the file given (loaded), or the shipped one of the data's county
    and the snapshot's year — checked against the county of the store's register. Before the
    register exists (`required=False`) only what can be checked is: the given file, loaded."""
    from quality import policy

    county = data_county(store, required)
    if county is None:
        return given
    pol = given or policy.for_region(county, snapshot_date.year)
    policy.check_county(pol, county)
    return pol


def policies_for_data(store, snapshot_date: dt.date, given=None, required: bool = True):
    """The policy to build with per county of the store's register: the file given for its own
    county (checked against the register: a file of a county the register does not hold is refused),
    the shipped ones for the others. One county: the policy itself (as `policy_for_data`); several:
    county → policy, built one county at a time with each county's file (`pipeline.build_snapshot`)."""
    from quality import policy
    from safetynet import pipeline

    try:
        counties = pipeline.counties_of(store)
    except ValueError as e:
        if not required and "no clean person register" in str(e):
            return given
        raise UsageError(str(e)) from None
    if len(counties) <= 1:
        return policy_for_data(store, snapshot_date, given, required)
    if given is not None and given.policy.region_code not in counties:
        policy.check_county(given, counties[0])  # the PolicyError naming the fix
    return {c: given if given is not None and given.policy.region_code == c
            else policy.for_region(c, snapshot_date.year) for c in counties}


def run_build(settings, store, snapshot_date: dt.date, pol, accept_unhealthy=(), full_gate: bool = False,
              full_build: bool = False):
    """Build, warnings, quality gate and publish from clean/ (shared by `run` and `demo`), with a
    spinner on a terminal. A gate that blocks prints its report here, once; `main` adds one line."""
    from safetynet import pipeline

    try:
        with progress_bar(settings.progress, None, "快照 snapshot") as adv:
            return pipeline.build_snapshot(settings, store, snapshot_date, pol, accept_unhealthy=accept_unhealthy,
                                           step=lambda what: adv(1, what), full_gate=full_gate,
                                           incremental=not full_build)
    except pipeline.QualityGateFailed as e:
        con = _console()
        if e.report is not None and hasattr(e.report, "summary"):  # (as the gate's own message has it)
            con.print(e.report.summary())
            con.print(f"Data Docs: {store.url}/docs/quality/")
        raise


def print_warnings(res, con) -> None:
    """Counts by rule and by street, and the top of the ranked list (masked)."""
    import pyarrow.compute as pc
    from rich.table import Table
    from rich.text import Text

    from quality.rules import RULES
    from safetynet.intake.regions import region_names
    from safetynet.publish import snapshot

    w = res.warnings
    titles = {r.id: (r.title_zh, r.severity) for r in RULES}
    t = Table(title=f"预警汇总 Warnings {res.snapshot_date} (policy {res.policy_version})")
    for col in ("rule", "规则", "级别", "warnings"):
        t.add_column(col, justify="right" if col == "warnings" else "left")
    counts = dict(snapshot.count_by(w, "rule_id")) if w.num_rows else {}
    for r in RULES:
        t.add_row(r.id, titles[r.id][0], titles[r.id][1], f"{counts.get(r.id, 0):,}")
    t.add_row(Text("total", "bold"), "", "", f"{w.num_rows:,}")
    con.print(t)
    streets = region_names()  # a street no imported list names shows as its county and code
    t2 = Table(title="按街道 by street")
    for col in ("street", "街道", "warnings", "households"):
        t2.add_column(col, justify="right" if col in ("warnings", "households") else "left")
    for code, n in sorted(snapshot.count_by(w, "street_code")):
        hh = len(set(w.filter(pc.equal(w["street_code"], code))["household_no"].to_pylist()))
        t2.add_row(code, streets.get(code, ""), f"{n:,}", f"{hh:,}")
    con.print(t2)


def cmd_run(args: argparse.Namespace) -> int:
    from quality import policy

    s = _settings(args)
    con = _console()
    kafka = bool(s.kafka_bootstrap) and not args.no_kafka
    store = _open_store(s, create=kafka, why=NOTHING_TO_INGEST)
    # the policy before anything is ingested: the file given exists and parses, and matches the
    # county of the data already in the store (a first run's data is checked after its ingest)
    given = policy.load(args.policy) if args.policy else None
    policies_for_data(store, args.snapshot_date, given, required=False)
    accept = args.accept_unhealthy or []
    report, cleaned = run_ingest(s, store, kafka=kafka)
    ok = print_summary(report, cleaned)
    _nothing_waiting(report, store, kafka)
    refused = [f for f in report.unhealthy if f not in accept]
    if refused:
        raise _Unhealthy(f"not published: unhealthy feed(s) {', '.join(refused)} (see above); fix them, or "
                         "publish on their previous state with --accept-unhealthy FEED")
    # before the build: never 30 s to learn it is the wrong one; a register spanning counties: one per county
    pol = policies_for_data(store, args.snapshot_date, given)
    res = run_build(s, store, args.snapshot_date, pol, accept, full_gate=args.full_gate, full_build=args.full_build)
    if res.accepted_unhealthy:
        _say(con, (f"published on the previous clean state of unhealthy feed(s) {', '.join(res.accepted_unhealthy)} "
                   "(--accept-unhealthy)", "yellow"), ": recorded in the manifest, and warnings of rules reading "
             "them list them in stale_inputs")
    if res.quality is not None:
        con.print(f"data quality: {res.quality.summary()}\nData Docs: {store.url}/docs/quality/ ({len(res.docs)} files)")
    print_warnings(res, con)
    con.print(f"published snapshot {args.snapshot_date}: {res.persons:,} persons, {res.households:,} households, "
              f"{res.warnings.num_rows:,} warnings"
              + (f" (incremental build: {res.households_reevaluated:,} households re-evaluated)"
                 if res.build_mode == "incremental" else "")
              + f"; {res.published_line(store.url)}"
              + (f"; {res.kafka_published:,} warnings produced to hub.warnings.v1" if res.kafka_published else ""))
    return EXIT_OK if ok else EXIT_FAILURE


class _Unhealthy(Exception):
    """The data, not the run, needs attention: one line on stderr, exit 3."""


def cmd_warnings(args: argparse.Namespace) -> int:
    from safetynet.publish import export, snapshot

    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".xlsx"):
        raise UsageError(f"--out {out}: export to .csv or .xlsx, not {out.suffix or 'a file without suffix'}")
    s = _settings(args)
    store = open_existing_store(s)
    w = snapshot.read(store, "warnings", args.snapshot_date, identified=True,  # masked on export
                      version=args.version)
    n = export.write(w, out)
    _console().print(f"wrote {n:,} warnings of snapshot {w['snapshot_date'][0] if n else args.snapshot_date} "
                     f"to {out}")
    return EXIT_OK


def cmd_snapshots_list(args: argparse.Namespace) -> int:
    """Published snapshot dates and their versions: the current one, rows, policy, inputs, quality."""
    import datetime as _dt

    from rich.table import Table

    from safetynet.core import paths
    from safetynet.publish import snapshot

    store = open_existing_store(_settings(args))
    days = [args.date] if args.date else snapshot.snapshots(store)
    out = []
    for day in days:
        try:
            current = snapshot.pointer(store, day)["version"]
        except FileNotFoundError:
            published = ", ".join(d.isoformat() for d in snapshot.snapshots(store)) or "none"
            raise UsageError(f"no published snapshot {day} in {store.url} (published: {published})") from None
        mtimes = {e.path: e.mtime_ns for e in store.list(paths.snapshot_versions(day), ".json")}
        for v in snapshot.versions(store, day) or [current]:
            m = snapshot.manifest(store, day, v)
            q = m.get("quality") or {}
            inputs = m.get("inputs") or {}
            t = mtimes.get(paths.snapshot_version(day, v))
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
        _emit(json.dumps(out, ensure_ascii=False, indent=1))
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

    from safetynet.publish import snapshot
    from safetynet.review import cli as review_cli
    from safetynet.review import models as m

    if args.keep < 1:
        raise UsageError(f"--keep {args.keep}: keep at least 1 version per date")
    s = _settings(args)
    store = open_existing_store(s)
    # a database named on the command line must be there: an empty one would protect no decision
    eng = review_cli._engine(s, create=not args.db)
    with eng.connect() as c:
        refs = {(r.snapshot_date, r.snapshot_version) for r in c.execute(
            select(m.actions.c.snapshot_date, m.actions.c.snapshot_version).distinct()
            .where(m.actions.c.snapshot_version.is_not(None)))}
        refs |= {(r.snapshot_date, r.version) for r in c.execute(select(m.snapshots.c.snapshot_date, m.snapshots.c.version))
                 if r.version is not None}
    url = eng.url.render_as_string(hide_password=True)
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


def cmd_store_verify(args: argparse.Namespace) -> int:
    """Every zone's files against the catalog; with --repair, rebuild what can be rebuilt."""
    from safetynet import verify

    s = _settings(args)
    store = open_existing_store(s)
    with progress_bar(not args.no_progress, None, "verify") as bar:
        rep = verify.verify(s, store, repair=args.repair, progress=bar)
    if args.json:
        print(json.dumps(rep.as_dict(), ensure_ascii=False, indent=1))
    else:
        verify.print_report(rep, _console())
    return EXIT_OK if rep.ok else EXIT_UNHEALTHY


def regions_import(store, data: bytes, source: str):
    import getpass

    from safetynet.intake import regions

    try:
        by = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        by = ""
    return regions.import_list(store, data, source, by=by)


def _print_import(res, store, con) -> None:
    from safetynet.intake import regions

    m = res.manifest
    what = (f"{m['county']} {m['county_name']}: {m['rows']['streets']:,} streets/towns, "
            f"{m['rows']['communities']:,} communities/villages")
    if not res.changed:
        con.print(f"region list {what} — unchanged: {m['source']['file']} (sha256 {m['source']['sha256'][:12]}…) "
                  f"is the list in force since {m['imported_at']}")
        return
    con.print(f"imported the region list {what} from {m['source']['file']} ({m['source']['encoding']}, sha256 "
              f"{m['source']['sha256'][:12]}…)\n  stored: {store.uri(regions.manifest_path(m['county']))}")
    if res.replaced:
        r = res.replaced
        con.print(f"  it replaces the list imported {r['imported_at']} from {r['source']['file']} "
                  f"({r['rows']['streets']:,} streets/towns, {r['rows']['communities']:,} communities/villages)")


def _region_code(v: str) -> str:
    """A region code of 2, 4, 6, 9 or 12 digits (a published 12-digit code is normalised)."""
    from safetynet.intake.regions import normalise_code

    v = v.strip()
    if v.isdigit() and len(v) in (2, 4):
        return v
    code = normalise_code(v) if v.isdigit() else None
    if code is None:
        raise argparse.ArgumentTypeError(f"not a region code of 2, 4, 6, 9 or 12 digits: {v!r}")
    if len(code) == 6 and code.endswith("00") and not code.endswith("0000"):
        return code if code in _national_counties() else code[:4]  # 430100 = 长沙市, 441900 = 东莞市 (a county too)
    return code[:2] if len(code) == 6 and code.endswith("0000") else code


def _national_counties() -> set[str]:
    from safetynet.intake.regions import national

    return {c for c, r in national().items() if r.level == "county"}


#: what is one level below a code of this length
LEVEL_PLURAL = {2: "prefectures", 4: "counties", 6: "streets/towns", 9: "communities/villages"}


def cmd_regions(args: argparse.Namespace) -> int:
    """Import a county's street and community list; list the imported ones; show a code."""
    from safetynet.intake import regions

    s = _settings(args)
    con = _console()
    if args.action == "import":
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"{path}: no such file" + (" (a directory)" if path.is_dir() else ""))
        data = path.read_bytes()
        regions.parse_list(data, str(path))  # a bad file is refused before a store is made for it
        store = _open_store(s, create=True)
        _print_import(regions_import(store, data, str(path)), store, con)
        return EXIT_OK
    store = open_existing_store(s, "; `safetynet regions import FILE` (or ingest, run, demo) makes one")
    names = regions.region_names()
    if args.action == "list":
        ref = regions.national_edition()
        lists = regions.imported_lists(store)
        if args.json:
            _emit(json.dumps({"national": ref, "imported": list(lists.values())}, ensure_ascii=False, indent=1))
            return EXIT_OK
        rows = ref.get("rows", {})
        con.print(f"national reference: {ref.get('edition', '?')} — {rows.get('province', 0)} provinces, "
                  f"{rows.get('prefecture', 0)} prefectures, {rows.get('county', 0):,} counties "
                  f"({ref.get('package', '?')})")
        if not lists:
            con.print(f"no county list imported in {store.url}: streets and communities show as their county and "
                      "code (`safetynet regions import FILE`)")
            return EXIT_OK
        from rich.table import Table

        t = Table(title=f"已导入的区划 Imported county lists · {store.url}")
        for col in ("county", "name", "streets/towns", "communities/villages", "imported (UTC)", "by", "source file",
                    "sha256", "versions"):
            right = col in ("streets/towns", "communities/villages", "versions")
            t.add_column(col, justify="right" if right else "left")
        for m in lists.values():
            t.add_row(m["county"], m["county_name"], f"{m['rows']['streets']:,}", f"{m['rows']['communities']:,}",
                      m["imported_at"], m.get("imported_by", ""), m["source"]["file"], m["source"]["sha256"][:12],
                      str(1 + len(m.get("history", []))))
        con.print(t)
        return EXIT_OK
    code = args.code
    if code not in names:
        near = names.ancestor(code)
        raise UsageError(f"no region {code} in the national reference or the lists imported in {store.url}"
                         + (f"; it would show as “{names.get(code)}”" if near else "")
                         + ("" if len(code) < 9 or code[:6] in names.imported else
                            f" — no list of county {code[:6]} is imported (`safetynet regions import FILE`)"))
    level = regions.LEVEL_OF_LENGTH[len(code)]
    con.print(f"{code} {names[code]} ({level} {regions.LEVEL_ZH[level]})")
    above = [c for c in dict.fromkeys((code[:2], code[:4], code[:6], code[:9])) if len(c) < len(code) and c in names]
    con.print("  " + " › ".join(f"{names[c]} {c}" for c in [*above, code]))
    lst = names.imported.get(code[:6])
    listed = (f"the list of county {code[:6]} imported {lst['imported_at']} from {lst['source']['file']} "
              f"(sha256 {lst['source']['sha256'][:12]}…)") if lst else ""
    if len(code) >= 9:
        con.print(f"  source: {listed}")
    else:
        con.print(f"  source: national reference, {regions.national_edition().get('edition', '?')}")
        if len(code) == 6:
            con.print(f"  streets and communities: {listed or 'no list imported (`safetynet regions import FILE`)'}")
    kids = names.children(code)
    if kids:
        con.print(f"{LEVEL_PLURAL[len(code)]} ({len(kids):,}):")
        for k in kids:
            con.print(f"  {k} {names[k]}")
    return EXIT_OK


def cmd_rules_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from quality.rules import RULES, SEVERITY_ZH

    t = Table(title="预警规则 Warning rules")
    for col in ("rule id", "ver", "severity", "kind", "title", "policy parameters"):
        t.add_column(col, no_wrap=col == "rule id")
    for r in RULES:
        t.add_row(r.id, str(r.version), f"{r.severity} {SEVERITY_ZH.get(r.severity, '')}", r.kind, r.title_zh,
                  ", ".join(r.params))
    _console().print(t)
    return EXIT_OK


def cmd_rules_backtest(args: argparse.Namespace) -> int:
    """Backtest a policy file on published snapshots: prints per rule kept/added/removed, writes
    the differences as CSV; publishes nothing."""
    from quality import policy
    from safetynet.publish import backtest, snapshot

    s = _settings(args)
    pol = policy.load(args.policy)
    rules = backtest.select_rules(args.rule)
    store = open_existing_store(s)
    published = snapshot.snapshots(store)
    missing = [d for d in args.snapshot_date if d not in published]
    if missing:
        raise UsageError(f"no published snapshot for {', '.join(d.isoformat() for d in missing)}; published: "
                         f"{', '.join(d.isoformat() for d in published) or 'none'}")
    dates = list(dict.fromkeys(args.snapshot_date))
    out_dir = Path(args.out)
    results, files = [], []
    with progress_bar(s.progress, len(dates), "回测 backtest") as adv:
        for d in dates:
            def step(what: str, d: dt.date = d) -> None:
                adv(0, f"{d} {what}")

            res = backtest.backtest(store, d, pol, rules, include_retired=not args.rule,
                                    memory_limit=s.duckdb_memory_limit, step=step)
            files.append(backtest.write_csv(res, out_dir))
            results.append(res)
            adv(1, d.isoformat())
    con = _console(markup=True)  # backtest.render writes markup and escapes its data
    for res in results:
        backtest.render(res, con)
    for res, f in zip(results, files, strict=True):
        con.print(f"{res.snapshot_date}: {len(res.changes):,} differences (added/removed) → {f}", markup=False)
    con.print("nothing was published or written to the store", markup=False)
    return EXIT_OK


# ---- entry point ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="safetynet", description="兜底保障数据枢纽 Safety-Net Data Hub",
                epilog="exit codes: 0 ok · 1 failure · 2 usage or configuration · 3 data unhealthy (nothing new "
                "published) · 4 busy (another ingest holds a feed)")
    _common(p, top=True)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def store_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--store", help="store: a path, file://…, or s3://bucket[/prefix] (default: $SAFETYNET_STORE, "
                        "./var/store)")
        sp.add_argument("--kafka", help="Kafka bootstrap host:port (default: $SAFETYNET_KAFKA_BOOTSTRAP)")
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")

    sp = sub.add_parser("feeds", help="list the department feeds and their contracts; profile a department's export")
    sp.add_argument("--json", action="store_true", help="the contracts as JSON")
    sp.add_argument("--topics", action="store_true", help="the Kafka topics of every feed and the hub, one a line")
    sp.set_defaults(func=cmd_feeds)
    fsub = sp.add_subparsers(dest="action", required=False, metavar="ACTION")
    fp = fsub.add_parser("profile", help="profile export files (or a sample of the topic) against a feed's contract "
                         "and suggest a mapping file; ingests nothing")
    fp.add_argument("paths", nargs="*", metavar="PATH", help="CSV/XLSX/JSON Lines files (or folders) of the department")
    fp.add_argument("--feed", required=True, type=_feed_id, help="feed id, e.g. housing.property")
    fp.add_argument("--kafka", nargs="?", const="", default=None, metavar="HOST:PORT",
                    help="profile a sample of the feed's topic instead (default: $SAFETYNET_KAFKA_BOOTSTRAP)")
    fp.add_argument("--sample", type=int, default=5000, help="messages to sample from the topic (default 5000)")
    fp.add_argument("--out", help="suggested mapping file (default: ./<feed>.suggested.toml)")
    fp.set_defaults(func=cmd_feeds_profile)
    fr = fsub.add_parser("release", help="accept a feed's held (unhealthy) deliveries as they are: their accepted "
                         "records join clean/, and the feed counts as healthy again")
    fr.add_argument("feed", metavar="FEED", type=_feed_id, help="feed id, e.g. medical_insurance.claim")
    store_opts(fr)
    fr.set_defaults(func=cmd_feeds_release)

    sp = sub.add_parser("check-config", help="show settings in force and check store and Kafka")
    store_opts(sp)
    sp.set_defaults(func=cmd_check_config)

    for ep in entry_points(group="safetynet.commands"):  # commands of other packages (the demo's)
        ep.load()(sub, store_opts)

    sp = sub.add_parser("run", help="ingest, clean, quality gate, build, warnings and publish one snapshot")
    store_opts(sp)
    sp.add_argument("--snapshot-date", type=_date, required=True, metavar="YYYY-MM-DD",
                    help="facts before this day")
    sp.add_argument("--policy", help="policy file (default: quality/policy/<county>-<year>.toml; a register spanning "
                    "counties is built per county: the file given for its own county, the shipped ones for the others)")
    sp.add_argument("--no-kafka", action="store_true", help="file drops only")
    sp.add_argument("--wait-lease", type=float, metavar="SECONDS",
                    help="wait this long for another ingest holding a feed (default: $SAFETYNET_LEASE_WAIT_S, 0: exit 4)")
    sp.add_argument("--accept-unhealthy", action="append", metavar="FEED", type=_feed_id,
                    help="publish although this feed is unhealthy, on its previous clean state (recorded in the "
                         "manifest; its rules' warnings list it in stale_inputs); repeatable")
    sp.add_argument("--full-gate", action="store_true",
                    help="run every feed's quality suite, also those whose clean data did not change since their "
                    "recorded result (default: only the changed feeds')")
    sp.add_argument("--full-build", action="store_true",
                    help="build the monitoring tables and warnings in full (default: incrementally on top of the "
                    "date's current version when few households are touched by new facts; the results are the same)")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("snapshots", help="published snapshots and their versions: list them, prune old versions")
    ssub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    sl = ssub.add_parser("list", help="dates, versions (● current), rows, policy, inputs and quality of each version")
    store_opts(sl)
    sl.add_argument("--date", type=_date, metavar="YYYY-MM-DD", help="only this snapshot date")
    sl.add_argument("--json", action="store_true")
    sl.set_defaults(func=cmd_snapshots_list)
    sr = ssub.add_parser("prune", help="delete old versions: keep the newest N per date, the current one and "
                         "every version a review decision references")
    store_opts(sr)
    sr.add_argument("--keep", type=int, required=True, help="versions to keep per date (≥ 1)")
    sr.add_argument("--db", type=_db, help="review database: a file path (SQLite) or URL (default: "
                    "$SAFETYNET_REVIEW_DB or SQLite in the work dir)")
    sr.add_argument("--dry-run", action="store_true", help="show what would be deleted")
    sr.set_defaults(func=cmd_snapshots_prune)

    sp = sub.add_parser("warnings", help="published warnings")
    wsub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    we = wsub.add_parser("export", help="export a snapshot's warnings to .csv (UTF-8 with BOM) or .xlsx")
    store_opts(we)
    we.add_argument("--snapshot-date", type=_date, metavar="YYYY-MM-DD", help="default: the latest published snapshot")
    we.add_argument("--version", type=int, help="a version of that date (default: its current one)")
    we.add_argument("--out", required=True, help="file ending .csv or .xlsx")
    we.set_defaults(func=cmd_warnings)

    sp = sub.add_parser("policy", help="policy parameters per region and year (quality/policy/)")
    psub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    pi = psub.add_parser("init", help="write a complete policy file for a new region with default thresholds, "
                         "every parameter explained")
    pi.add_argument("--region", required=True, type=_county, help="6-digit county code (GB/T 2260)")
    pi.add_argument("--year", type=int, required=True)
    pi.add_argument("--urban-dibao", type=float, required=True, help="城市低保标准 元/人/月")
    pi.add_argument("--rural-dibao", type=float, required=True, help="农村低保标准 元/人/月")
    pi.add_argument("--name", help="region name, e.g. 长沙市天心区")
    pi.add_argument("--out", required=True, help="file to write (quality/policy/<region>-<year>.toml to ship it)")
    pi.add_argument("--force", action="store_true")
    ps = psub.add_parser("show", help="validate and print the policy in force for a region and year, or a file")
    ps.add_argument("--region", default="430103", type=_region, help="region code: its county's policy (default 430103)")
    ps.add_argument("--year", type=int, default=2026)
    ps.add_argument("--file", help="a policy file instead")
    sp.set_defaults(func=cmd_policy)

    sp = sub.add_parser("rules", help="the warning rules: list them; backtest a new policy file on published snapshots")
    rsub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    rl = rsub.add_parser("list", help="every warning rule: id, version, severity, kind, title, policy parameters")
    rl.set_defaults(func=cmd_rules_list)
    rb = rsub.add_parser("backtest", help="rebuild published snapshots on their published inputs with a new policy "
                         "file and compare with the published warnings (kept/added/removed per rule); publishes "
                         "nothing")
    rb.add_argument("--store", help="store: a path, file://…, or s3://bucket[/prefix] (default: $SAFETYNET_STORE)")
    rb.add_argument("--no-progress", action="store_true", help="no progress bar")
    rb.add_argument("--policy", required=True, help="the new policy file (TOML)")
    rb.add_argument("--rule", action="extend", nargs="+", metavar="ID",
                    help="only these rule ids (default: every rule; see `safetynet rules list`)")
    rb.add_argument("--snapshot-date", type=_date, nargs="+", required=True, metavar="D",
                    help="published snapshot date(s) YYYY-MM-DD")
    rb.add_argument("--out", default=".", metavar="DIR",
                    help="directory for the differences, one backtest-<D>.csv per date (default: .)")
    rb.set_defaults(func=cmd_rules_backtest)

    sp = sub.add_parser("regions", help="region names: import a county's street and community list; list the "
                        "imported ones; show a code")
    rgsub = sp.add_subparsers(dest="action", required=True, metavar="ACTION")
    ri = rgsub.add_parser("import", help="import a county's published list of streets/towns (乡镇街道) and "
                          "communities/villages (居委会/村委会): a CSV of code,name (UTF-8 or GBK, header optional); "
                          "it replaces the county's previous list")
    ri.add_argument("file", metavar="FILE", help="the county's list, e.g. 430103001000,坡子街街道 and "
                    "430103001001,西牌楼社区 one a line")
    store_opts(ri)
    ri.set_defaults(func=cmd_regions)
    rli = rgsub.add_parser("list", help="the national reference's edition and every imported county list: counts, "
                           "when, from which file")
    store_opts(rli)
    rli.add_argument("--json", action="store_true", help="the manifests as JSON")
    rli.set_defaults(func=cmd_regions)
    rsh = rgsub.add_parser("show", help="a code's name, its parents and the regions under it")
    rsh.add_argument("code", metavar="CODE", type=_region_code, help="2 to 12 digits: 43, 4301, 430103, 430103001, "
                     "430103001001 (or 430103001000)")
    store_opts(rsh)
    rsh.set_defaults(func=cmd_regions)

    sp = sub.add_parser("store", help="the store itself: verify every raw/, quarantine/, clean/ and published file")
    stsub = sp.add_subparsers(dest="action", required=True)
    sv = stsub.add_parser("verify", help="check every raw/, quarantine/, clean/ and published file against the "
                          "checksums and row counts in the catalog; --repair rebuilds what can be rebuilt")
    store_opts(sv)
    sv.add_argument("--repair", action="store_true",
                    help="re-fetch damaged Kafka batches from their recorded offsets, re-read damaged drop files "
                    "from landing/, rebuild clean/ and published files; name exactly what is lost")
    sv.add_argument("--json", action="store_true", help="the report as JSON")
    sv.set_defaults(func=cmd_store_verify)

    sp = sub.add_parser("ingest", help="ingest everything waiting on the topics and in landing/, then clean")
    store_opts(sp)
    sp.add_argument("--feed", action="append", type=_feed_id, help="only this feed id (repeatable)")
    sp.add_argument("--no-kafka", action="store_true")
    sp.add_argument("--no-files", action="store_true")
    sp.add_argument("--wait-lease", type=float, metavar="SECONDS",
                    help="wait this long for another ingest holding a feed (default: $SAFETYNET_LEASE_WAIT_S, 0: exit 4)")
    sp.set_defaults(func=cmd_ingest)

    from safetynet.review import cli as review_cli

    review_cli.add_parsers(sub, _settings)
    for child in _subparsers(p):  # --debug and -v after the subcommand too
        _common(child)
    return p


#: (module, class, exit code, prefix of the line) of the errors ordinary use meets: first those with a
#: code or prefix of their own, then by how they are handled (`schemas.errors`) — a `ConfigError`
#: (policy, settings, mapping, region list, unknown rule, no such snapshot …) exits 2, a `DataError` 3,
#: a `TransientError` (`StoreError`, `LeaseLost`) 1
_KNOWN_ERRORS = (
    ("quality.gate", "QualityGateFailed", EXIT_UNHEALTHY, "not published: "),
    ("safetynet.core.lease", "LeaseBusy", EXIT_BUSY, "not started: "),
    ("safetynet.review.auth", "AccountError", EXIT_USAGE, ""), ("safetynet.demo.broker", "BrokerError", EXIT_FAILURE, ""),
    ("schemas.errors", "ConfigError", EXIT_USAGE, ""), ("schemas.errors", "DataError", EXIT_UNHEALTHY, ""),
    ("schemas.errors", "TransientError", EXIT_FAILURE, ""),
)


def _expected(e: BaseException) -> tuple[int, str] | None:
    """(exit code, one line) for the errors a user meets in ordinary use — their own mistakes (2),
    data that needs attention (3), a busy feed (4), a store or broker that failed (1) — or None for
    a bug. A class is looked up only if its module is loaded: an error cannot come from one that is not."""
    def isa(module: str, name: str) -> bool:
        cls = getattr(sys.modules.get(module), name, None)
        return isinstance(cls, type) and isinstance(e, cls)

    if isinstance(e, UsageError):
        return EXIT_USAGE, str(e)
    if isinstance(e, _Unhealthy):
        return EXIT_UNHEALTHY, str(e)
    if isa("connectors.mapping", "MappingError"):
        return EXIT_USAGE, f"{e}\nnothing was ingested; fix the mapping file(s) (see `safetynet feeds profile`)"
    if isa("pydantic", "ValidationError"):
        from safetynet.core.settings import describe_errors

        return EXIT_USAGE, f"configuration: {describe_errors(e)}"
    for module, name, code, prefix in _KNOWN_ERRORS:
        if isa(module, name):
            return code, prefix + (getattr(e, "headline", None) or str(e))  # the gate's: one line
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING)
    from safetynet.core import logmask

    logmask.install()  # last line of defence: nothing ID-shaped leaves in a log line
    if not args.debug:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # an unguarded write to a reader that went away (`| head`): quietly, as SIGPIPE
        _stdout_gone()
        return EXIT_PIPE
    except Exception as e:
        if args.debug:
            raise
        known = _expected(e)
        code, line = known or (EXIT_FAILURE, f"error: {type(e).__name__}: {e}  (unexpected — run with --debug "
                                             "for the traceback)")
        try:
            print(f"safetynet: {logmask.mask_text(line)}", file=sys.stderr)
        except BrokenPipeError:
            pass
        return code


def entry() -> None:
    """The console script: exit without interpreter teardown, where DuckDB's bindings print
    spurious leak warnings; logs and output are flushed first."""
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):
            if stream is sys.stdout:
                _stdout_gone()
    os._exit(code)


if __name__ == "__main__":
    # `python -m safetynet.cli`: run the module as imported, so that the errors other modules raise
    # (`from safetynet.cli import UsageError`) are the classes `main` knows, not copies in __main__
    from safetynet.cli import entry as _entry

    _entry()
