"""What a console request must show, beyond its session cookie, to change anything.

Cross-site request forgery is refused three ways, any one of which suffices on its own:
- the cookie is SameSite=Strict, so a browser never sends it with another site's request;
- every change carries the session's CSRF token in `x-csrf-token`, which only the
  console's own pages can read (from `/console/api/session`, same origin);
- a request a browser marks as coming from elsewhere is refused: an `Origin` that is not
  the gateway's own (the `Host` it was reached at, http or https, or one of
  `console.allowed_origins`), or `Sec-Fetch-Site` other than same-origin.
Clients that are not browsers send neither header; they still need the token.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from gateway.console.sessions import Session

CSRF_HEADER = b"x-csrf-token"


def from_here(headers: dict[bytes, bytes], allowed: Iterable[str] = ()) -> bool:
    """Whether the request came from the console's own origin (as far as the browser
    says: a request without `Origin` and `Sec-Fetch-Site` is not a browser's)."""
    site = headers.get(b"sec-fetch-site")
    if site is not None and site not in (b"same-origin", b"none"):
        return False
    origin = headers.get(b"origin")
    if origin is None:
        return True
    host = headers.get(b"host", b"").decode("latin-1")
    mine = {f"http://{host}", f"https://{host}", *allowed} if host else set(allowed)
    return origin.decode("latin-1") in mine


def csrf_ok(session: Session, headers: dict[bytes, bytes]) -> bool:
    token = headers.get(CSRF_HEADER)
    return token is not None and hmac.compare_digest(token, session.csrf.encode())


def refusal(session: Session | None, headers: dict[bytes, bytes], allowed: Iterable[str],
            *, change: bool, admin: bool) -> tuple[int, str] | None:
    """Why a request may not go ahead, as (status, message); None when it may.
    `change`: it mutates something (CSRF and origin checks); `admin`: it needs that role."""
    if session is None:
        return 401, "log in to the console first"
    if change and not from_here(headers, allowed):
        return 403, "cross-site request refused"
    if change and not csrf_ok(session, headers):
        return 403, "missing or wrong CSRF token (x-csrf-token)"
    if admin and not session.admin:
        return 403, f"user {session.user!r} is read-only"
    return None
