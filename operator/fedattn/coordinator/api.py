"""The HTTPS API (aiohttp, mTLS): routes, caller identity, authorization, bodies, errors.

The caller is the client certificate's CN (the TLS layer already refused anyone without a
certificate from the session CA). ``operator`` may do everything; a participant may act only as
itself and read only its own sessions. Every failure is ``{"error": code, "message": text}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from fedattn.coordinator.client import NO_SESSION
from fedattn.coordinator.manifest import InvalidSession, parse_create
from fedattn.coordinator.service import ApiError, Coordinator

OPERATOR = "operator"
MAX_BODY_BYTES = 1024 * 1024
COORDINATOR = web.AppKey("coordinator", Coordinator)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def caller(request: web.Request) -> str:
    """The client certificate's common name."""
    cert = request.transport.get_extra_info("peercert") if request.transport else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    raise ApiError(401, "unauthenticated", "a client certificate with a common name is required")


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON number")


#: deepest nesting a body may have; manifests need ~8, and every later pass over a body recurses
MAX_JSON_DEPTH = 64


def _too_deep(value: Any) -> bool:
    """Whether ``value`` nests deeper than :data:`MAX_JSON_DEPTH` (iteratively: no recursion limit)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth >= MAX_JSON_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


async def json_body(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The request's JSON object; 413 above 1 MiB (aiohttp enforces it), 400 for anything else off."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise ApiError(400, "malformed", "request body must be a JSON object")
        return {}
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed", f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "malformed", f"request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(body, dict):
        raise ApiError(400, "malformed", f"request body must be a JSON object, got {type(body).__name__}")
    if _too_deep(body):
        raise ApiError(400, "malformed", f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    return body


def _authorize(request: web.Request, *, participant: str | None = None, session: str | None = None) -> str:
    """Allow the operator, or the participant itself (``participant``), or any member (``session``)."""
    who = caller(request)
    if who == OPERATOR:
        return who
    if participant is not None:
        if who != participant:
            raise ApiError(403, "forbidden", f"{who} may not act as {participant}")
        return who
    if session is not None:
        coordinator = request.app[COORDINATOR]
        known = coordinator.sessions.get(session)
        if known is not None and who in known.definition.weights:
            return who
        if known is None:
            raise ApiError(404, NO_SESSION, f"no session named {session!r}")
    raise ApiError(403, "forbidden", f"{who} may not do this; it needs the {OPERATOR} identity")


def _path(request: web.Request) -> tuple[str, str]:
    return request.match_info["session"], request.match_info["participant"]


async def create_session(request: web.Request) -> web.Response:
    _authorize(request)
    body = await json_body(request)
    try:
        definition = parse_create(body)
    except InvalidSession as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    created = await request.app[COORDINATOR].create_session(definition)
    return web.json_response({"name": definition.name, "created": created}, status=201 if created else 200)


async def list_sessions(request: web.Request) -> web.Response:
    _authorize(request)
    return web.json_response({"sessions": await request.app[COORDINATOR].list_status()})


async def get_session(request: web.Request) -> web.Response:
    name = request.match_info["session"]
    who = _authorize(request, session=name)
    status = await request.app[COORDINATOR].status(name)
    if who != OPERATOR:
        # NB: a participant's result (its generated text) may reveal its private prompt: own one only.
        status["results"] = {p: r for p, r in status["results"].items() if p == who}
    return web.json_response(status)


async def get_round(request: web.Request) -> web.Response:
    name = request.match_info["session"]
    _authorize(request, session=name)
    return web.json_response(request.app[COORDINATOR].round_info(name))


async def join(request: web.Request) -> web.Response:
    session, participant = _path(request)
    _authorize(request, participant=participant)
    await json_body(request, required=False)
    return web.json_response(await request.app[COORDINATOR].join(session, participant))


async def heartbeat(request: web.Request) -> web.Response:
    session, participant = _path(request)
    _authorize(request, participant=participant)
    await json_body(request, required=False)
    return web.json_response(await request.app[COORDINATOR].heartbeat(session, participant))


async def leave(request: web.Request) -> web.Response:
    session, participant = _path(request)
    _authorize(request, participant=participant)
    result = (await json_body(request, required=False)).get("result")
    if result is not None and not isinstance(result, dict):
        raise ApiError(400, "malformed", "result must be a JSON object")
    return web.json_response(await request.app[COORDINATOR].leave(session, participant, result))


async def evict(request: web.Request) -> web.Response:
    session, participant = _path(request)
    _authorize(request)
    reason = (await json_body(request, required=False)).get("reason", "evicted by the operator")
    if not isinstance(reason, str) or len(reason) > 1024:
        raise ApiError(400, "malformed", "reason must be a string of at most 1024 characters")
    return web.json_response(await request.app[COORDINATOR].evict(session, participant, reason))


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into ``{error, message}`` and count every request by route and code."""
    started = time.perf_counter()
    resource = getattr(request.match_info.route, "resource", None)
    path = resource.canonical if resource is not None else "unmatched"
    try:
        response = await handler(request)
    except ApiError as exc:
        response = _error(exc.status, exc.code, exc.message)
    except web.HTTPRequestEntityTooLarge:
        response = _error(413, "too_large", f"request body exceeds {MAX_BODY_BYTES} bytes")
    except web.HTTPException as exc:  # aiohttp's own: 404 unknown path, 405 wrong method
        response = _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
    metrics = request.app[COORDINATOR].metrics
    metrics.http_requests.labels(path=path, code=str(response.status)).inc()
    metrics.http_request_seconds.labels(path=path).observe(time.perf_counter() - started)
    return response


def build_app(coordinator: Coordinator) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[errors_and_metrics])
    app[COORDINATOR] = coordinator
    member = "/v1/sessions/{session}/participants/{participant}"
    app.add_routes(
        [
            web.post("/v1/sessions", create_session),
            web.get("/v1/sessions", list_sessions),
            web.get("/v1/sessions/{session}", get_session),
            web.get("/v1/sessions/{session}/round", get_round),
            web.post(f"{member}/join", join),
            web.post(f"{member}/heartbeat", heartbeat),
            web.post(f"{member}/leave", leave),
            web.post(f"{member}/evict", evict),
        ]
    )
    return app
