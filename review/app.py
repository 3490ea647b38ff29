"""The review page: FastAPI, server-rendered HTML, a few lines of JS for the keyboard.

Safety (review.security): bound to 127.0.0.1 by default; bound anywhere else it requires a
token (given once as `?token=`, then kept in a cookie). Every POST carries a CSRF token that
must match the session's cookie (double submit, SameSite=Strict). URLs carry queue item ids
and the reason filter only: never a label or a score. Decisions go through review.decisions,
in the catalog's write transactions, so a growth run can write at the same time.

One route is different: `POST /api/report` (review.reports), where web bundles send what users
say the model got wrong. It is off unless `review.report_token` is set, and has its own gate
(review.security: the report token, CORS for `review.report_origins`, a rate limit per
client, a size cap read before the body); the Host rule still holds there.
"""

from __future__ import annotations

import io
import math
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import sqlalchemy as sa
from fastapi import APIRouter, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from PIL import Image as PILImage
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from corpus.blobs import BlobStore
from corpus.catalog import Catalog, images, labels, model_scores, review_queue
from labelers.effective import HUMAN, LLM, TEACHER
from review.decisions import ReviewError, decide, undo
from review.mining import REASONS
from review.reports import REASON as USER_REPORT
from review.reports import report_image
from review.security import (
    HEADERS,
    REPORT_PATH,
    Entry,
    Policy,
    RateLimit,
    cors_headers,
    preflight_headers,
    refusal,
    report_refusal,
    same,
    token_entry,
    unknown_host,
)
from spritesafe.canonical import from_bytes
from spritesafe.config import Settings
from spritesafe.decode import Rejected

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
DISPLAY = 256  # images are shown at the largest integer zoom that fits this
TILE = 96  # ... and in the grid, this
GRID_SIZE = 24  # tiles per grid page
GRID_MAX = 100  # decisions one grid submit (or one undo) may carry


def _redirect(reason: str, item: int | None = None) -> RedirectResponse:
    query = f"?reason={reason}" + (f"&item={item}" if item else "")
    return RedirectResponse("/" + query, status_code=303)


def _csrf(request: Request) -> str:
    """The session's CSRF token (double submit): its cookie, or a new one for this page."""
    return request.cookies.get("csrf") or secrets.token_urlsafe(24)


def _keep_csrf(request: Request, response: Response, csrf: str) -> None:
    if "csrf" not in request.cookies:
        response.set_cookie("csrf", csrf, httponly=True, samesite="strict")


def _reviewer(request: Request) -> str:
    return unquote(request.cookies.get("reviewer", ""))


# SQLite integers are 64-bit: a larger id is no queue item (and must not overflow a query).
ID = 2**63 - 1


def create_app(
    catalog: Catalog,
    blobs: BlobStore,
    policy: Policy | None = None,
    settings: Settings | None = None,
) -> FastAPI:
    """The review app over a catalog. `policy` (review.security): the Host names it answers
    to and the token it asks for; by default the loopback names and no token. ValueError
    when the report token is the page's token (it ships in web bundles)."""
    policy = policy or Policy.serving("127.0.0.1", [])
    settings = settings or Settings()
    report_token = settings.review.report_token.get_secret_value()
    if report_token and policy.token and same(report_token, policy.token):
        raise ValueError("review.report_token must not be the review page's token")
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    _guard(app, policy)
    app.include_router(_item_routes(catalog, blobs, settings))
    app.include_router(_grid_routes(catalog))
    app.include_router(_report_routes(catalog, blobs, settings))
    return app


def _guard(app: FastAPI, policy: Policy) -> None:
    """Every request passes review.security's rules first; every answer gets its headers."""

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        headers = request.headers
        if request.url.path == REPORT_PATH:
            # Cross-origin by design, with a gate of its own (_report_routes): of the page's
            # rules only the Host rule applies, and the page's token and cookies play no part.
            if unknown_host(policy, headers.get("host", "")):
                return Response("unknown host", status_code=400)
            response = await call_next(request)
            response.headers.update(HEADERS)
            return response
        refused = refusal(
            policy,
            request.method,
            headers.get("host", ""),
            headers.get("origin"),
            headers.get("sec-fetch-site"),
            request.url.scheme,
        )
        if refused is not None:
            return Response(refused[1], status_code=refused[0])
        entry = token_entry(policy, request.query_params.get("token"), request.cookies.get("token"))
        if entry is Entry.ENTER:
            response = RedirectResponse(request.url.path, status_code=303)
            response.set_cookie("token", policy.token or "", httponly=True, samesite="strict")
            return response
        if entry is Entry.REFUSE:
            return Response("a review token is required (?token=...)", status_code=401)
        response = await call_next(request)
        response.headers.update(HEADERS)
        return response


def _check_csrf(request: Request, csrf: str) -> None:
    expected = request.cookies.get("csrf", "")
    if not expected or not same(csrf, expected):
        raise HTTPException(403, "CSRF check failed: reload the page")


def _item_routes(catalog: Catalog, blobs: BlobStore, settings: Settings) -> APIRouter:
    """One queued item at a time: the page, its image, the reviewer's name, decide, undo."""
    router = APIRouter()
    limits, canon = settings.image, settings.canonical

    @router.get("/", response_class=HTMLResponse)
    def page(request: Request, reason: str = "", item: int | None = None) -> HTMLResponse:
        item = item if item is not None and 0 < item <= ID else None
        reason = reason if reason in REASONS else ""
        csrf = _csrf(request)
        query = sa.select(review_queue).where(review_queue.c.status == "open")
        counted = sa.select(review_queue.c.status, sa.func.count()).group_by(review_queue.c.status)
        if reason:
            query = query.where(review_queue.c.reason == reason)
            counted = counted.where(review_queue.c.reason == reason)
        with catalog.read() as conn:
            queue = conn.execute(
                query.order_by(review_queue.c.priority.desc(), review_queue.c.id)
            ).all()
            counts = dict(conn.execute(counted).tuples().all())
            ids = [q.id for q in queue]
            current = next((q for q in queue if q.id == item), queue[0] if queue else None)
            context: dict[str, Any] = {}
            if current is not None:
                context = _item_context(conn, current)
                at = ids.index(current.id)
                context["prev_id"] = ids[at - 1] if at > 0 else None
                context["next_id"] = ids[at + 1] if at + 1 < len(ids) else None
        html = TEMPLATES.get_template("review.html").render(
            item=current,
            reason=reason,
            reasons=REASONS,
            done=counts.get("decided", 0) + counts.get("skipped", 0),
            left=counts.get("open", 0),
            reviewer=_reviewer(request),
            csrf=csrf,
            **context,
        )
        response = HTMLResponse(html)
        _keep_csrf(request, response, csrf)
        return response

    @router.get("/image/{queue_id}")
    def image(queue_id: int) -> Response:
        """The canonical pixels as PNG, whatever the stored format (a browser shows a PNG;
        it may not show a TIFF, and it never sniffs one into something else)."""
        if not 0 < queue_id <= ID:
            raise HTTPException(404, "no such queued image")
        with catalog.read() as conn:
            key = conn.execute(
                sa.select(images.c.blob_key)
                .join(review_queue, review_queue.c.image_id == images.c.id)
                .where(review_queue.c.id == queue_id)
            ).scalar()
        if key is None:
            raise HTTPException(404, "no such queued image")
        try:
            pixels = from_bytes(blobs.get(key), limits, canon.background, canon.max_scale).pixels
        except (Rejected, OSError):
            raise HTTPException(404, "the image cannot be read") from None
        buffer = io.BytesIO()
        PILImage.fromarray(pixels, "RGB").save(buffer, "PNG")
        return Response(
            buffer.getvalue(),
            media_type="image/png",
            headers={"Cache-Control": "private, max-age=3600"},
        )

    @router.post("/reviewer")
    def set_reviewer(
        request: Request, name: str = Form(...), csrf: str = Form(...), reason: str = Form("")
    ) -> Response:
        _check_csrf(request, csrf)
        response = _redirect(reason)
        # Cookies carry Latin-1 only: any name (日本語 too) travels percent-encoded.
        response.set_cookie("reviewer", quote(name.strip()[:100]), samesite="strict")
        return response

    @router.post("/decide")
    def decide_item(
        request: Request,
        item: int = Form(...),
        choice: str = Form(...),
        csrf: str = Form(...),
        reason: str = Form(""),
    ) -> Response:
        _check_csrf(request, csrf)
        reviewer = _reviewer(request)
        try:
            decide(catalog, item, reviewer, choice)
        except ReviewError as exc:
            raise HTTPException(409, str(exc)) from None
        return _redirect(reason)

    @router.post("/undo")
    def undo_last(
        request: Request,
        csrf: str = Form(...),
        reason: str = Form(""),
        count: int = Form(1),
        back: str = Form(""),
    ) -> Response:
        """Reopen the reviewer's last `count` decisions (a grid page: all of it)."""
        _check_csrf(request, csrf)
        reopened = None
        for _ in range(max(1, min(count, GRID_MAX))):
            reopened = undo(catalog, _reviewer(request)) or reopened
        if back == "grid":
            response = RedirectResponse(f"/grid?reason={reason}", status_code=303)
            response.delete_cookie("batch")
            return response
        return _redirect(reason, reopened)

    return router


def _grid_routes(catalog: Catalog) -> APIRouter:
    """Many low-prior items at once: a page of tiles, one submit."""
    router = APIRouter()

    @router.get("/grid", response_class=HTMLResponse)
    def grid(request: Request, reason: str = "audit") -> HTMLResponse:
        """Many low-prior items at once: each tile safe until marked, one submit per page."""
        reason = reason if reason in REASONS else "audit"
        csrf = _csrf(request)
        with catalog.read() as conn:
            queue = conn.execute(
                sa.select(
                    review_queue.c.id,
                    images.c.canonical_width.label("width"),
                    images.c.canonical_height.label("height"),
                )
                .join(images, images.c.id == review_queue.c.image_id)
                .where(review_queue.c.status == "open", review_queue.c.reason == reason)
                .order_by(review_queue.c.priority.desc(), review_queue.c.id)
                .limit(GRID_SIZE)
            ).all()
            counts = dict(
                conn.execute(
                    sa.select(review_queue.c.status, sa.func.count())
                    .where(review_queue.c.reason == reason)
                    .group_by(review_queue.c.status)
                )
                .tuples()
                .all()
            )
        tiles = []
        for q in queue:
            zoom = max(1, TILE // max(q.width or 1, q.height or 1))
            tiles.append(
                {"id": q.id, "width": (q.width or 1) * zoom, "height": (q.height or 1) * zoom}
            )
        html = TEMPLATES.get_template("grid.html").render(
            tiles=tiles,
            reason=reason,
            reasons=REASONS,
            done=counts.get("decided", 0) + counts.get("skipped", 0),
            left=counts.get("open", 0),
            reviewer=_reviewer(request),
            batch=int(request.cookies.get("batch", "0") or 0),
            csrf=csrf,
        )
        response = HTMLResponse(html)
        _keep_csrf(request, response, csrf)
        return response

    @router.post("/grid")
    def grid_decide(
        request: Request,
        items: list[int] = Form(...),
        choices: list[str] = Form(...),
        csrf: str = Form(...),
        reason: str = Form(""),
    ) -> Response:
        _check_csrf(request, csrf)
        if len(items) != len(choices) or len(items) > GRID_MAX:
            raise HTTPException(400, "one choice per item, at most a page of them")
        reviewer = _reviewer(request)
        decided, refused = 0, ""
        for item, choice in zip(items, choices, strict=True):
            try:
                decide(catalog, item, reviewer, choice)
                decided += 1
            except ReviewError as exc:  # e.g. decided in another tab meanwhile: the rest count
                refused = str(exc)
        if refused and decided == 0:
            raise HTTPException(409, refused)
        response = RedirectResponse(f"/grid?reason={reason}", status_code=303)
        response.set_cookie("batch", str(decided), httponly=True, samesite="strict")
        return response

    return router


def _report_routes(catalog: Catalog, blobs: BlobStore, settings: Settings) -> APIRouter:
    """POST /api/report: a user's report (multipart: `image`, `expected`, optional `note`,
    and what the model said, `label` and `model_id`), checked in this order, cheapest first:
    the token and the Origin (401/403, 404 while reports are off), the client's rate (429),
    the size (413, from Content-Length or while reading, never past the cap), the form (400),
    the image (422 with ingest's reason). Answers are JSON: {"error", "detail"} or the report's
    outcome. The OPTIONS preflight answers the configured origins only."""
    router = APIRouter()
    config = settings.review
    token = config.report_token.get_secret_value()
    origins = list(config.report_origins)
    limit = RateLimit(config.report_per_minute, config.report_burst)
    cap = config.report_max_bytes

    def answer(
        request: Request, status: int, body: dict[str, Any], extra: dict[str, str] | None = None
    ) -> JSONResponse:
        # CORS headers on refusals too: the page can read why it was refused.
        headers = cors_headers(origins, request.headers.get("origin")) | (extra or {})
        return JSONResponse(body, status_code=status, headers=headers)

    @router.options(REPORT_PATH)
    def preflight(request: Request) -> Response:
        headers = preflight_headers(origins, request.headers.get("origin")) if token else None
        if headers is None:
            return Response("this origin may not send reports", 403, headers={"Vary": "Origin"})
        return Response(status_code=204, headers=headers)

    @router.post(REPORT_PATH)
    async def report(request: Request) -> Response:
        headers = request.headers
        origin = headers.get("origin")
        refused = report_refusal(token, origins, origin, headers.get("authorization"))
        if refused is not None:
            return answer(request, refused[0], {"error": "refused", "detail": refused[1]})
        wait = limit.take(request.client.host if request.client else "-")
        if wait:
            seconds = str(math.ceil(wait))
            detail = f"too many reports from this address: try again in {seconds} s"
            return answer(
                request, 429, {"error": "rate_limited", "detail": detail}, {"Retry-After": seconds}
            )
        too_large = {
            "error": "too_large",
            "detail": f"the request is over review.report_max_bytes ({cap} bytes)",
        }
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            return answer(request, 413, too_large)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > cap:
                return answer(request, 413, too_large)
        try:
            fields = await _report_form(request, bytes(body))
        except ValueError as exc:
            return answer(request, 400, {"error": "bad_request", "detail": str(exc)})
        data, expected, note, label, model_id = fields
        try:
            result = await run_in_threadpool(
                report_image,
                catalog,
                blobs,
                settings,
                data,
                expected,
                note,
                origin or "api",  # who: where from (the client's address is not kept)
                label=label,
                model_id=model_id,
            )
        except Rejected as rej:
            return answer(request, 422, {"error": rej.reason, "detail": rej.detail})
        except ValueError as exc:
            return answer(request, 400, {"error": "bad_request", "detail": str(exc)})
        outcome = {
            "queued": result.new_item,
            "status": result.status,
            "reports": result.reports,
            "sha256": result.sha256,
        }
        return answer(request, 200, outcome)

    return router


async def _report_form(
    request: Request, body: bytes
) -> tuple[bytes, str, str | None, str | None, str | None]:
    """(image bytes, expected, note, label, model_id) of a report's multipart body, which
    was read already (within the cap); ValueError saying what is wrong with it."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ValueError("send multipart/form-data: image, expected (and note)")

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except StarletteHTTPException as exc:  # starlette's word for a malformed multipart body
        raise ValueError(f"unreadable form: {exc.detail}") from None
    except ValueError as exc:  # python-multipart's parse errors are ValueErrors
        raise ValueError(f"unreadable form: {exc}") from None
    try:
        image, expected = form.get("image"), form.get("expected")
        if not isinstance(image, UploadFile):
            raise ValueError("the form has no image file (field `image`)")
        if not isinstance(expected, str):
            raise ValueError("the form has no expectation (field `expected`)")
        data = await image.read()
        text = {k: v for k in ("note", "label", "model_id") if isinstance(v := form.get(k), str)}
        return data, expected, text.get("note"), text.get("label"), text.get("model_id")
    finally:
        await form.close()


def _item_context(conn: sa.Connection, item: Any) -> dict[str, Any]:
    picture = conn.execute(
        sa.select(
            images.c.canonical_width.label("width"), images.c.canonical_height.label("height")
        ).where(images.c.id == item.image_id)
    ).one()
    zoom = max(1, DISPLAY // max(picture.width or 1, picture.height or 1))
    rows = conn.execute(
        sa.select(labels).where(labels.c.image_id == item.image_id).order_by(labels.c.id)
    ).all()
    scored = conn.execute(
        sa.select(
            model_scores.c.score,
            model_scores.c.score_safe,
            model_scores.c.score_suggestive,
            model_scores.c.score_explicit,
        )
        .where(model_scores.c.image_id == item.image_id)
        .where(model_scores.c.out_of_sample)
        .order_by(model_scores.c.created_at.desc())
        .limit(1)
    ).first()
    teacher = [r.score_explicit for r in rows if r.labeler == TEACHER]
    return {
        "width": (picture.width or 1) * zoom,
        "height": (picture.height or 1) * zoom,
        "llm": [r for r in rows if r.labeler == LLM][-3:],
        "humans": [r for r in rows if r.labeler == HUMAN],
        "model_score": _model_score(scored),
        "teacher_score": f"{teacher[-1]:.3f}" if teacher else "-",
        # What users said (review.reports): each report's expectation, note, and what the
        # model they used showed them.
        "reports": (item.detail or {}).get("reports", []) if item.reason == USER_REPORT else [],
    }


def _model_score(row: Any) -> str:
    if row is None:
        return "not scored (or trained on it)"
    if row.score_explicit is None:  # scored before the three levels
        return f"P(nsfw) {row.score:.3f}"
    return (
        f"safe {row.score_safe:.2f}, suggestive {row.score_suggestive:.2f}, explicit "
        f"{row.score_explicit:.2f} (P(nsfw) {row.score:.3f})"
    )
