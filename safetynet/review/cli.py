"""`safetynet serve`, `safetynet users add|list|disable|enable|passwd`, `safetynet review load|migrate|verify-audit`."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import secrets
import sys

from safetynet.review import auth, db

log = logging.getLogger(__name__)

DEMO_USERS = (  # username, role, region prefix, display name
    ("demo_admin", "admin", "", "演示·系统管理员"),
    ("demo_county", "county_reviewer", "430103", "演示·天心区审核员"),
    ("demo_street", "street_worker", "430103001", "演示·坡子街街道工作人员"),
    ("demo_community", "community_assistant", "430103001001", "演示·西牌楼社区协理员"),
    ("demo_auditor", "auditor", "430103", "演示·审计员"),
)


def _engine(settings, create: bool = True):
    """The review database, migrated. `create=False`: a SQLite file that is not there is the
    user's mistake (a typo'd --db), not a database to make — commands that only read or change
    existing accounts never create one."""
    url = db.url_of(settings)
    path = url.removeprefix("sqlite:///").split("?")[0] if url.startswith("sqlite:///") else ""
    if path and path != ":memory:" and not os.path.exists(path):
        if not create:
            from safetynet.cli import UsageError

            raise UsageError(f"no review database at {path} — check --db or SAFETYNET_REVIEW_DB; `safetynet "
                             "review migrate`, `users add` and `demo` create one")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    eng = db.engine_for(url)
    db.migrate(eng)
    return eng


def add_parsers(sub, settings_of) -> None:
    from safetynet.cli import _date, _db

    db_help = "review database: a file path (SQLite) or a URL (default: $SAFETYNET_REVIEW_DB or SQLite in the work dir)"

    def db_opt(p, group: bool) -> None:
        # on a group and on each of its subcommands: `users --db F list` and `users list --db F` alike
        p.add_argument("--db", type=_db, help=db_help, default=None if group else argparse.SUPPRESS)

    def store_opt(p, group: bool) -> None:
        p.add_argument("--store", help="store with the published snapshots (default: $SAFETYNET_STORE)",
                       default=None if group else argparse.SUPPRESS)

    sp = sub.add_parser("serve", help="the review app for monitoring staff (web pages + JSON API)")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8000)
    store_opt(sp, True)
    db_opt(sp, True)
    sp.add_argument("--watch-seconds", type=float, default=2.0,
                    help="look at the store's snapshot pointers this often for a newer published version (default 2; "
                    "0: only at start and on hub.snapshots.v1 notices). With Kafka configured, a publish's notice "
                    "wakes the app at once")
    sp.add_argument("--poll-minutes", type=float, default=None, help=argparse.SUPPRESS)  # before --watch-seconds
    sp.set_defaults(func=lambda a: cmd_serve(a, settings_of(a)))

    sp = sub.add_parser("users", help="review app accounts")
    db_opt(sp, True)
    us = sp.add_subparsers(dest="users_cmd", required=True, metavar="ACTION")
    a = us.add_parser("add", help="add an account (the password is asked for, or read from $SAFETYNET_NEW_PASSWORD)")
    a.add_argument("username")
    a.add_argument("--role", required=True, choices=sorted(auth.ROLES))
    a.add_argument("--region", required=True, help="region code prefix: 6 county, 9 street/town, 12 community/village "
                   "digits ('' for an admin of everything)")
    a.add_argument("--name", help="display name (中文姓名或岗位)")
    db_opt(a, False)
    db_opt(us.add_parser("list", help="list accounts"), False)
    for verb in ("disable", "enable"):
        d = us.add_parser(verb, help=f"{verb} an account" + (" (its sessions end at once)" if verb == "disable" else ""))
        d.add_argument("username")
        db_opt(d, False)
    sp.set_defaults(func=lambda a: cmd_users(a, settings_of(a)))

    sp = sub.add_parser("review", help="review database: load snapshots, migrate, verify the audit chain")
    store_opt(sp, True)
    db_opt(sp, True)
    rs = sp.add_subparsers(dest="review_cmd", required=True, metavar="ACTION")
    ld = rs.add_parser("load", help="load a published snapshot (default: the latest) into the review database")
    ld.add_argument("--date", type=_date, metavar="YYYY-MM-DD", help="snapshot date (default: the latest)")
    store_opt(ld, False)
    db_opt(ld, False)
    for name, hlp in (("migrate", "bring the review database schema up to date (Alembic)"),
                      ("verify-audit", "verify the audit log's hash chain")):
        c = rs.add_parser(name, help=hlp)
        if name != "migrate":
            store_opt(c, False)
        db_opt(c, False)
    sp.set_defaults(func=lambda a: cmd_review(a, settings_of(a)))


def load_latest(settings, engine, quiet: bool = False):
    """Load the newest published snapshot; None (with a warning unless `quiet`) when there is none
    yet — or no store yet: it is never created here (`serve` waits for it to appear)."""
    from safetynet.cli import store_exists, store_location
    from safetynet.core.store import open_store
    from safetynet.review.load import load_snapshot

    if not store_exists(settings):
        if not quiet:
            log.warning("review: no store at %s yet (check --store or SAFETYNET_STORE); nothing loaded",
                        store_location(settings))
        return None
    store = open_store(settings)
    from safetynet.intake import regions

    regions.use_store(store)  # the app names regions from this store's imported county lists
    try:
        return load_snapshot(engine, store)
    except FileNotFoundError as e:
        if not quiet:
            log.warning("review: %s", e)
        return None


def cmd_serve(args, settings) -> int:
    import uvicorn

    from safetynet.cli import store_exists
    from safetynet.core.store import open_store
    from safetynet.review.app import create_app
    from safetynet.review.watch import SnapshotWatcher

    engine = _engine(settings)
    res = load_latest(settings, engine)
    if res is not None:
        print(f"snapshot {res.snapshot_date}: " + (f"loaded {res.warnings:,} warnings ({res.new_cases:,} new cases, "
                                                   f"{res.reopened:,} re-opened)" if res.loaded else "already loaded"))
    watch_s = args.watch_seconds if args.poll_minutes is None else args.poll_minutes * 60
    SnapshotWatcher(settings, load=lambda: load_latest(settings, engine, quiet=True),
                    store=lambda: open_store(settings) if store_exists(settings) else None,
                    watch_seconds=watch_s).start()
    app = create_app(engine, session_hours=settings.review_session_hours,
                     secure_cookies=settings.review_secure_cookies)
    print(f"review app: http://{args.host}:{args.port}/  (API docs: /api/docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def cmd_users(args, settings) -> int:
    from safetynet.cli import UsageError, _console, _emit

    engine = _engine(settings, create=args.users_cmd == "add")
    if args.users_cmd == "add":
        pw = os.environ.get("SAFETYNET_NEW_PASSWORD")
        if not pw:
            if not sys.stdin.isatty():
                raise UsageError("no password: set SAFETYNET_NEW_PASSWORD, or run `users add` on a terminal to type it")
            pw = getpass.getpass("密码（至少 10 位）：")
        auth.add_user(engine, args.username, pw, args.role, args.region, args.name)  # AccountError: exit 2
        _emit(f"added {args.username} ({auth.ROLES[args.role].title_zh}, region {args.region or '全部'})")
    elif args.users_cmd == "list":
        from rich.table import Table

        # a header and aligned columns (rich measures CJK as two columns), no box: one account a line for grep/awk
        t = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        for col in ("username", "role", "角色", "region", "status", "name 姓名/岗位"):
            t.add_column(col, no_wrap=True)
        for u in auth.list_users(engine):
            t.add_row(u["username"], u["role"], auth.ROLES[u["role"]].title_zh, u["region_prefix"] or "*",
                      "active" if u["active"] else "DISABLED", u["display_name"] or "")
        _console().print(t)
    else:
        auth.set_active(engine, args.username, args.users_cmd == "enable")  # AccountError: exit 2
        _emit(f"{args.users_cmd}d {args.username}")
    return 0


def cmd_review(args, settings) -> int:
    from safetynet.cli import UsageError, _emit, open_existing_store
    from safetynet.review import audit

    engine = _engine(settings, create=args.review_cmd != "verify-audit")
    if args.review_cmd == "migrate":
        _emit(f"review database at head: {engine.url.render_as_string(hide_password=True)}")
    elif args.review_cmd == "load":
        from safetynet.review.load import load_snapshot

        store = open_existing_store(settings)
        try:
            res = load_snapshot(engine, store, args.date)
        except FileNotFoundError as e:  # no published snapshot (of that date)
            raise UsageError(str(e)) from None
        _emit(f"snapshot {res.snapshot_date}: " + (
            f"{res.warnings:,} warnings, {res.new_cases:,} new cases, {res.reopened:,} re-opened, "
            f"{res.kept_closed:,} stay dismissed/closed" if res.loaded else "already loaded (same manifest)"))
    else:
        c = audit.verify(engine)
        _emit(f"audit chain: {'OK' if c.ok else 'BROKEN'} ({c.entries:,} entries verified)"
              + ("" if c.ok else f"; first bad entry {c.first_bad_id}: {c.reason}"))
        return 0 if c.ok else 1
    return 0


def demo_users(engine) -> list[tuple[str, str, str, str]]:
    """Create (or reset) one demo account per role; returns (username, password, role title, region)."""
    out = []
    for username, role, region, name in DEMO_USERS:
        pw = "demo-" + secrets.token_urlsafe(6)
        try:
            auth.add_user(engine, username, pw, role, region, name)
        except auth.AccountError:
            auth.set_password(engine, username, pw)
            auth.set_active(engine, username, True)
        from safetynet.intake.regions import region_names

        out.append((username, pw, auth.ROLES[role].title_zh, f"{region} {region_names().get(region, '')}".strip()
                    if region else "全部"))
    return out


