"""Public answers: served from Redis when fresh, with an ETag and Cache-Control so
clients and CDNs can cache them too; `If-None-Match` with the current ETag gets a 304."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from fastapi import Request, Response

from ..adapters.cache import PublicCache
from ..config import Settings
from ..metrics import PUBLIC_CACHE


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    # Weak comparison (RFC 9110 13.1.2): W/"x" matches "x".
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return etag in tags


def cache_control(settings: Any) -> str:
    max_age = settings.catalog_public_max_age_seconds if isinstance(settings, Settings) else 0
    if max_age <= 0:
        # Stored by clients and CDNs, but revalidated (cheaply, by ETag) before each use,
        # so a change is visible on the next read.
        return "public, no-cache"
    swr = settings.catalog_public_stale_while_revalidate_seconds
    return f"public, max-age={max_age}, stale-while-revalidate={swr}"


async def public_json(request: Request, kind: str, produce: Callable[[], Awaitable[Any]]) -> Response:
    rt = request.app.state.rt
    cache: PublicCache = rt.extras["cache"]
    query = urlencode(sorted(request.query_params.multi_items()))
    key = cache.key_for(kind, f"{request.url.path}?{query}")
    hit = await cache.get(key)
    if hit is not None and hit.body is not None and hit.etag is not None:
        PUBLIC_CACHE.labels(kind, "hit").inc()
        body, etag = hit.body, hit.etag
    else:
        PUBLIC_CACHE.labels(kind, "miss" if hit is not None else "unavailable").inc()
        body = dumps(await produce())  # a Problem (404, 422) propagates and is not cached
        etag = etag_of(body)
        if hit is not None:
            await cache.put(hit.version, key, etag, body)
    headers = {"ETag": etag, "Cache-Control": cache_control(rt.settings)}
    if _matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def private_json(data: Any, status_code: int = 200) -> Response:
    """An answer only its caller may see (drafts, admin lists): never stored by caches."""
    return Response(dumps(data), status_code=status_code, media_type="application/json",
                    headers={"Cache-Control": "private, no-store"})
