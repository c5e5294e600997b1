"""The review app: server-rendered Chinese pages (Jinja2 + htmx) and a JSON API (`/api/v1`, OpenAPI
at `/api/docs`), one FastAPI application, the same sessions, scoping and audit for both.

Security: argon2 password hashes, server-side sessions (only a token hash is stored; cookie
HttpOnly + SameSite=Strict), a CSRF token on every form and as `X-CSRF-Token` on every unsafe
API call, login throttling, strict security headers (CSP allows only this origin's scripts and
styles: no inline script), and every query scoped by the user's region prefix server-side —
an object outside it answers 404, exactly as a missing one.
"""


import asyncio
import datetime as dt
import secrets
import weakref
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from sqlalchemy import Connection, Engine, text
from starlette.concurrency import run_in_threadpool

from quality.rules import SEVERITY_ZH
from safetynet.publish import export
from safetynet.review import audit, auth, queries
from safetynet.review.auth import ROLES, User
from schemas.idno import looks_like_id, mask

HERE = Path(__file__).parent
SESSION_COOKIE = "sn_session"
LOGIN_CSRF_COOKIE = "sn_login_csrf"
API_TITLE = "兜底保障数据枢纽 · 预警处置 API"
DOCS_URL, OPENAPI_URL, OAUTH2_REDIRECT_URL = "/api/docs", "/api/openapi.json", "/docs/oauth2-redirect"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'")


class Unauthenticated(Exception):
    pass


def create_app(engine: Engine, *, session_hours: float = 10.0, secure_cookies: bool = False) -> FastAPI:
    # FastAPI's own /api/docs page loads Swagger UI from a CDN with an inline script: the CSP (and an
    # intranet without internet) refuses both. Ours below serves the vendored swagger-ui-dist.
    app = FastAPI(title=API_TITLE, version="1", docs_url=None, openapi_url=OPENAPI_URL, redoc_url=None)
    app.state.engine = engine
    idle = dt.timedelta(hours=session_hours)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(ROLES=ROLES, STATUS_ZH=queries.STATUS_ZH, SEVERITY_ZH=SEVERITY_ZH,
                                 DISMISS_REASONS=queries.DISMISS_REASONS, ASSISTANCE=queries.ASSISTANCE,
                                 ACTION_ZH=queries.ACTION_ZH, TRANSITIONS=queries.TRANSITIONS,
                                 region_names=queries.region_names, beijing=queries.beijing)
    templates.env.filters["qs"] = lambda d: urlencode(d)
    templates.env.filters["yuan"] = _yuan
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def headers(request: Request, call_next):
        if await _has_nul(request):  # PostgreSQL refuses NUL in text: answer 400 before any query
            resp: Response = JSONResponse({"detail": "输入含有非法字符（NUL）"}, status_code=400)
        else:
            resp = await call_next(request)
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "same-origin"
        resp.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        resp.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        if not request.url.path.startswith("/static/"):
            resp.headers["Cache-Control"] = "no-store"
        if secure_cookies:
            resp.headers["Strict-Transport-Security"] = "max-age=31536000"
        return resp

    def ip_of(request: Request) -> str:
        return request.client.host if request.client else "-"

    def session(request: Request) -> tuple[User, str]:
        got = auth.session_user(engine, request.cookies.get(SESSION_COOKIE), idle)
        if got is None:
            raise Unauthenticated
        return got

    def user_dep(request: Request) -> User:
        u, csrf = session(request)
        request.state.csrf = csrf
        request.state.user = u
        return u

    def csrf_form(request: Request, _u: Annotated[User, Depends(user_dep)],
                  csrf_token: Annotated[str, Form()] = "") -> None:
        if not auth.csrf_ok(request.state.csrf, csrf_token):
            raise HTTPException(403, "CSRF 校验失败，请刷新页面后重试")

    def csrf_header(request: Request, _u: Annotated[User, Depends(user_dep)]) -> None:
        if not auth.csrf_ok(request.state.csrf, request.headers.get("x-csrf-token")):
            raise HTTPException(403, "missing or wrong X-CSRF-Token header")

    Current = Annotated[User, Depends(user_dep)]

    @app.exception_handler(Unauthenticated)
    async def _unauth(request: Request, exc: Unauthenticated):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": "not authenticated"}, status_code=401)
        if request.method != "GET":
            return HTMLResponse("未登录或会话已过期", status_code=401)
        return RedirectResponse("/login?" + urlencode({"next": request.url.path}), status_code=303)

    @app.exception_handler(queries.NotFound)
    async def _nf(request: Request, exc):
        return _error(request, 404, "未找到（或不在您的辖区内）")

    @app.exception_handler(queries.Forbidden)
    async def _fb(request: Request, exc):
        return _error(request, 403, str(exc))

    @app.exception_handler(queries.Conflict)
    async def _cf(request: Request, exc):
        return _error(request, 409, str(exc))

    @app.exception_handler(queries.BadRequest)
    async def _br(request: Request, exc):
        return _error(request, 400, str(exc))

    def _error(request: Request, code: int, msg: str):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": msg}, status_code=code)
        return templates.TemplateResponse(request, "error.html", {"code": code, "message": msg,
                                                                  "user": getattr(request.state, "user", None)},
                                          status_code=code)

    def page(request: Request, name: str, ctx: dict, status: int = 200) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {"user": getattr(request.state, "user", None),
                                                          "csrf": getattr(request.state, "csrf", ""), **ctx},
                                          status_code=status)

    # ---- API description (Swagger UI from /static: same-origin scripts only) -------------------
    @app.get(DOCS_URL, response_class=HTMLResponse, include_in_schema=False)
    def api_docs(request: Request):
        root = request.scope.get("root_path", "").rstrip("/")
        return templates.TemplateResponse(request, "api_docs.html", {
            "title": API_TITLE, "root": root, "openapi_url": root + OPENAPI_URL,
            "oauth2_redirect_url": root + OAUTH2_REDIRECT_URL})

    @app.get(OAUTH2_REDIRECT_URL, response_class=HTMLResponse, include_in_schema=False)
    def api_docs_oauth2_redirect(request: Request):
        return templates.TemplateResponse(request, "oauth2_redirect.html",
                                          {"root": request.scope.get("root_path", "").rstrip("/")})

    # ---- health, login ----------------------------------------------------------------------
    @app.get("/healthz", include_in_schema=False)
    def healthz():
        with engine.connect() as c:
            c.execute(text("SELECT 1"))
        return {"ok": True, "snapshot": str(queries.latest_snapshot(engine) or "")}

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, next: str = "/"):
        token = secrets.token_urlsafe(24)
        resp = page(request, "login.html", {"login_csrf": token, "next": _safe_next(next), "error": ""})
        resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", secure=secure_cookies)
        return resp

    @app.post("/login", include_in_schema=False)
    async def login(request: Request, username: Annotated[str, Form()], password: Annotated[str, Form()],
                    csrf_token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/"):
        if not auth.csrf_ok(request.cookies.get(LOGIN_CSRF_COOKIE, ""), csrf_token):
            raise HTTPException(403, "CSRF 校验失败，请刷新页面后重试")
        return await _do_login(request, username, password, _safe_next(next), html=True)

    async def _do_login(request: Request, username: str, password: str, next_url: str, html: bool):
        """`auth.authenticate`'s steps in the thread pool; a login waiting for a hash slot (one per core) holds
        no thread and no connection, so a burst of logins queues without starving other requests. The attempt,
        the session and the audit entry are written in one transaction."""
        ip = ip_of(request)

        def record(c: Connection, u: User | None) -> tuple[str, str] | None:
            if u is None:
                audit.append(c, None, ip, "login_failed", "user", _loggable(username), "")
                return None
            audit.append(c, u, ip, "login", "user", u.username, u.region_prefix)
            return auth.start_session(c, u)

        try:
            check = await run_in_threadpool(auth.login_check, engine, username, ip)
            async with _hash_gate():
                ok, rehash = await run_in_threadpool(auth.login_verify, check, password)
            u, session_ = await run_in_threadpool(auth.login_finish, engine, check, ok, rehash, record)
        except auth.Throttled:
            await run_in_threadpool(audit.record, engine, None, ip, "login_failed", "user", _loggable(username), "",
                                    reason="throttled")
            msg = "登录失败次数过多，请 15 分钟后再试"
            if not html:
                return JSONResponse({"detail": msg}, status_code=429)
            return page(request, "login.html", {"login_csrf": request.cookies.get(LOGIN_CSRF_COOKIE, ""),
                                                "next": next_url, "error": msg}, status=429)
        if u is None:
            msg = "用户名或密码错误，或账户已停用"
            if not html:
                return JSONResponse({"detail": msg}, status_code=401)
            return page(request, "login.html", {"login_csrf": request.cookies.get(LOGIN_CSRF_COOKIE, ""),
                                                "next": next_url, "error": msg}, status=401)
        assert session_ is not None  # `record` starts a session for every user
        token, csrf = session_
        resp: Response = RedirectResponse(next_url, status_code=303) if html else JSONResponse(
            {"username": u.username, "role": u.role, "region_prefix": u.region_prefix, "csrf_token": csrf})
        resp.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="strict", secure=secure_cookies,
                        max_age=int(idle.total_seconds()))
        resp.delete_cookie(LOGIN_CSRF_COOKIE)
        return resp

    @app.post("/logout", include_in_schema=False, dependencies=[Depends(csrf_form)])
    def logout(request: Request, user: Current):
        auth.end_session(engine, request.cookies.get(SESSION_COOKIE))
        audit.record(engine, user, ip_of(request), "logout", "user", user.username, user.region_prefix)
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE)
        return resp

    # ---- warning list -------------------------------------------------------------------------
    def filters(street: str = "", community: str = "", rule: str = "", severity: str = "", status: str = "",
                category: str = "", q: Annotated[str, Query(max_length=64)] = "",
                page: Annotated[int, Query(ge=1, le=100_000)] = 1,
                after: Annotated[str, Query(max_length=200, description="page cursor: the page after this row "
                                            "(`next_cursor` of the page before)")] = "",
                before: Annotated[str, Query(max_length=200, description="page cursor: the page before this row "
                                             "(`prev_cursor`); `end`: the last page")] = "") -> queries.Filters:
        return queries.Filters(street=street[:12], community=community[:12], rule=rule[:48], severity=severity[:4],
                               status=status[:16], category=category[:8], q=q, page=page, after=after,
                               before=before)

    Flt = Annotated[queries.Filters, Depends(filters)]

    def _search_audit(request: Request, user: User, f: queries.Filters) -> None:
        if looks_like_id(f.q.strip()) and ROLES[user.role].unmask:  # searching by ID number is a disclosure
            audit.record(engine, user, ip_of(request), "unmask", "search", mask(f.q.strip()),
                         user.region_prefix, reason="search by ID number")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def warning_list(request: Request, user: Current, f: Flt):
        _search_audit(request, user, f)
        data = queries.list_warnings(engine, user, f)
        data["notes"] = queries.snapshot_notes(engine, data["snapshot"])
        return page(request, "list.html", {"data": data, "f": f})

    # ---- household ----------------------------------------------------------------------------
    @app.get("/households/{household_no}", response_class=HTMLResponse, include_in_schema=False)
    def household_page(request: Request, household_no: str, user: Current):
        return _household(request, user, household_no, unmask=False)

    @app.post("/households/{household_no}/unmask", response_class=HTMLResponse, include_in_schema=False,
              dependencies=[Depends(csrf_form)])
    def household_unmask(request: Request, household_no: str, user: Current):
        return _household(request, user, household_no, unmask=True)

    def _household(request: Request, user: User, household_no: str, unmask: bool):
        d = queries.household(engine, user, household_no[:32], unmask=unmask, ip=ip_of(request))
        assignees = queries.assignable_users(engine, user, d["household"]["region_code"])
        return page(request, "household.html", {"d": d, "assignees": assignees})

    @app.post("/cases/{alert_key}/decide", include_in_schema=False, dependencies=[Depends(csrf_form)])
    def decide_form(request: Request, alert_key: str, user: Current, action: Annotated[str, Form()],
                    note: Annotated[str, Form(max_length=2000)] = "", reason_code: Annotated[str, Form()] = "",
                    assistance: Annotated[str, Form()] = "", assignee_id: Annotated[str, Form()] = "",
                    household_no: Annotated[str, Form()] = ""):
        queries.decide(engine, user, alert_key[:32], action, note=note, reason_code=reason_code,
                       assistance=assistance, assignee_id=int(assignee_id) if assignee_id.isdigit() else None,
                       ip=ip_of(request))
        return RedirectResponse(f"/households/{household_no[:32]}#case-{alert_key[:32]}", status_code=303)

    # ---- exports, charts, audit -------------------------------------------------------------
    @app.get("/export.xlsx", include_in_schema=False)
    def export_xlsx(request: Request, user: Current, f: Flt):
        content = export.render(EXPORT_COLUMNS, _export_rows(request, user, f, "xlsx"), "xlsx")
        return Response(content, media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                        headers={"Content-Disposition": _disposition("xlsx")})

    @app.get("/export.csv", include_in_schema=False)
    def export_csv(request: Request, user: Current, f: Flt):
        content = export.render(EXPORT_COLUMNS, _export_rows(request, user, f, "csv"), "csv")
        return Response(content, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": _disposition("csv")})

    def _export_rows(request: Request, user: User, f: queries.Filters, fmt: str) -> list[dict]:
        _search_audit(request, user, f)
        data = queries.list_warnings(engine, user, f, all_rows=True)
        shown = f.params()
        if looks_like_id(shown.get("q")):
            shown["q"] = mask(shown["q"])
        audit.record(engine, user, ip_of(request), "export", "warnings", fmt, user.region_prefix,
                     filters=shown, rows=len(data["rows"]), snapshot=str(data["snapshot"]))
        return [{**r, "snapshot_date": str(data["snapshot"]), "categories": "、".join(r["categories"])}
                for r in data["rows"]]

    @app.get("/charts", response_class=HTMLResponse, include_in_schema=False)
    def charts(request: Request, user: Current):
        return page(request, "charts.html", {})

    @app.get("/audit", response_class=HTMLResponse, include_in_schema=False)
    def audit_page(request: Request, user: Current, username: str = "", action: str = "", object_id: str = "",
                   page_no: Annotated[int, Query(alias="page", ge=1)] = 1):
        if not ROLES[user.role].audit_log:
            raise queries.Forbidden("只有审计人员和管理员可以查看审计日志")
        rows, total = audit.search(engine, username=username[:64], action=action[:32], object_id=object_id[:64],
                                   limit=100, offset=(page_no - 1) * 100)
        chain = audit.verify(engine)
        return page(request, "audit.html", {"rows": rows, "total": total, "chain": chain, "ACTIONS": audit.ACTIONS_ZH,
                                            "q": {"username": username, "action": action, "object_id": object_id},
                                            "page_no": page_no})

    # ---- JSON API ---------------------------------------------------------------------------
    class LoginIn(BaseModel):
        username: str = Field(max_length=64)
        password: str = Field(max_length=256)

    class DecisionIn(BaseModel):
        action: str = Field(description="assign | visit | assist | dismiss | close")
        note: str = Field("", max_length=2000)
        reason_code: str = Field("", description=f"dismiss: one of {', '.join(queries.DISMISS_REASONS)}")
        assistance: str = Field("", description=f"assist: one of {', '.join(queries.ASSISTANCE)}")
        assignee_id: int | None = None

    @app.post("/api/v1/login", tags=["auth"])
    async def api_login(request: Request, body: LoginIn):
        """Start a session (cookie `sn_session`); send the returned `csrf_token` as `X-CSRF-Token`."""
        return await _do_login(request, body.username, body.password, "/", html=False)

    @app.get("/api/v1/me", tags=["auth"])
    def api_me(request: Request, user: Current) -> dict:
        return {"username": user.username, "display_name": user.display_name, "role": user.role,
                "role_zh": ROLES[user.role].title_zh, "region_prefix": user.region_prefix,
                "csrf_token": request.state.csrf}

    @app.get("/api/v1/warnings", tags=["warnings"])
    def api_warnings(request: Request, user: Current, f: Flt,
                     limit: Annotated[int, Query(ge=1, le=500)] = queries.PAGE_SIZE) -> dict:
        """One page of the list in risk order. Page on with `after=<next_cursor>` (back: `before=<prev_cursor>`;
        the last page: `before=end`) — the same cost on any page; `page=N` alone cuts by offset."""
        _search_audit(request, user, f)
        d = queries.list_warnings(engine, user, f, limit=limit)
        return {"snapshot": str(d["snapshot"]) if d["snapshot"] else None, "total": d["total"], "page": d["page"],
                "pages": d["pages"], "next_cursor": d["next_cursor"], "prev_cursor": d["prev_cursor"],
                "rows": d["rows"], "facets": d["facets"]}

    @app.get("/api/v1/households/{household_no}", tags=["households"])
    def api_household(request: Request, household_no: str, user: Current) -> dict:
        return _jsonable(queries.household(engine, user, household_no[:32], ip=ip_of(request)))

    @app.post("/api/v1/households/{household_no}/unmask", tags=["households"], dependencies=[Depends(csrf_header)])
    def api_unmask(request: Request, household_no: str, user: Current) -> dict:
        return _jsonable(queries.household(engine, user, household_no[:32], unmask=True, ip=ip_of(request)))

    @app.post("/api/v1/cases/{alert_key}/decisions", tags=["cases"], dependencies=[Depends(csrf_header)])
    def api_decide(request: Request, alert_key: str, body: DecisionIn, user: Current) -> dict:
        return queries.decide(engine, user, alert_key[:32], body.action, note=body.note, reason_code=body.reason_code,
                              assistance=body.assistance, assignee_id=body.assignee_id, ip=ip_of(request))

    @app.get("/api/v1/stats", tags=["charts"])
    def api_stats(user: Current) -> dict:
        return queries.stats(engine, user)

    @app.get("/api/v1/audit", tags=["audit"])
    def api_audit(user: Current, username: str = "", action: str = "", object_id: str = "",
                  page: Annotated[int, Query(ge=1)] = 1) -> dict:
        if not ROLES[user.role].audit_log:
            raise queries.Forbidden("auditor or admin only")
        rows, total = audit.search(engine, username=username, action=action, object_id=object_id, limit=100,
                                   offset=(page - 1) * 100)
        return {"total": total, "rows": _jsonable(rows), "chain_ok": audit.verify(engine).ok}

    @app.get("/api/v1/export.csv", tags=["exports"])
    def api_export_csv(request: Request, user: Current, f: Flt):
        return export_csv(request, user, f)

    @app.get("/api/v1/export.xlsx", tags=["exports"])
    def api_export_xlsx(request: Request, user: Current, f: Flt):
        return export_xlsx(request, user, f)

    return app


#: the review app's list (`safetynet.publish.export` writes it; labels from `schemas.outputs`)
EXPORT_COLUMNS = ("snapshot_date", "warning_id", "rule_title_zh", "severity_zh", "household_no", "street_name",
                  "community_name", "subject_id_masked", "summary_zh", "score", "household_score", "status_zh",
                  "categories", "policy_version")
EXPORT_HEADERS = export.header(EXPORT_COLUMNS)


def _disposition(ext: str) -> str:
    from urllib.parse import quote

    name = f"预警清单_{dt.date.today().isoformat()}.{ext}"
    return f"attachment; filename=warnings.{ext}; filename*=UTF-8''{quote(name)}"


def _loggable(username: str) -> str:
    """A typed user name as the audit log may hold it: an ID number typed as the name is masked."""
    name = username[:64]
    return mask(name) if looks_like_id(name) else name


async def _has_nul(request: Request) -> bool:
    """A NUL character anywhere in the path, query or body (raw, %-encoded or JSON-escaped)."""
    if "\x00" in request.url.path or "%00" in request.url.query:
        return True
    if request.method in ("POST", "PUT", "PATCH"):
        body = await request.body()
        return b"\x00" in body or b"%00" in body or b"\\u0000" in body
    return False


_HASH_GATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _hash_gate() -> asyncio.Semaphore:
    """This event loop's gate to the password hash: `auth.HASH_SLOTS` (the cores) logins hash at once."""
    loop = asyncio.get_running_loop()
    gate = _HASH_GATES.get(loop)
    if gate is None:
        gate = _HASH_GATES[loop] = asyncio.Semaphore(auth.HASH_SLOTS)
    return gate


def _yuan(v) -> str:
    """Money as the pages show it: 2 decimals, thousands separators; blank when unknown."""
    try:
        return f"{float(v):,.2f}"
    except (TypeError, ValueError):
        return ""


def _safe_next(url: str) -> str:
    return url if url.startswith("/") and not url.startswith("//") and "\\" not in url else "/"


def _jsonable(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj, ensure_ascii=False, default=str))


def serve_engine(settings) -> Engine:
    from safetynet.review import db

    eng = db.engine_for(db.url_of(settings))
    db.migrate(eng)
    return eng


