"""The one exception type of the Python API: the embedded service's and the HTTP client's errors alike."""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service refused, with the HTTP API's ``status`` (None: no HTTP answer, e.g. code
    ``unreachable``), ``code`` and ``message``.

    The embedded service (``open_service``) raises it with the status the HTTP route would answer, so a caller
    handles ``code == "unknown_interval"`` the same way in-process and over HTTP.
    """

    def __init__(self, status: int | None, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
