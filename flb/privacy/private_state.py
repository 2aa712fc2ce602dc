"""One party's private directory: the secrets it never sends (generator state, accountant, salts, key).

In one process each client has RUN_DIR/private/client_<id>/ and the server RUN_DIR/private/server/
(the server code never reads a client's); on a Flower SuperNode the client's is the node's own
`state-dir`. Files are readable by their owner only. State is saved once per round as its own
snapshot, so a round that runs again after a crash starts from exactly the state its first attempt
started from, and draws the same secret randomness. Openings (salt and digest behind each salted
commitment this party put on chain) are kept so the party can prove a commitment to an auditor.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from flb.atomic import write_atomic, write_json_atomic
from flb.errors import RunDirError
from flb.types import AdapterState

OPENINGS = "openings.json"
_SNAPSHOT = re.compile(r"state_round_(\d+)\.json")
KEEP_SNAPSHOTS = 3


class PrivateState:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def save(self, round: int, state: dict, tensors: AdapterState | None = None) -> None:
        """The party's state after `round`; older snapshots beyond the newest few are removed. `tensors` (SCAFFOLD's
        client variate) go to a safetensors file written before the JSON, which is what marks the round saved; they
        come back as the snapshot's "tensors"."""
        if tensors:
            from safetensors.torch import save

            write_atomic(self.directory / f"state_round_{round}.safetensors", save(tensors), 0o600)
        write_json_atomic(self.directory / f"state_round_{round}.json", {"round": round, **state}, mode=0o600)
        for old in self._rounds()[:-KEEP_SNAPSHOTS]:
            (self.directory / f"state_round_{old}.json").unlink(missing_ok=True)
            (self.directory / f"state_round_{old}.safetensors").unlink(missing_ok=True)

    def load_before(self, round: int) -> dict | None:
        """The newest snapshot saved after a round earlier than `round`, or None."""
        earlier = [r for r in self._rounds() if r < round]
        return self._snapshot(earlier[-1]) if earlier else None

    def latest(self) -> dict | None:
        rounds = self._rounds()
        return self._snapshot(rounds[-1]) if rounds else None

    def _snapshot(self, round: int) -> dict:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        state = self._read(self.directory / f"state_round_{round}.json")
        path = self.directory / f"state_round_{round}.safetensors"
        try:
            return {**state, "tensors": load_file(str(path)) if path.is_file() else {}}
        except (OSError, SafetensorError) as exc:
            raise RunDirError(
                f"{path}: unreadable private state ({type(exc).__name__}); restore it from a backup or start a new run"
            ) from None

    def _rounds(self) -> list[int]:
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _SNAPSHOT.fullmatch(p.name)))

    def _read(self, path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RunDirError(
                f"{path}: unreadable private state ({type(exc).__name__}); restore it from a backup or start a new run"
            ) from None

    def record_opening(self, commitment: str, salt: bytes, digest: str, what: str, value=None) -> None:
        """Keep what opens `commitment`: the salt and the digest it hides (and the JSON `value` the digest is of,
        when it is not a file's)."""
        openings = self.openings()
        openings[commitment] = {
            "salt": salt.hex(),
            "digest": digest,
            "what": what,
            **({"value": value} if value is not None else {}),
        }
        write_json_atomic(self.directory / OPENINGS, openings, mode=0o600)

    def openings(self) -> dict[str, dict]:
        path = self.directory / OPENINGS
        return self._read(path) if path.is_file() else {}
