"""Start-up errors: problems a user fixes by changing a setting, told in one line (exit code 2), not a traceback.

A port already taken and a database that cannot be used are such problems; a crash after start-up is not (it
keeps its traceback and exit code 1).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit


class StartupError(Exception):
    """Start-up cannot go on; the message says what to change."""


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def startup_error(error: BaseException) -> StartupError | None:
    """The ``StartupError`` that ``error`` is, or that a nursery wrapped in exception groups; else None."""
    found = [leaf for leaf in _leaves(error) if isinstance(leaf, StartupError)]
    return found[0] if found else None


def _address_in_use(error: BaseException) -> bool:
    return any(isinstance(leaf, OSError) and leaf.errno == errno.EADDRINUSE for leaf in _leaves(error))


@contextmanager
def listening(what: str, host: str, port: int, change: str) -> Iterator[None]:
    """Turns "address already in use" while ``what`` binds ``host:port`` into a one-line ``StartupError``
    saying how to ``change`` it (e.g. "--port or HTTP_PORT")."""
    try:
        yield
    except BaseException as error:
        if not _address_in_use(error):
            raise
        raise StartupError(
            f"cannot listen on {host}:{port} for {what}: the address is already in use (is another instance "
            f"running?); choose another port with {change}, or 0 for any free port"
        ) from None


def redact_url(url: str) -> str:
    """``url`` without its password, for log lines and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))
