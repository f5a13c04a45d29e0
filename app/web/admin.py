"""Who may change the service: ``ADMIN_TOKEN`` guards the requests that change subscriptions.

Reads are open to whoever can reach the port. Changes (``POST /api/symbols``, ``DELETE /api/symbols/{symbol}``)
need ``Authorization: Bearer <ADMIN_TOKEN>`` when a token is set; without one they are open only while the API
listens on loopback, and refused with 403 ``admin_disabled`` when it listens beyond it.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging

import attrs

from app.web.errors import ApiError

log = logging.getLogger(__name__)

BEARER = "bearer"


def is_loopback(host: str) -> bool:
    """True for ``127.0.0.0/8``, ``::1`` and ``localhost``; any other address or name may be reachable."""
    host = host.strip().removeprefix("[").removesuffix("]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@attrs.frozen(slots=True)
class AdminAccess:
    # ``ADMIN_TOKEN``; None when not set.
    token: str | None = attrs.field(default=None, repr=False)
    # Where the API listens (``HTTP_HOST``): without a token, changes are allowed on loopback only.
    host: str = "127.0.0.1"

    @property
    def disabled(self) -> bool:
        """Changes are refused to everyone: the API is reachable beyond loopback and no token is set."""
        return self.token is None and not is_loopback(self.host)

    def warn_if_disabled(self) -> None:
        if self.disabled:
            log.warning("admin_disabled host=%s: POST and DELETE /api/symbols answer 403 until ADMIN_TOKEN is set; "
                        "reads stay open", self.host)

    def authorize(self, authorization: str | None) -> None:
        """Raises the ``ApiError`` for a change request with this ``Authorization`` header, if it is not allowed."""
        if self.token is None:
            if self.disabled:
                raise ApiError(403, "admin_disabled",
                               f"changes are disabled: the API listens on {self.host}, beyond loopback, and no "
                               "ADMIN_TOKEN is set; set ADMIN_TOKEN and send Authorization: Bearer <token>")
            return
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != BEARER or not credentials.strip():
            raise ApiError(401, "missing_token",
                           "this request changes the service: send Authorization: Bearer <ADMIN_TOKEN>",
                           {"WWW-Authenticate": 'Bearer realm="marketdata"'})
        # Constant time: the comparison must not tell how many leading bytes were right. Header values arrive
        # decoded as latin-1, so that turns them back into the bytes sent; the token is compared as UTF-8.
        if not hmac.compare_digest(credentials.strip().encode("latin-1", errors="replace"), self.token.encode()):
            raise ApiError(403, "invalid_token", "the bearer token is not this service's ADMIN_TOKEN")
