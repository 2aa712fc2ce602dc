"""One directory per run: resolved config, metrics.jsonl, round_<n>/ adapters, checkpoint state.

Layout:
  config.json                 the resolved config
  metrics.jsonl               one line per client per round ("client") and per round ("round")
  round_<n>/                  global adapter after round n (peft adapter dir; round_0 = base model)
  round_<n>/updates/client_<id>.safetensors   each accepted update of round n
  final_adapter/              the last global adapter
  checkpoint.json             the last completed round, its adapter digest, the strategy's state
  checkpoint_<n>.safetensors  the tensors of the strategy's state after round n (moments, control variates),
                              named in checkpoint.json with their digest
  declared_<digest>.json      what each client declared when it joined (shard size, address), named in
                              checkpoint.json with its digest
  plots/*.png, summary.json
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from flb.atomic import write_atomic, write_json_atomic
from flb.audit.digests import adapter_digest
from flb.errors import RunDirError, first_line
from flb.run.redaction import redact_config
from flb.run.state_tensors import join_tensors, split_tensors
from flb.types import AdapterState

CHECKPOINT = "checkpoint.json"
STATE_TENSORS = "checkpoint_{round}.safetensors"
DECLARED = "declared_{digest}.json"  # what the clients declared (shard size, address), named by its digest
METRICS = "metrics.jsonl"
CONFIG = "config.json"
RESUMES = "resumes.jsonl"
SUMMARY = "summary.json"
PRIVATE = "private"
START_AGAIN = "the run cannot be resumed; start a new run"

log = logging.getLogger(__name__)


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._declared_written: tuple[tuple[int, int], dict] | None = None  # (the declarations' version, reference)

    @classmethod
    def create(cls, output_dir: str | Path, config: dict) -> RunDir:
        """A new run directory under output_dir; config.json holds `config` with credentials in URLs redacted."""
        output_dir = Path(output_dir)
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        run = cls(output_dir / run_id)
        _check_output_dir(output_dir)
        try:
            run.path.mkdir(parents=True)
        except (OSError, ValueError) as exc:  # ValueError: a path the OS cannot represent
            raise RunDirError(
                f"output_dir: cannot create {str(run.path)!r} ({first_line(exc)}); choose a folder you can write to"
            ) from None
        write_json_atomic(run.path / CONFIG, redact_config(config))
        _point_latest(output_dir, run_id)
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        try:
            run = cls(Path(path).resolve())
        except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop
            raise RunDirError(
                f"--resume: {str(path)!r} is not a usable path ({first_line(exc)}); give output_dir/<run-id>"
            ) from None
        if not (run.path / CONFIG).is_file():
            raise RunDirError(f"--resume: {str(path)!r} is not a run directory (no {CONFIG}); give output_dir/<run-id>")
        return run

    def config(self) -> dict:
        config = _load_json(self.path / CONFIG)
        if not isinstance(config, dict):
            raise RunDirError(f"{str(self.path / CONFIG)!r} holds {type(config).__name__}, not a config; {START_AGAIN}")
        return config

    def finished_rounds(self) -> int | None:
        """How many rounds the run had when it last ended well (summary.json, written last, says so); None while it
        has not."""
        path = self.path / SUMMARY
        summary = _load_json(path) if path.is_file() else None
        rounds = summary.get("rounds") if isinstance(summary, dict) else None
        return rounds if _is(rounds, int) else None

    def saved_round(self) -> int | None:
        """The last round whose checkpoint was written (what --resume goes on after); None before round 0's."""
        path = self.path / CHECKPOINT
        checkpoint = _load_json(path) if path.is_file() else None
        round = checkpoint.get("round") if isinstance(checkpoint, dict) else None
        return round if _is(round, int) else None

    def private_dir(self, party: str) -> Path:
        """RUN_DIR/private/<party>/, where a party keeps its secrets; private/ is readable by its owner only."""
        root = self.path / PRIVATE
        root.mkdir(mode=0o700, exist_ok=True)
        return root / party

    def round_dir(self, round: int) -> Path:
        return self.path / f"round_{round}"

    def save_round(self, round: int, adapter: AdapterState, peft_config, updates: dict[int, AdapterState]) -> None:
        from safetensors.torch import save_file

        from flb.model.load import save_adapter

        directory = save_adapter(adapter, peft_config, self.round_dir(round))
        if updates:
            (directory / "updates").mkdir(exist_ok=True)
        for client_id, tensors in updates.items():
            save_file(
                {k: v.contiguous() for k, v in tensors.items()},
                str(directory / "updates" / f"client_{client_id}.safetensors"),
            )

    def save_final(self, adapter: AdapterState, peft_config) -> Path:
        from flb.model.load import save_adapter

        return save_adapter(adapter, peft_config, self.path / "final_adapter")

    def append_metrics(self, *records: dict) -> None:
        with open(self.path / METRICS, "a") as handle:
            for record in records:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def metrics(self) -> list[dict]:
        """Every record of metrics.jsonl; a torn last line (a write cut short, or still going on) is left out."""
        return self._read_metrics()[0]

    def _read_metrics(self) -> tuple[list[dict], bool]:
        """The records, and whether the last line was torn. A bad line anywhere else is a RunDirError."""
        path = self.path / METRICS
        if not path.exists():
            return [], False
        lines = [(number, line) for number, line in enumerate(_read_text(path).split("\n"), 1) if line.strip()]
        records = []
        for number, line in lines:
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                if number == lines[-1][0]:
                    return records, True
                record = None
            if not (isinstance(record, dict) and isinstance(record.get("round"), int)):
                raise RunDirError(
                    f"{str(path)!r} line {number} is not a metrics record; the file was damaged, {START_AGAIN}"
                )
            records.append(record)
        return records, False

    def write_checkpoint(
        self, round: int, adapter: AdapterState, strategy_state: dict, declared: dict, schedule: dict | None = None
    ) -> None:
        """The strategy's state (privacy accountant, adaptive clip norm, moments), what each client declared when it
        joined (shard size, address) and, under fedbuff, its clock and jobs (server/buffered.py), as JSON and
        safetensors, never pickles. No party's secrets: those are in private/. Tensors in the strategy's state go
        to checkpoint_<round>.safetensors and the declarations to declared_<digest>.json, each written before
        checkpoint.json names it, so a crash between them leaves the previous checkpoint whole; the declarations
        only when clients have joined since (a round costs the same with 10 or 10,000 of them)."""
        from safetensors.torch import save

        state, tensors = split_tensors(strategy_state)
        checkpoint = {
            "round": round,
            "global_digest": adapter_digest(adapter),
            "strategy": state,
            "declared": self._declared_file(declared),
        }
        if schedule is not None:
            checkpoint["schedule"] = schedule
        kept = None
        if tensors:
            kept = STATE_TENSORS.format(round=round)
            write_atomic(self.path / kept, save(tensors), 0o644)
            checkpoint["strategy_tensors"] = {"file": kept, "digest": adapter_digest(tensors)}
        write_json_atomic(self.path / CHECKPOINT, checkpoint)
        for stale in (*self.path.glob(STATE_TENSORS.format(round="*")), *self.path.glob(DECLARED.format(digest="*"))):
            if stale.name not in (kept, checkpoint["declared"]["file"]):
                stale.unlink()

    def _declared_file(self, declared: dict) -> dict:
        """The checkpoint's reference to the file of `declared` (client id -> what it declared), written when that
        has changed: clients are only ever added to it, so the dict and its size tell a new version from the last."""
        version = (id(declared), len(declared))
        if self._declared_written is None or self._declared_written[0] != version:
            data = json.dumps(declared, sort_keys=True).encode()
            digest = _sha256(data)
            name = DECLARED.format(digest=digest[:16])
            write_atomic(self.path / name, data, 0o644)
            self._declared_written = (version, {"file": name, "digest": digest, "clients": len(declared)})
        return self._declared_written[1]

    def read_checkpoint(self) -> dict:
        """The last completed round, its global adapter (digest-checked) as "adapter", the strategy's state and the
        clients' declarations.

        metrics.jsonl lines written after that checkpoint (a round cut off mid-way) are dropped.
        """
        path = self.path / CHECKPOINT
        if not path.is_file():
            raise RunDirError(
                f"--resume: {str(self.path)!r} has no {CHECKPOINT}; the run stopped before its first "
                "round was saved, so start it again"
            )
        state = _load_json(path)
        if not isinstance(state, dict):
            raise RunDirError(f"--resume: {str(path)!r} holds {type(state).__name__}, not a checkpoint; {START_AGAIN}")
        for key, kind in CHECKPOINT_KEYS.items():
            if not _is(state.get(key), kind):
                raise RunDirError(
                    f"--resume: {str(path)!r} has no valid {key!r} (expected {kind.__name__}); {START_AGAIN}"
                )
        weights = self.round_dir(state["round"]) / "adapter_model.safetensors"
        adapter = _load_adapter(weights)
        if adapter is None or adapter_digest(adapter) != state["global_digest"]:
            raise RunDirError(
                f"--resume: {weights} is missing or does not match the checkpoint digest; the run "
                "directory was modified"
            )
        self._drop_metrics_after(state["round"])
        return {
            **state,
            "strategy": self._strategy_state(state, path),
            "declared": self._declarations(state, path),
            "adapter": adapter,
        }

    def round_adapter(self, round: int) -> AdapterState:
        """A completed round's global adapter, checked against the digest of its metrics.jsonl line."""
        weights = self.round_dir(round) / "adapter_model.safetensors"
        adapter = _load_adapter(weights)
        rows = [m for m in self.metrics() if m["kind"] == "round" and m["round"] == round]
        if adapter is None or [adapter_digest(adapter)] != [m["global_digest"] for m in rows]:
            raise RunDirError(
                f"--resume: {weights} is missing or does not match round {round}'s digest in metrics.jsonl; the run "
                "directory was modified"
            )
        return adapter

    def _declarations(self, checkpoint: dict, path: Path) -> dict:
        """What the clients declared, from the digest-checked file the checkpoint names."""
        reference = checkpoint["declared"]
        if "file" not in reference:  # the declarations themselves, as in every checkpoint before they had a file
            return reference
        data = self._referenced(reference, "declared", ".json", path, _read_bytes, _sha256)
        return json.loads(data)

    def _strategy_state(self, checkpoint: dict, path: Path) -> dict:
        """The checkpoint's strategy state with its tensors put back from the digest-checked safetensors file."""
        reference = checkpoint.get("strategy_tensors")
        if reference is None:  # a state of plain JSON, as every checkpoint before tensors were allowed
            return checkpoint["strategy"]
        tensors = self._referenced(reference, "strategy_tensors", ".safetensors", path, _load_adapter, adapter_digest)
        try:
            return join_tensors(checkpoint["strategy"], tensors)
        except (KeyError, TypeError):
            raise RunDirError(
                f"--resume: {str(path)!r} names a strategy tensor that {reference['file']} does not hold; {START_AGAIN}"
            ) from None

    def _referenced(self, reference, key: str, suffix: str, path: Path, load: Callable, digest: Callable):
        """What the file that checkpoint `path`'s `key` names ({"file": name in this directory, "digest"}) holds,
        read by `load` (None when it cannot be) and checked against the digest by `digest`."""
        name = reference.get("file") if isinstance(reference, dict) else None
        if not (isinstance(name, str) and Path(name).name == name and name.endswith(suffix)):
            raise RunDirError(f"--resume: {str(path)!r} has no valid {key!r}; {START_AGAIN}")
        content = load(self.path / name)
        if content is None or digest(content) != reference.get("digest"):
            raise RunDirError(
                f"--resume: {str(self.path / name)!r} is missing or does not match the digest in {CHECKPOINT}; "
                "the run directory was modified"
            )
        return content

    def record_resume(self, config: dict) -> None:
        """Write the resumed run's config back (redacted) and append what it changed to resumes.jsonl."""
        before, after = self.config(), redact_config(config)
        changed = _flat_diff(before, after)
        with open(self.path / RESUMES, "a") as handle:
            handle.write(
                json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "changed": changed}, sort_keys=True) + "\n"
            )
        write_json_atomic(self.path / CONFIG, after)

    def _drop_metrics_after(self, round: int) -> None:
        """Keep the lines of rounds up to `round`: later ones (and a torn last line) are from a round cut short."""
        records, torn = self._read_metrics()
        if torn:
            log.warning("%s: dropped its torn last line (the run stopped while writing it)", self.path / METRICS)
        kept = [m for m in records if m["round"] <= round]
        write_atomic(self.path / METRICS, "".join(json.dumps(m, sort_keys=True) + "\n" for m in kept).encode())


# what write_checkpoint writes and read_checkpoint needs back
CHECKPOINT_KEYS = {"round": int, "global_digest": str, "strategy": dict, "declared": dict}


def _is(value, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirError(f"{str(path)!r} cannot be read ({first_line(exc)}); {START_AGAIN}") from None


def _load_json(path: Path):
    try:
        return json.loads(_read_text(path))
    except (ValueError, RecursionError) as exc:  # an empty or truncated file, a crash mid-write
        raise RunDirError(f"{str(path)!r} is not valid JSON ({first_line(exc)}); {START_AGAIN}") from None


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _load_adapter(weights: Path):
    """The tensors of a saved adapter, or None when the file is missing or not a whole safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(weights))
    except (OSError, SafetensorError):
        return None


def _check_output_dir(output_dir: Path) -> None:
    """Refuse before creating anything: an output_dir that is a file, or a `latest` that is not our link."""
    if output_dir.exists() and not output_dir.is_dir():
        raise RunDirError(f"output_dir: {str(output_dir)!r} is a file, not a folder; choose another output_dir")
    latest = output_dir / "latest"
    if latest.exists() and not latest.is_symlink():
        raise RunDirError(
            f"output_dir: {str(latest)!r} is not the link FLB keeps to the newest run; move it away "
            "or choose another output_dir"
        )


def _flat_diff(before: dict, after: dict, prefix: str = "") -> dict[str, tuple]:
    """Dotted key -> (before, after) for every leaf value that differs."""
    changed = {}
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed.update(_flat_diff(old, new, f"{prefix}{key}."))
        elif old != new:
            changed[f"{prefix}{key}"] = (old, new)
    return changed


def _point_latest(output_dir: Path, run_id: str) -> None:
    link = output_dir / "latest"
    partial = output_dir / f".latest-{run_id}"
    partial.symlink_to(run_id, target_is_directory=True)
    os.replace(partial, link)
