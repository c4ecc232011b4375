"""The viewer's request guard: read-only methods, the ``Host`` check, the token and the
security headers, as one ASGI middleware in front of every route.

Rules:

* Only ``GET`` and ``HEAD``: anything else is answered 405.
* Without a token (a loopback server) the ``Host`` header must name a loopback address or an
  allowed host, so a page on another site cannot reach the viewer through DNS rebinding.
* With a token, a request is let through when it carries ``Authorization: Bearer <token>``,
  the viewer's cookie, or ``?token=<token>``; the last sets the cookie (HttpOnly,
  SameSite=Strict) and, for a page, redirects to the same address without the token so it
  does not stay in the address bar or the history. Tokens are compared with
  :func:`hmac.compare_digest`; the cookie holds a digest of the token, not the token.
* Every response carries a Content-Security-Policy allowing this origin's files only (no
  inline script or style), ``nosniff``, ``no-referrer`` and a frame ban.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, quote, urlencode

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._net import is_loopback

__all__ = ["COOKIE_NAME", "SECURITY_HEADERS", "ViewerGuard"]

COOKIE_NAME = "power_loop_viewer"

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
)
_READ_METHODS = frozenset({"GET", "HEAD"})


def _cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"power-loop viewer cookie", hashlib.sha256).hexdigest()


def _matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


class ViewerGuard:
    """ASGI middleware enforcing the rules of the module docstring.

    Args:
        app: The application it guards.
        token: The access token, or None for none (then only loopback hosts are served).
        allowed_hosts: Extra ``Host`` names accepted (without port); None: loopback names when
            no token is set, any host when one is.
    """

    def __init__(self, app: ASGIApp, *, token: str | None = None, allowed_hosts: Sequence[str] | None = None) -> None:
        self.app = app
        self.token = token or None
        self.cookie = _cookie_value(token) if token else ""
        self.allowed_hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)

    def _host_allowed(self, headers: Headers) -> bool:
        if self.allowed_hosts is None and self.token:
            return True
        host = headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.lower()
        return is_loopback(name) or (self.allowed_hosts is not None and name in self.allowed_hosts)

    def _authorized(self, headers: Headers) -> bool:
        assert self.token is not None
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _matches(credentials.strip(), self.token):
            return True
        cookies = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is no credential
            return False
        morsel = cookies.get(COOKIE_NAME)
        return morsel is not None and _matches(morsel.value, self.cookie)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode().lower() not in _GUARDED]
                headers.extend((k.encode(), v.encode()) for k, v in SECURITY_HEADERS)
                message = {**message, "headers": headers}
            await send(message)

        response = self._refusal(scope)
        if response is not None:
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope) -> Response | None:
        """The response refusing this request, or None to let it through."""
        if scope["method"] not in _READ_METHODS:
            return PlainTextResponse(
                "The session viewer is read-only.", status_code=405, headers={"Allow": "GET, HEAD"}
            )
        headers = Headers(scope=scope)
        if not self._host_allowed(headers):
            return PlainTextResponse("Unknown host.", status_code=400)
        if self.token is None or self._authorized(headers):
            return None
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if not given or not _matches(given[-1], self.token):
            return PlainTextResponse(
                "This viewer needs its token: open it once with ?token=<token>, or send Authorization: Bearer <token>.",
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="power-loop viewer"'},
            )
        rest = urlencode([(k, v) for k, v in query if k != "token"])
        target = quote(scope.get("root_path", "") + scope["path"]) + (f"?{rest}" if rest else "")
        response: Response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE_NAME, self.cookie, httponly=True, samesite="strict", path="/")
        return response


_GUARDED = frozenset(name for name, _ in SECURITY_HEADERS)
