"""The messages between the main process and a worker: one frame (flb.frames) per message of a pipe, and how a
ClientUpdate travels in one."""

from __future__ import annotations

import threading

from flb.frames import decode_frame, encode_frame, grouped, ungrouped
from flb.types import ClientUpdate, update_from_header, update_header


class Channel:
    """Frames over one end of a pipe. Sends hold a lock: a worker logs from any thread, and a large frame takes the
    pipe several writes, so without it a log record could land inside a reply."""

    def __init__(self, conn):
        self.conn, self.lock = conn, threading.Lock()

    def send(self, op: str, header: dict | None = None, tensors: dict | None = None) -> None:
        frame = encode_frame(op, header, tensors)
        with self.lock:
            self.conn.send_bytes(frame)

    def receive(self) -> tuple[str, dict, dict]:
        """(op, header, tensors) of the next frame; flb.frames.FrameError for bytes that are not one."""
        return decode_frame(self.conn.recv_bytes())

    def close(self) -> None:
        self.conn.close()


def update_reply(update: ClientUpdate, peak_bytes: int) -> tuple[str, dict, dict]:
    """A fit's reply: the update's fields and the job's peak memory in the header, its tensors and extras."""
    return (
        "done",
        {"peak_bytes": peak_bytes, **update_header(update)},
        grouped(tensors=update.tensors, extras=update.extras),
    )


def read_update(header: dict, tensors: dict) -> ClientUpdate:
    """The ClientUpdate of an `update_reply`."""
    return update_from_header(header, *ungrouped(tensors, "tensors", "extras"))
