"""The scale-out commands: ``marketdata ingest``, ``api`` and ``persist``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from app.bus.connection import BusError
from app.roles.api import run_api
from app.roles.ingest import run_ingest
from app.roles.persist import run_persist
from app.service import open_storage
from app.settings import Settings, add_settings_flags, configure_logging, flag_overrides, load_settings
from app.store.storage import StorageError

log = logging.getLogger("app")

Role = Callable[[Settings], Awaitable[None]]


# name, the role's supervisor, help, description.
_ROLES: tuple[tuple[str, Role, str, str], ...] = (
    ("ingest", run_ingest,
     "one ingest shard publishing to the bus (leader, or hot standby of the same shard)",
     "Ingest the symbols of one shard (SHARD=K/N) and publish ticks and candles to Redis "
     "Streams (BUS_URL). A second process with the same shard waits as hot standby and takes over when the "
     "leader's lease (LEASE_TTL_SECONDS) expires. Serves /health and /metrics on HTTP_HOST:HTTP_PORT."),
    ("api", partial(run_api, open_storage=open_storage),
     "a stateless API replica (REST, /ws, dashboard) for every shard, fed by the bus",
     "Serve the REST API and the /ws feed for all shards from the bus (BUS_URL): latest ticks and "
     "current candles from a snapshot, then the streams from where the snapshot was taken; closed candle "
     "history from DATABASE_URL (written by `marketdata persist`). Any number of replicas."),
    ("persist", partial(run_persist, open_storage=open_storage),
     "write the bus's ticks and closed candles into the database (many may share the load)",
     "Read the bus (BUS_URL) as one consumer of the group 'persist' and write ticks and closed "
     "candles into DATABASE_URL, acknowledging each entry after its commit; entries a dead persister left "
     "pending are claimed. Serves /health and /metrics on HTTP_HOST:HTTP_PORT."),
)


def add_role_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, role, summary, description in _ROLES:
        parser = commands.add_parser(name, help=summary, description=description)
        add_settings_flags(parser)
        parser.set_defaults(func=partial(run_role, name, role))


def run_role(name: str, role: Role, args: argparse.Namespace) -> int:
    settings = load_settings(overrides=flag_overrides(args))
    configure_logging(settings.log_level)
    if settings.bus_url is None:
        print(f"marketdata {name}: set BUS_URL (or --bus-url) to the bus, e.g. redis://127.0.0.1:6379/0",
              file=sys.stderr)
        return 2
    try:
        trio.run(role, settings)
    except KeyboardInterrupt:
        return 0
    except (BusError, StorageError) as error:
        print(f"marketdata {name}: {error}", file=sys.stderr)
        return 2
    except BaseException as error:  # the top: log every crash, exit non-zero
        log.critical("%s crashed: %r", name, error, exc_info=error)
        return 1
    return 0
