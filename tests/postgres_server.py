"""A fresh PostgreSQL database per test, on the server at ``TEST_POSTGRES_URL`` (default: the local one).

Each test gets its own database (``CREATE DATABASE`` with a unique name), dropped afterwards; where no server
answers, the test is skipped with one line saying what to install.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SKIP_REASON = ("PostgreSQL is not reachable at {url} ({error}): install and start it (apt install postgresql, or "
               "the official image), or set TEST_POSTGRES_URL")


def admin_connection() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        pytest.skip(SKIP_REASON.format(url=ADMIN_URL, error=" ".join(str(error).split())[:120]))


def database_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


@contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new, empty database, dropped on exit (with any connection still open to it)."""
    name = f"marketdata_test_{uuid.uuid4().hex[:16]}"
    with admin_connection() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(name)
    finally:
        with admin_connection() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
