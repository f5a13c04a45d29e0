"""The open-file limit at start-up: raised for MAX_WS_CLIENTS up to the hard limit, or one warning saying how many
/ws clients fit. The real limit is tried in child processes, where a lowered hard limit harms no one."""

from __future__ import annotations

import json
import resource
import sys

import pytest
import trio

from app.web.open_files import RESERVED_FILES, OpenFilePlan, plan_open_files

UNLIMITED = resource.RLIM_INFINITY


@pytest.mark.parametrize(
    ("soft", "hard", "max_ws_clients", "plan"),
    [
        (1024, 1_048_576, 1000, OpenFilePlan(soft=1_048_576, ws_clients=1000)),  # raised to the hard limit
        (1024, 2048, 1000, OpenFilePlan(soft=2048, ws_clients=1000)),
        (1024, 1024, 1000, OpenFilePlan(soft=1024, ws_clients=1024 - RESERVED_FILES)),  # cannot: says how many
        (512, 1100, 1000, OpenFilePlan(soft=1100, ws_clients=1100 - RESERVED_FILES)),
        (100, 100, 1000, OpenFilePlan(soft=100, ws_clients=0)),
        (65_536, 65_536, 1000, OpenFilePlan(soft=65_536, ws_clients=1000)),  # enough already: left alone
        (4096, 1_048_576, 1000, OpenFilePlan(soft=4096, ws_clients=1000)),  # never lowered, never needlessly raised
        (1024, UNLIMITED, 5000, OpenFilePlan(soft=5000 + RESERVED_FILES, ws_clients=5000)),
        (UNLIMITED, UNLIMITED, 5000, OpenFilePlan(soft=UNLIMITED, ws_clients=5000)),
    ],
)
def test_the_plan_raises_the_soft_limit_only_as_far_as_the_hard_one(
    soft: int, hard: int, max_ws_clients: int, plan: OpenFilePlan
) -> None:
    assert plan_open_files(soft, hard, max_ws_clients, unlimited=UNLIMITED) == plan


CHILD = """
import json, logging, resource, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
from app.web.open_files import raise_open_file_limit
holds = raise_open_file_limit(int(sys.argv[1]))
print(json.dumps({"holds": holds, "limit": resource.getrlimit(resource.RLIMIT_NOFILE)}))
"""


async def _child(soft: int, hard: int, max_ws_clients: int) -> tuple[dict[str, object], list[str]]:
    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    with trio.fail_after(60):
        done = await trio.run_process([sys.executable, "-c", CHILD, str(max_ws_clients)], capture_stdout=True,
                                      capture_stderr=True, preexec_fn=limit_files)
    return json.loads(done.stdout), done.stderr.decode().splitlines()


async def test_the_soft_limit_is_raised_to_the_hard_limit_and_logged() -> None:
    _, system_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = 4096 if system_hard == UNLIMITED else min(system_hard, 4096)
    if hard < 1000 + RESERVED_FILES:
        pytest.skip(f"this machine's hard open-file limit ({system_hard}) is below what the test needs")
    result, log = await _child(256, hard, 1000)
    assert result == {"holds": 1000, "limit": [hard, hard]}
    assert log == [f"INFO open_file_limit raised soft=256->{hard} hard={hard}"]


async def test_a_hard_limit_too_low_gives_one_warning_saying_how_many_clients_fit() -> None:
    result, log = await _child(256, 512, 1000)
    assert result == {"holds": 512 - RESERVED_FILES, "limit": [512, 512]}
    assert len(log) == 2 and log[0] == "INFO open_file_limit raised soft=256->512 hard=512"
    assert log[1].startswith(f"WARNING open_file_limit soft=512 hard=512 holds {512 - RESERVED_FILES} /ws clients, "
                             "fewer than MAX_WS_CLIENTS=1000")
    assert f"serving at most {512 - RESERVED_FILES}" in log[1]
