"""Round notifications: after every completed round (round 0, the base model, too) one flat JSON object, a line ending
in a newline, is POSTed to `notify.url` and/or given on stdin to the shell command `notify.command` (so
`cat >> notifications.jsonl` writes JSON Lines):

    {"run_id": "20250301-101500-a1b2", "round": 2, "num_rounds": 3, "skipped": false, "num_clients": 2,
     "eval_loss": 1.8421, "accuracy": 0.25, "epsilon": null, "global_digest": "5f0c...e9",
     "ledger": {"record": "round:2", "status": "confirmed", "tx": "0x8d1f...42"}, "time": "2025-03-01T10:17:02+00:00"}

`num_clients` is the updates aggregated; `eval_loss` and `accuracy` (exact match) are null when the round has none (a
skipped round, another eval suite) or a non-finite value; `epsilon` is the run's epsilon so far (the largest of the
server's and the clients', metrics.jsonl `privacy.epsilon`), null without DP or when unbounded; `ledger` is null when
the run records nothing on chain, otherwise the round's outbox record as the chain/ledger.py outbox holds it when the
notification is sent: `queued` (tx null), `submitted` or `confirmed`; `time` is when the round was done (UTC).

The POST carries `Content-Type: application/json`, the headers of `notify.headers` (each value read from the
environment variable it names) and, when the URL holds `user:password@`, HTTP Basic authorization with them (urllib
does not send a URL's credentials itself); the URL and its credentials are redacted in every log line.

A notification never stops or slows a round: the coordinator only puts it on a queue; one daemon thread sends them in
order, each send bounded by `notify.timeout_s` (the POST's connect and each read; the command's process group is
killed past it), and a failure (a refused connection, a non-2xx status, a time-out, a non-zero exit status) is one
WARNING line naming notify.url or notify.command and the round. `close` waits for what is queued up to a bound, then
gives up with a warning."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import queue
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit, urlunsplit

from flb.errors import first_line
from flb.run.redaction import redact_text, redact_url

log = logging.getLogger(__name__)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # urllib would follow a redirected POST as a GET without the JSON: report the 3xx instead


_OPENER = urllib.request.build_opener(_NoRedirects)


class Notifier:
    """Sends each round's JSON from one background thread; `notify` only enqueues. `ledger` (a ChainLedger, or None)
    is read by that thread through `summary()`, whose outbox reads take the outbox's lock."""

    def __init__(self, settings, run_id: str, num_rounds: int, ledger=None):
        self.settings, self.run_id, self.num_rounds, self.ledger = settings, run_id, num_rounds, ledger
        self._url, self._headers = _post_target(settings.url, settings.header_values()) if settings.url else (None, {})
        self._targets = ([("notify.url", redact_url(settings.url), self._post)] if settings.url else []) + (
            [("notify.command", settings.command, self._run_command)] if settings.command else []
        )
        self._queue: queue.Queue[dict | None] = queue.Queue()
        self._given_up = threading.Event()
        self._queued = self._done = 0  # each written by one thread only
        self._thread = threading.Thread(target=self._send_in_order, name="flb-notify", daemon=True)
        self._thread.start()

    def notify(self, row: dict) -> None:
        """Queue the notification of a round from its metrics.jsonl row; returns at once."""
        privacy = row.get("privacy") or {}
        self._queued += 1
        self._queue.put(
            {
                "run_id": self.run_id,
                "round": row["round"],
                "num_rounds": self.num_rounds,
                "skipped": bool(row.get("skipped", False)),
                "num_clients": row["num_clients"],
                "eval_loss": _finite(row.get("eval_loss")),
                "accuracy": _finite(row.get("accuracy")),
                "epsilon": _finite(privacy.get("epsilon")),
                "global_digest": row["global_digest"],
                "ledger": None,
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )

    def close(self, timeout_s: float | None = None) -> None:
        """Wait up to `timeout_s` (default: the time one notification may take) for the queued notifications to be
        sent; past it, log how many were not and drop them."""
        timeout_s = len(self._targets) * self.settings.timeout_s if timeout_s is None else timeout_s
        self._queue.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._given_up.set()
            log.warning(
                "notify: %d round notifications not sent within %g s of the run's end; given up",
                self._queued - self._done,
                timeout_s,
            )

    def _send_in_order(self) -> None:
        while (payload := self._queue.get()) is not None and not self._given_up.is_set():
            self._send(payload)
            self._done += 1

    def _send(self, payload: dict) -> None:
        round = payload["round"]
        try:
            if self.ledger is not None:
                payload["ledger"] = _ledger_record(self.ledger, f"round:{round}")
        except Exception as exc:
            log.warning(
                "notify: round %d not notified: the ledger's state could not be read (%s)",
                round,
                redact_text(first_line(exc)),
            )
            return
        body = (json.dumps(payload) + "\n").encode()
        for key, shown, send in self._targets:
            try:
                send(body)
            except Exception as exc:
                log.warning(
                    "%s",
                    redact_text(f"{key} {shown}: round {round} not notified: {self._reason(exc)}; the run goes on"),
                )

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(self._url, data=body, method="POST", headers=self._headers)
        with _OPENER.open(request, timeout=self.settings.timeout_s):  # raises HTTPError unless the status is 2xx
            pass

    def _run_command(self, body: bytes) -> None:
        # its own process group, so a time-out kills whatever the shell started too, not only the shell
        with subprocess.Popen(
            self.settings.command,
            shell=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        ) as process:
            try:
                _, stderr = process.communicate(body, timeout=self.settings.timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate()
                raise
        if process.returncode != 0:
            raise subprocess.CalledProcessError(process.returncode, self.settings.command, stderr=stderr)

    def _reason(self, exc: Exception) -> str:
        if isinstance(exc, urllib.error.HTTPError):
            return f"HTTP {exc.code} {exc.reason}"
        if isinstance(exc, urllib.error.URLError):
            exc = exc.reason if isinstance(exc.reason, Exception) else exc
        if isinstance(exc, (TimeoutError, subprocess.TimeoutExpired)):
            return f"no answer within notify.timeout_s = {self.settings.timeout_s:g} s"
        if isinstance(exc, subprocess.CalledProcessError):
            stderr = exc.stderr.decode(errors="replace").strip()
            return f"exit status {exc.returncode}" + (f" ({stderr.splitlines()[0]})" if stderr else "")
        return first_line(exc)


@contextlib.contextmanager
def round_notifications(settings, run_id: str, num_rounds: int, ledger) -> Iterator[Callable[[dict], None] | None]:
    """The coordinator's `on_round` for `settings` (None, and no thread, when neither notify.url nor notify.command
    is set); the notifier is closed, bounded, when the block ends, however it ends."""
    if settings.url is None and settings.command is None:
        yield None
        return
    notifier = Notifier(settings, run_id, num_rounds, ledger if ledger.signing_domain is not None else None)
    try:
        yield notifier.notify
    finally:
        notifier.close()


def _post_target(url: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The URL to open (its user info removed) and the POST's headers: JSON, `headers`, and the user info as HTTP Basic
    authorization (RFC 7617; percent-escapes in the URL's user and password decoded first)."""
    parts = urlsplit(url)
    headers = {"Content-Type": "application/json", **headers}
    if parts.username is None:
        return url, headers
    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])), headers


def _ledger_record(ledger, record_id: str) -> dict:
    transaction = next(t for t in ledger.summary()["transactions"] if t["record"] == record_id)
    return {"record": record_id, "status": transaction["status"], "tx": transaction["tx"]}


def _finite(value) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None
