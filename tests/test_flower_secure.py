"""Flower's secure mode on loopback, with the commands the docs' multi-machine page gives (the last test
checks the page still gives them): certificates and node keys from `python -m flb_flower.certs`, a SuperLink
with TLS and node authentication, two registered SuperNodes (node 0 with its own copy of the base model) and a
third, unregistered, that tries to serve a partition during the run. The run ends with the in-process run's
final adapter, which tests/test_flower.py shows the insecure Flower run ends with too.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest

from flb.audit.digests import adapter_file_digest
from flb.errors import RunFailed
from flb_flower.fleet import Fleet
from tests.flower_loopback import (
    FLOWER_RUN,
    REPO,
    Loopback,
    certs_argv,
    connection_toml,
    flwr_run_argv,
    node_config,
    register_argv,
    superlink_argv,
    supernode_argv,
)
from tests.test_flower import RUN_TIMEOUT_S, finish, flb_args, round_records
from tests.test_flower_wire import StubGrid
from tests.tiny_model import tiny_run_overrides

MULTI_MACHINE_PAGE = REPO / "docs" / "multi-machine.md"
REFUSED = "Failed to activate SuperNode"  # Flower 1.41's words for a node whose key is not registered


@pytest.fixture(scope="module")
def secure(tmp_path_factory, request):
    work = tmp_path_factory.mktemp("flower-secure")
    credentials = work / "credentials"
    subprocess.run(certs_argv(credentials, 3), cwd=REPO, check=True, capture_output=True, timeout=60)
    federation = Loopback(work, credentials)
    request.addfinalizer(federation.stop_all)
    federation.start_superlink()
    federation.register("node-0")
    federation.register("node-1")
    return federation


@pytest.fixture(scope="module")
def secure_run(secure, tiny_model_dir, tmp_path_factory, flower_reference_run):
    """test_flower.py's 2-round run on the tiny model, through the secure SuperLink, with an intruder (key node-2,
    never registered) started as partition 1 while it runs; and the in-process run of the same config."""
    work = tmp_path_factory.mktemp("secure-run")
    own_copy = shutil.copytree(tiny_model_dir, work / "node-0-model")
    secure.nodes = [secure.start_supernode(0, 2, model_path=own_copy), secure.start_supernode(1, 2)]
    overrides = tiny_run_overrides(tiny_model_dir, work / "flower-runs") + FLOWER_RUN
    run = secure.flwr_run(flb_args(overrides), RUN_TIMEOUT_S)
    intruder = secure.start_supernode(1, 2, key="node-2")
    in_process = flower_reference_run
    finish(secure, run)
    return (work / "flower-runs" / "latest").resolve(), in_process, intruder


@pytest.mark.flower
def test_a_secure_run_gives_the_in_process_final_adapter(secure_run, secure):
    flower, in_process, _ = secure_run
    assert [r["num_clients"] for r in round_records(flower)] == [0, 2, 1], secure.logs()  # 1 dropped out of 2
    assert round_records(flower)[2]["rejected"] == [
        {"client_id": 1, "reason": "ClientUnavailable: client 1: dropped out of round 2 (simulation.dropout = 0.3)"}
    ]
    assert adapter_file_digest(flower / "final_adapter") == adapter_file_digest(in_process / "final_adapter")


@pytest.mark.flower
def test_an_unregistered_supernode_is_refused(secure_run, secure):
    intruder = secure_run[2]
    assert intruder.wait(timeout=60) != 0
    assert REFUSED in secure.log_files[intruder.pid].read_text()


def test_waiting_for_a_node_that_never_comes_names_the_likely_causes():
    """A node refused by the SuperLink says why only in its own log: the ServerApp's time-out points there."""
    fleet = Fleet(
        StubGrid([], answer=None), {"num_clients": 1}, wait_for_nodes_s=0.1, round_timeout_s=1, query_timeout_s=1
    )
    with pytest.raises(
        RunFailed,
        match=r"^no SuperNode serves partition-id \[0\] after wait-for-nodes-s=0.1 "
        r"\(0 connected\); .*Failed to activate SuperNode.*flwr supernode register.*"
        r"--root-certificates",
    ):
        fleet.join("run", 1, "ef" * 32)


# --- docs/multi-machine.md gives the commands the tests run -----------------------------------------------------


def page_section(heading: str) -> str:
    """The `## heading` section of docs/multi-machine.md, up to the next `## ` heading."""
    text = MULTI_MACHINE_PAGE.read_text()
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def shell_commands(text: str) -> list[list[str]]:
    """The code blocks' commands as argv lists (continuation lines joined, comments and a trailing `&` dropped;
    heredoc lines that are not shell are kept, harmless)."""
    lines = "\n".join(re.findall(r"```\n(.*?)```", text, flags=re.S)).replace("\\\n", " ").splitlines()
    commands = []
    for line in lines:
        try:
            argv = shlex.split(line, comments=True)
        except ValueError:  # a TOML line with an apostrophe, say
            continue
        commands.append(argv[:-1] if argv[-1:] == ["&"] else argv)
    return commands


@pytest.mark.parametrize(
    "credentials, heading",
    [(None, "On one machine (insecure loopback)"), ("certs", "TLS and node authentication")],
    ids=["insecure", "secure"],
)
def test_the_multi_machine_page_gives_the_tested_commands(credentials, heading):
    subsection = page_section(heading)
    commands = shell_commands(subsection)
    expected = [superlink_argv(9093, credentials)]
    expected += [
        supernode_argv(9093, 9101 + i, node_config(i, 3, f"$PWD/nodes/{i}"), credentials, f"node-{i}") for i in range(3)
    ]
    if credentials:
        expected += [certs_argv(credentials, 3)] + [register_argv(credentials, f"node-{i}") for i in range(3)]
    run_prefix = flwr_run_argv("")[:-1]
    for argv in expected:
        assert argv in commands, f"docs/multi-machine.md lacks: {shlex.join(argv)}"
    assert any(argv[: len(run_prefix)] == run_prefix for argv in commands), (
        f"docs/multi-machine.md lacks: {shlex.join(run_prefix)}"
    )
    toml = connection_toml(9093, f"$PWD/{credentials}" if credentials else None)
    assert toml in re.findall(r"<<TOML\n(.*?)TOML\n", subsection, flags=re.S), (
        f"docs/multi-machine.md lacks this config.toml:\n{toml}"
    )
