"""`safetynet serve`, `safetynet users add|list|disable|enable|passwd`, `safetynet review load|migrate|verify-audit`."""

from __future__ import annotations

import getpass
import logging
import os
import secrets
import sys
import threading

from safetynet.review import auth, db

log = logging.getLogger(__name__)

DEMO_USERS = (  # username, role, region prefix, display name
    ("demo_admin", "admin", "", "演示·系统管理员"),
    ("demo_county", "county_reviewer", "430103", "演示·天心区审核员"),
    ("demo_street", "street_worker", "430103001", "演示·坡子街街道工作人员"),
    ("demo_community", "community_assistant", "430103001001", "演示·西牌楼社区协理员"),
    ("demo_auditor", "auditor", "430103", "演示·审计员"),
)


def _engine(settings):
    eng = db.engine_for(db.url_of(settings))
    db.migrate(eng)
    return eng


def add_parsers(sub, settings_of) -> None:
    sp = sub.add_parser("serve", help="the review app for monitoring staff (web pages + JSON API)")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8000)
    sp.add_argument("--store", help="store with the published snapshots (default: $SAFETYNET_STORE)")
    sp.add_argument("--db", help="review database URL (default: $SAFETYNET_REVIEW_DB or SQLite in the work dir)")
    sp.add_argument("--poll-minutes", type=float, default=5.0,
                    help="look for a newer published snapshot this often (0: only at start)")
    sp.set_defaults(func=lambda a: cmd_serve(a, settings_of(a)))

    sp = sub.add_parser("users", help="review app accounts")
    sp.add_argument("--db", help="review database URL")
    us = sp.add_subparsers(dest="users_cmd", required=True)
    a = us.add_parser("add", help="add an account (the password is asked for, or read from $SAFETYNET_NEW_PASSWORD)")
    a.add_argument("username")
    a.add_argument("--role", required=True, choices=sorted(auth.ROLES))
    a.add_argument("--region", required=True, help="region code prefix: 6 county, 9 street/town, 12 community/village "
                   "digits ('' for an admin of everything)")
    a.add_argument("--name", help="display name (中文姓名或岗位)")
    us.add_parser("list", help="list accounts")
    for verb in ("disable", "enable"):
        d = us.add_parser(verb, help=f"{verb} an account" + (" (its sessions end at once)" if verb == "disable" else ""))
        d.add_argument("username")
    sp.set_defaults(func=lambda a: cmd_users(a, settings_of(a)))

    sp = sub.add_parser("review", help="review database: load snapshots, migrate, verify the audit chain")
    sp.add_argument("--store")
    sp.add_argument("--db", help="review database URL")
    rs = sp.add_subparsers(dest="review_cmd", required=True)
    ld = rs.add_parser("load", help="load a published snapshot (default: the latest) into the review database")
    ld.add_argument("--date", help="snapshot date YYYY-MM-DD")
    rs.add_parser("migrate", help="bring the review database schema up to date (Alembic)")
    rs.add_parser("verify-audit", help="verify the audit log's hash chain")
    sp.set_defaults(func=lambda a: cmd_review(a, settings_of(a)))


def _with_db(args, settings):
    if getattr(args, "db", None):
        return settings.model_copy(update={"review_db": args.db})
    return settings


def load_latest(settings, engine, quiet: bool = False):
    from safetynet.review.load import load_snapshot
    from safetynet.store import open_store

    store = open_store(settings)
    try:
        return load_snapshot(engine, store)
    except FileNotFoundError as e:
        if not quiet:
            log.warning("review: %s", e)
        return None


def cmd_serve(args, settings) -> int:
    import uvicorn

    from safetynet.review.app import create_app

    settings = _with_db(args, settings)
    engine = _engine(settings)
    res = load_latest(settings, engine)
    if res is not None:
        print(f"snapshot {res.snapshot_date}: " + (f"loaded {res.warnings:,} warnings ({res.new_cases:,} new cases, "
                                                   f"{res.reopened:,} re-opened)" if res.loaded else "already loaded"))
    if args.poll_minutes > 0:
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(args.poll_minutes * 60):
                try:
                    load_latest(settings, engine, quiet=True)
                except Exception:  # keep serving; the next poll tries again
                    log.exception("review: loading the latest snapshot failed")

        threading.Thread(target=poll, name="snapshot-poll", daemon=True).start()
    app = create_app(engine, session_hours=settings.review_session_hours,
                     secure_cookies=settings.review_secure_cookies)
    print(f"review app: http://{args.host}:{args.port}/  (API docs: /api/docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def cmd_users(args, settings) -> int:
    engine = _engine(_with_db(args, settings))
    if args.users_cmd == "add":
        pw = os.environ.get("SAFETYNET_NEW_PASSWORD") or getpass.getpass("密码（至少 10 位）：")
        try:
            auth.add_user(engine, args.username, pw, args.role, args.region, args.name)
        except auth.AccountError as e:
            print(f"safetynet users add: {e}", file=sys.stderr)
            return 2
        print(f"added {args.username} ({auth.ROLES[args.role].title_zh}, region {args.region or '全部'})")
    elif args.users_cmd == "list":
        for u in auth.list_users(engine):
            print(f"{u['username']:<20} {auth.ROLES[u['role']].title_zh:<12} {u['region_prefix'] or '*':<13} "
                  f"{'active' if u['active'] else 'DISABLED':<8} {u['display_name']}")
    else:
        try:
            auth.set_active(engine, args.username, args.users_cmd == "enable")
        except auth.AccountError as e:
            print(f"safetynet users {args.users_cmd}: {e}", file=sys.stderr)
            return 2
        print(f"{args.users_cmd}d {args.username}")
    return 0


def cmd_review(args, settings) -> int:
    from safetynet.review import audit

    settings = _with_db(args, settings)
    if getattr(args, "store", None):
        settings = settings.model_copy(update={"store": args.store})
    engine = _engine(settings)
    if args.review_cmd == "migrate":
        print(f"review database at head: {engine.url.render_as_string(hide_password=True)}")
    elif args.review_cmd == "load":
        import datetime as dt

        from safetynet.review.load import load_snapshot
        from safetynet.store import open_store

        day = dt.date.fromisoformat(args.date) if args.date else None
        res = load_snapshot(engine, open_store(settings), day)
        print(f"snapshot {res.snapshot_date}: " + (
            f"{res.warnings:,} warnings, {res.new_cases:,} new cases, {res.reopened:,} re-opened, "
            f"{res.kept_closed:,} stay dismissed/closed" if res.loaded else "already loaded (same manifest)"))
    else:
        c = audit.verify(engine)
        print(f"audit chain: {'OK' if c.ok else 'BROKEN'} ({c.entries:,} entries verified)"
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
        from safetynet.regions import region_names

        out.append((username, pw, auth.ROLES[role].title_zh, f"{region} {region_names().get(region, '')}".strip()
                    if region else "全部"))
    return out


