"""ASGI guards in front of every route: the Host header (DNS rebinding) and a bound on every request body.

They sit outside FastAPI's routing, so they also hold for bodies sent chunked (no Content-Length) and
for routes that never read their body.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ANY_ADDRESS = ("0.0.0.0", "::", "")


class BodyTooLarge(Exception):
    """Raised from inside receive() once a body passes its bound (the route's read stops there)."""

    def __init__(self, limit: int):
        super().__init__(f"request body exceeds the {limit:,} byte limit")
        self.limit = limit


def host_name(header: str) -> str:
    """'Example.COM:8000' -> 'example.com', '[::1]:8000' -> '::1' (the name a browser resolved)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    if header.count(":") == 1:
        header = header.split(":", 1)[0]
    return header.rstrip(".")


def allowed_hosts(bound: str | None, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """The Host names this server answers to: loopback names, the bound address, and `extra`;
    None (any host) when extra holds '*'."""
    extra = [host_name(h) for h in extra]
    if "*" in extra:
        return None
    names = set(LOOPBACK_HOSTS) | set(extra)
    if bound and host_name(bound) not in ANY_ADDRESS:
        names.add(host_name(bound))
    return frozenset(names)


async def send_error(send, status: int, message: str) -> None:
    body = json.dumps({"error": message, "status": status}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class HostCheck:
    """Refuse requests whose Host header is not one of `hosts`: a page on another site that rebinds its
    own name to 127.0.0.1 sends its own name as Host, so it cannot read this server's answers."""

    def __init__(self, app, hosts: frozenset[str] | None):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.hosts is not None:
            header = dict(scope.get("headers") or []).get(b"host")
            if header is not None:
                name = host_name(header.decode("latin-1"))
                if name not in self.hosts:
                    shown = name if len(name) <= 60 else name[:57] + "..."
                    return await send_error(send, 400, f"host {shown!r} is not served here (allowed: "
                                            f"{', '.join(sorted(self.hosts))}; "
                                            "pixdex serve --allow-host adds one)")
        return await self.app(scope, receive, send)


class BodyLimit:
    """Bound every request body, declared or chunked: `limit_for(content_type)` bytes at most."""

    def __init__(self, app, limit_for: Callable[[str], int]):
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        limit = self.limit_for(headers.get(b"content-type", b"").decode("latin-1").lower())
        declared = headers.get(b"content-length", b"").strip()
        if declared and (not declared.isdigit() or int(declared) > limit):
            what = f"{int(declared):,} bytes" if declared.isdigit() else "an invalid length"
            return await send_error(send, 413 if declared.isdigit() else 400,
                                    f"request body of {what} exceeds the {limit:,} byte limit"
                                    if declared.isdigit() else "invalid Content-Length header")
        seen = 0
        started = False

        async def bounded_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await send_error(send, 413, str(exc))
