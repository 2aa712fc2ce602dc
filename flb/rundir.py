"""One directory per run: resolved config, metrics.jsonl, round_<n>/ adapters, checkpoint state.

Layout:
  config.json                 the resolved config
  metrics.jsonl               one line per client per round ("client") and per round ("round")
  round_<n>/                  global adapter after round n (peft adapter dir; round_0 = base model)
  round_<n>/updates/client_<id>.safetensors   each accepted update of round n
  final_adapter/              the last global adapter
  checkpoint.json             the last completed round, its adapter digest, strategy and client states
  plots/*.png, summary.json
"""
from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from flb.digests import adapter_digest, adapter_file_digest
from flb.errors import RunDirError
from flb.types import AdapterState

CHECKPOINT = "checkpoint.json"
METRICS = "metrics.jsonl"
CONFIG = "config.json"


def write_json_atomic(path: Path, data) -> None:
    """Write to a temporary file, fsync, then rename over the target: readers see old or new, never half."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def create(cls, output_dir: str | Path, config: dict) -> "RunDir":
        output_dir = Path(output_dir)
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        run = cls(output_dir / run_id)
        run.path.mkdir(parents=True)
        write_json_atomic(run.path / CONFIG, config)
        _point_latest(output_dir, run_id)
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        run = cls(Path(path).resolve())
        if not (run.path / CONFIG).is_file():
            raise RunDirError(f"--resume: {str(path)!r} is not a run directory (no {CONFIG}); give output_dir/<run-id>")
        return run

    def config(self) -> dict:
        return json.loads((self.path / CONFIG).read_text())

    def round_dir(self, round: int) -> Path:
        return self.path / f"round_{round}"

    def save_round(self, round: int, adapter: AdapterState, peft_config, updates: dict[int, AdapterState]) -> None:
        from safetensors.torch import save_file

        from flb.modeling import save_adapter

        directory = save_adapter(adapter, peft_config, self.round_dir(round))
        if updates:
            (directory / "updates").mkdir(exist_ok=True)
        for client_id, tensors in updates.items():
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "updates" / f"client_{client_id}.safetensors"))

    def save_final(self, adapter: AdapterState, peft_config) -> Path:
        from flb.modeling import save_adapter

        return save_adapter(adapter, peft_config, self.path / "final_adapter")

    def append_metrics(self, *records: dict) -> None:
        with open(self.path / METRICS, "a") as handle:
            for record in records:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def metrics(self) -> list[dict]:
        path = self.path / METRICS
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_checkpoint(self, round: int, adapter: AdapterState, strategy_state: dict, client_states: dict) -> None:
        """Strategy and client states are JSON (privacy accountants, the adaptive clip norm), never pickles."""
        write_json_atomic(self.path / CHECKPOINT, {"round": round, "global_digest": adapter_digest(adapter),
                                                   "strategy": strategy_state, "clients": client_states})

    def read_checkpoint(self) -> tuple[int, AdapterState, dict, dict]:
        """The last completed round, its global adapter (digest-checked), the strategy and client states.

        metrics.jsonl lines written after that checkpoint (a round cut off mid-way) are dropped.
        """
        from safetensors.torch import load_file

        path = self.path / CHECKPOINT
        if not path.is_file():
            raise RunDirError(f"--resume: {str(self.path)!r} has no {CHECKPOINT}; the run stopped before its first "
                              "round was saved, so start it again")
        state = json.loads(path.read_text())
        weights = self.round_dir(state["round"]) / "adapter_model.safetensors"
        if not weights.is_file() or adapter_file_digest(weights) != state["global_digest"]:
            raise RunDirError(f"--resume: {weights} is missing or does not match the checkpoint digest; the run "
                              "directory was modified")
        self._drop_metrics_after(state["round"])
        return state["round"], load_file(str(weights)), state["strategy"], state.get("clients", {})

    def _drop_metrics_after(self, round: int) -> None:
        kept = [m for m in self.metrics() if m["round"] <= round]
        partial = self.path / (METRICS + ".partial")
        partial.write_text("".join(json.dumps(m, sort_keys=True) + "\n" for m in kept))
        os.replace(partial, self.path / METRICS)


def _point_latest(output_dir: Path, run_id: str) -> None:
    link = output_dir / "latest"
    partial = output_dir / f".latest-{run_id}"
    partial.symlink_to(run_id, target_is_directory=True)
    os.replace(partial, link)
