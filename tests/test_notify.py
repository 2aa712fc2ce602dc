"""Round notifications (flb.run.notify): a real local HTTP server and real shell commands receive them; a receiver that
is dead, slow, failing or hanging is logged and never stops or slows a round."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flb.config import NotifySettings
from flb.run.notify import Notifier, round_notifications
from flb.types import NullLedger

PAYLOAD_KEYS = {
    "run_id",
    "round",
    "num_rounds",
    "skipped",
    "num_clients",
    "eval_loss",
    "accuracy",
    "epsilon",
    "global_digest",
    "ledger",
    "time",
}


class Receiver(ThreadingHTTPServer):
    """Records every POST (its Content-Type and JSON body; `requests`: its headers and raw body); answers `status`
    after holding each request for `delay_s` (released early on close)."""

    daemon_threads, block_on_close = True, False

    def __init__(self, status: int = 200, delay_s: float = 0.0):
        self.status, self.delay_s, self.release = status, delay_s, threading.Event()
        self.posts: list[tuple[str, dict]] = []
        self.requests: list[tuple[dict, bytes]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((dict(self.headers), body))
        self.server.posts.append((self.headers["Content-Type"], json.loads(body)))
        self.server.release.wait(self.server.delay_s)
        self.send_response(self.server.status)
        if self.server.status == 302:
            self.send_header("Location", "/elsewhere")
        self.end_headers()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def receiver(**kwargs):
    server = Receiver(**kwargs)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def dead_url() -> str:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def row(round: int, **extra) -> dict:
    return {
        "kind": "round",
        "round": round,
        "global_digest": f"digest-{round}",
        "num_clients": 2,
        "eval_loss": 1.5,
        "accuracy": 0.25,
        **extra,
    }


def notifier(**settings) -> Notifier:
    return Notifier(NotifySettings(**{"timeout_s": 5.0, **settings}), "run-1", 3)


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "flb.run.notify" and r.levelno == logging.WARNING]


def test_each_row_is_one_json_post_in_order():
    with receiver() as server:
        sender = notifier(url=server.url)
        for round in range(5):
            sender.notify(row(round))
        sender.close(timeout_s=30)
    assert [content_type for content_type, _ in server.posts] == ["application/json"] * 5
    assert [payload["round"] for _, payload in server.posts] == [0, 1, 2, 3, 4]
    assert set(server.posts[0][1]) == PAYLOAD_KEYS


def test_payload_is_flat_and_strict_json():
    with receiver() as server:
        sender = notifier(url=server.url)
        sender.notify(row(2, privacy={"epsilon": 3.5, "clients": {}}))
        sender.notify(
            {
                "kind": "round",
                "round": 3,
                "global_digest": "d",
                "num_clients": 0,
                "skipped": True,
                "eval_loss": float("nan"),
            }
        )
        sender.close(timeout_s=30)
    (_, trained), (_, skipped) = server.posts
    assert {k: v for k, v in trained.items() if k != "time"} == {
        "run_id": "run-1",
        "round": 2,
        "num_rounds": 3,
        "skipped": False,
        "num_clients": 2,
        "eval_loss": 1.5,
        "accuracy": 0.25,
        "epsilon": 3.5,
        "global_digest": "digest-2",
        "ledger": None,
    }
    assert trained["time"].endswith("+00:00")
    assert (skipped["skipped"], skipped["eval_loss"], skipped["accuracy"], skipped["epsilon"]) == (
        True,
        None,
        None,
        None,
    )


def test_a_dead_url_is_one_warning_per_round(caplog):
    url = dead_url()
    sender = notifier(url=url)
    sender.notify(row(1))
    sender.notify(row(2))
    sender.close(timeout_s=30)
    assert warnings_of(caplog) == [
        f"notify.url {url}: round {r} not notified: [Errno 111] Connection refused; the run goes on" for r in (1, 2)
    ]


@pytest.mark.parametrize("status, reason", [(500, "HTTP 500 Internal Server Error"), (302, "HTTP 302 Found")])
def test_a_status_other_than_2xx_is_a_warning(caplog, status, reason):
    with receiver(status=status) as server:
        sender = notifier(url=server.url)
        sender.notify(row(1))
        sender.close(timeout_s=30)
    assert len(server.posts) == 1  # a redirect is not followed
    assert warnings_of(caplog) == [f"notify.url {server.url}: round 1 not notified: {reason}; the run goes on"]


def test_credentials_in_the_url_never_reach_the_log(caplog):
    url = dead_url().replace("http://", "http://user:hunter2@") + "?token=s3cret"
    sender = notifier(url=url)
    sender.notify(row(1))
    sender.close(timeout_s=30)
    [warning] = warnings_of(caplog)
    assert "hunter2" not in warning and "s3cret" not in warning
    assert "http://***@127.0.0.1:" in warning and "token=***" in warning


def test_an_endpoint_slower_than_the_timeout_is_given_up_each_time(caplog):
    with receiver(delay_s=60) as server:
        sender = notifier(url=server.url, timeout_s=0.3)
        started = time.perf_counter()
        sender.notify(row(1))
        sender.notify(row(2))
        assert time.perf_counter() - started < 0.3  # sent in line, the two would take 0.6 s
        sender.close(timeout_s=30)
        assert time.perf_counter() - started < 10
    assert warnings_of(caplog) == [
        f"notify.url {server.url}: round {r} not notified: no answer within notify.timeout_s = 0.3 s; the run goes on"
        for r in (1, 2)
    ]


def test_close_gives_up_when_the_endpoint_hangs(caplog):
    with receiver(delay_s=60) as server:
        sender = notifier(url=server.url, timeout_s=60)
        sender.notify(row(1))
        sender.notify(row(2))
        started = time.perf_counter()
        sender.close(timeout_s=0.5)
        assert time.perf_counter() - started < 3
    assert warnings_of(caplog) == ["notify: 2 round notifications not sent within 0.5 s of the run's end; given up"]


def test_the_command_gets_the_same_json_on_stdin_one_line_each(tmp_path):
    received = tmp_path / "received.jsonl"
    with receiver() as server:
        sender = notifier(url=server.url, command=f"cat >> {received}")
        sender.notify(row(1))
        sender.notify(row(2))
        sender.close(timeout_s=30)
    assert received.read_text().endswith("}\n")
    assert [json.loads(line) for line in received.read_text().splitlines()] == [p for _, p in server.posts]


def test_credentials_in_the_url_are_sent_as_basic_authorization_and_never_logged(caplog):
    import base64

    with receiver() as server:
        url = server.url.replace("http://", "http://flb%40lab:p%3Ass@") + "?run=1"
        sender = notifier(url=url)
        sender.notify(row(1))
        sender.close(timeout_s=30)
    with receiver(status=500) as failing:
        sender = notifier(url=failing.url.replace("http://", "http://flb%40lab:p%3Ass@"))
        sender.notify(row(1))
        sender.close(timeout_s=30)
    [(headers, body)] = server.requests
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"flb@lab:p:ss").decode()
    assert json.loads(body)["round"] == 1 and body.endswith(b"}\n")
    [warning] = warnings_of(caplog)
    assert "p%3Ass" not in caplog.text and "flb%40lab" not in caplog.text
    assert warning.startswith(f"notify.url http://***@127.0.0.1:{failing.server_address[1]}/hook: round 1 not notified")


def test_headers_take_their_values_from_the_environment(monkeypatch, caplog):
    monkeypatch.setenv("FLB_TEST_TOKEN", "Bearer xoxb-s3cret")
    monkeypatch.setenv("FLB_TEST_TEAM", "federated")
    with receiver() as server:
        sender = notifier(url=server.url, headers={"Authorization": "FLB_TEST_TOKEN", "X-Team": "FLB_TEST_TEAM"})
        sender.notify(row(1))
        sender.close(timeout_s=30)
    [(headers, _)] = server.requests
    assert (headers["Authorization"], headers["X-Team"], headers["Content-Type"]) == (
        "Bearer xoxb-s3cret",
        "federated",
        "application/json",
    )
    assert "s3cret" not in caplog.text


def test_a_header_whose_variable_is_not_set_is_one_line_naming_it(monkeypatch):
    from flb.errors import ConfigError

    monkeypatch.delenv("FLB_TEST_UNSET_TOKEN", raising=False)
    settings = NotifySettings(url="http://127.0.0.1:9/hook", headers={"Authorization": "FLB_TEST_UNSET_TOKEN"})
    with pytest.raises(ConfigError) as info:
        Notifier(settings, "run-1", 3)
    assert str(info.value) == (
        "notify.headers.Authorization: environment variable FLB_TEST_UNSET_TOKEN is not set; "
        "export it (it holds the header's value), or drop the header"
    )


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            dict(headers={"Authorization": "TOKEN"}),
            "notify.headers: invalid value {'Authorization': 'TOKEN'}; allowed: {} without notify.url",
        ),
        (
            dict(url="http://h/x", headers={"Bad Header": "TOKEN"}),
            "notify.headers: invalid value 'Bad Header'; allowed: HTTP header names",
        ),
        (
            dict(url="http://h/x", headers={"Authorization": "$TOKEN"}),
            "notify.headers.Authorization: invalid value '$TOKEN'; allowed: the name of an environment variable",
        ),
        (
            dict(url="http://u:p@h/x", headers={"authorization": "TOKEN"}),
            "notify.headers: invalid value 'Authorization'; "
            "allowed: no Authorization header when notify.url holds user:password@",
        ),
        (dict(url="http://[::1/x"), "notify.url: invalid value 'http://[::1/x'; allowed: an http:// or https:// URL"),
    ],
)
def test_bad_headers_are_one_config_line(settings, message):
    from flb.config import load_config
    from flb.errors import ConfigError

    overrides = [f"notify.{key}={json.dumps(value)}" for key, value in settings.items()]
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "command, reason",
    [
        ("echo 'no token' >&2; exit 1", "exit status 1 (no token)"),
        ("flb-no-such-command", "exit status 127 ("),
    ],
)
def test_a_failing_command_is_one_warning(caplog, command, reason):
    sender = notifier(command=command)
    sender.notify(row(1))
    sender.close(timeout_s=30)
    [warning] = warnings_of(caplog)
    assert warning.startswith(f"notify.command {command}: round 1 not notified: {reason}")


def test_a_command_past_the_timeout_is_killed_with_what_it_started(caplog):
    sender = notifier(command="sleep 60; true", timeout_s=0.3)  # the shell forks sleep, which holds the pipes
    sender.notify(row(1))
    started = time.perf_counter()
    sender.close(timeout_s=30)
    assert time.perf_counter() - started < 10
    assert warnings_of(caplog) == [
        "notify.command sleep 60; true: round 1 not notified: no answer within "
        "notify.timeout_s = 0.3 s; the run goes on"
    ]


def test_no_url_and_no_command_is_no_notifier():
    threads = threading.active_count()
    with round_notifications(NotifySettings(), "run-1", 3, NullLedger()) as on_round:
        assert on_round is None
        assert threading.active_count() <= threads  # an earlier test's sender may end meanwhile


def test_a_run_recorded_nowhere_sends_ledger_null():
    with receiver() as server:
        with round_notifications(NotifySettings(url=server.url), "run-1", 3, NullLedger()) as on_round:
            on_round(row(1))
    [(_, payload)] = server.posts
    assert payload["ledger"] is None


@pytest.mark.chain
def test_a_tiny_run_notifies_every_round_by_url_and_command(tiny_overrides, tmp_path):
    import assembly
    from flb.config import load_config

    received = tmp_path / "received.jsonl"
    with receiver() as server:
        run_dir = assembly.run(
            load_config(
                None,
                tiny_overrides
                + [
                    "chain_record=true",
                    "local_steps=1",
                    "eval.size=4",
                    f"notify.url={server.url}",
                    f"notify.command=cat >> {received}",
                ],
            )
        )
    rounds = [m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if m["kind"] == "round"]
    posted = [payload for _, payload in server.posts]
    assert [p["round"] for p in posted] == [m["round"] for m in rounds] == [0, 1, 2]
    assert [json.loads(line) for line in received.read_text().splitlines()] == posted
    outbox = {}
    for line in (run_dir / "chain" / "outbox.jsonl").read_text().splitlines():
        entry = json.loads(line)
        outbox[entry["id"]] = entry.get("tx", outbox.get(entry["id"]))
    for payload, metrics in zip(posted, rounds):
        assert set(payload) == PAYLOAD_KEYS
        assert payload["run_id"] == run_dir.name and payload["num_rounds"] == 2 and payload["skipped"] is False
        assert payload["global_digest"] == metrics["global_digest"]
        assert payload["num_clients"] == metrics["num_clients"]
        assert payload["eval_loss"] == metrics["eval_loss"]
        assert payload["accuracy"] == metrics["accuracy"] and payload["epsilon"] is None
        ledger = payload["ledger"]
        assert ledger["record"] == f"round:{metrics['round']}"
        assert ledger["status"] in ("queued", "submitted", "confirmed")
        assert ledger["tx"] == (None if ledger["status"] == "queued" else outbox[ledger["record"]])
