"""The process's open-file limit, raised at start-up so that ``MAX_WS_CLIENTS`` clients fit (one socket each).

Many systems start processes with a soft limit of 1,024 open files and a much higher hard limit: the service
raises its soft limit up to the hard limit when ``MAX_WS_CLIENTS`` needs it. When even the hard limit is too low,
one warning says how many ``/ws`` clients the service can hold, and it refuses clients beyond that (503) instead
of failing to accept connections at all.
"""

from __future__ import annotations

import logging

import attrs

from app.web.client_limit import ClientLimit

log = logging.getLogger(__name__)

# Files the service needs besides /ws clients: listening sockets, exchange connections, the REST pool, the
# database (file, WAL, shared memory), Trio's epoll and wake-up descriptors, stdio, and HTTP clients at the
# same time.
RESERVED_FILES = 256


@attrs.frozen(slots=True)
class OpenFilePlan:
    # The soft limit to set (unchanged when it already suffices).
    soft: int
    # The /ws clients that fit within it.
    ws_clients: int


def plan_open_files(soft: int, hard: int, max_ws_clients: int, unlimited: int = -1) -> OpenFilePlan:
    """The soft limit for ``max_ws_clients`` clients: raised up to ``hard`` if needed (``unlimited``: no hard
    limit), never lowered; and the clients it holds (at most ``max_ws_clients``)."""
    wanted = max_ws_clients + RESERVED_FILES
    new_soft = soft
    if soft != unlimited and soft < wanted:
        # All the way to the hard limit: HTTP clients and the exchange connections need room too.
        new_soft = wanted if hard == unlimited else max(soft, hard)
    holds = max_ws_clients if new_soft == unlimited else max(0, min(max_ws_clients, new_soft - RESERVED_FILES))
    return OpenFilePlan(soft=new_soft, ws_clients=holds)


def raise_open_file_limit(max_ws_clients: int) -> int:
    """Raises the soft open-file limit as ``plan_open_files`` says (logged); returns the /ws clients it holds."""
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to raise, nothing known
        return max_ws_clients
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    plan = plan_open_files(soft, hard, max_ws_clients, unlimited=resource.RLIM_INFINITY)
    if plan.soft != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (plan.soft, hard))
        except (ValueError, OSError) as error:
            log.warning("open_file_limit not raised soft=%d hard=%d wanted=%d error=%s", soft, hard, plan.soft, error)
            plan = plan_open_files(soft, soft, max_ws_clients, unlimited=resource.RLIM_INFINITY)
        else:
            log.info("open_file_limit raised soft=%d->%d hard=%d", soft, plan.soft, hard)
    if plan.ws_clients < max_ws_clients:
        log.warning("open_file_limit soft=%d hard=%d holds %d /ws clients, fewer than MAX_WS_CLIENTS=%d (plus %d "
                    "files of the service's own): serving at most %d; raise the hard limit (ulimit -Hn, systemd "
                    "LimitNOFILE=) or lower MAX_WS_CLIENTS", plan.soft, hard, plan.ws_clients, max_ws_clients,
                    RESERVED_FILES, plan.ws_clients)
    return plan.ws_clients


def ws_client_limit(max_ws_clients: int) -> ClientLimit:
    """At start-up of a process serving ``/ws``: the open-file limit raised, and the client limit that fits it."""
    return ClientLimit(raise_open_file_limit(max_ws_clients))
