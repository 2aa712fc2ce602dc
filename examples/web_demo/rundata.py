"""Read-only access to run directories for the web demo: runs, config, metrics, rounds, chain trail.

Everything the pages show comes through here; a missing or corrupt file becomes a RunProblem whose
message says what is wrong and what to do, never a traceback."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

MAKE_A_RUN = "python main_simple_fl.py"


class RunProblem(Exception):
    """A run directory cannot be shown; the message is one line for the user."""


@dataclass(frozen=True)
class Run:
    path: Path
    config: dict

    @property
    def name(self) -> str:
        return self.path.name

    def metrics(self) -> list[dict]:
        """metrics.jsonl, re-read on every call so a running run shows its new rounds."""
        from flb.run.directory import RunDir

        try:
            return RunDir(self.path).metrics()
        except (ValueError, OSError) as exc:
            raise RunProblem(
                f"{self.path / 'metrics.jsonl'} is corrupt ({first_line(exc)}); "
                "the run directory was modified or is still being written"
            ) from None

    def rounds(self) -> list[int]:
        """Rounds whose global adapter is saved (round_0 is the base model's zero update)."""
        return sorted(
            int(p.parent.name[6:])
            for p in self.path.glob("round_*/adapter_model.safetensors")
            if p.parent.name[6:].isdigit()
        )

    def adapter_file(self, round: int) -> Path:
        return self.path / f"round_{round}" / "adapter_model.safetensors"

    def is_running(self) -> bool:
        """True while the last recorded round is below num_rounds (the run is going, or was cut off)."""
        done = [m["round"] for m in self.metrics() if m.get("kind") == "round"]
        return max(done, default=-1) < self.config.get("num_rounds", 0)

    def trail(self) -> dict | None:
        """RUN_DIR/chain/trail.json as the ledger exported it, or None when there is none."""
        from chain.trail import read_trail

        try:
            trail = read_trail(self.path)
        except (ValueError, OSError) as exc:
            raise RunProblem(
                f"{self.path / 'chain' / 'trail.json'} is corrupt ({first_line(exc)}); "
                "the ledger rewrites it when the run is resumed"
            ) from None
        if trail is not None and not {"contract", "blocks", "transactions"} <= trail.keys():
            raise RunProblem(
                f"{self.path / 'chain' / 'trail.json'} is not an FLB audit trail (no contract, blocks or transactions)"
            )
        return trail


def list_runs(target: Path) -> list[Path]:
    """Run directories next to `target` (its output_dir), newest first, `latest` resolved."""
    folder = target.parent if target.name == "latest" or (target / "config.json").is_file() else target
    if not folder.is_dir():
        return []
    runs = {p.resolve() for p in folder.iterdir() if (p / "config.json").is_file()}
    return sorted(runs, key=lambda p: p.name, reverse=True)


def open_run(path: Path) -> Run:
    """The run at `path`, with its config.json checked; RunProblem when it is not a readable run."""
    if not path.exists():
        raise RunProblem(f"{path} does not exist; make a run with `{MAKE_A_RUN}`")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise RunProblem(f"{path} is not a run directory (no config.json); point --run at output_dir/<run-id>")
    try:
        config = json.loads(config_file.read_text())
    except (ValueError, OSError) as exc:
        raise RunProblem(f"{config_file} is corrupt ({first_line(exc)}); this run cannot be shown") from None
    if not isinstance(config, dict) or "model" not in config:
        raise RunProblem(f"{config_file} holds no FLB config (no 'model' section); this run cannot be shown")
    return Run(path.resolve(), config)


def model_settings(run: Run):
    """The run's own ModelSettings, so the demo loads the same base model the run trained."""
    from flb.config import config_from_dict
    from flb.errors import ConfigError

    try:
        return config_from_dict(run.config).model
    except ConfigError as exc:
        raise RunProblem(f"{run.path / 'config.json'}: {exc}") from None


@dataclass(frozen=True)
class Verification:
    """chain.explorer's --verify on a run: what it read (its first line), the problems by round (-1: not about
    one round), its notes and how many checks passed."""

    source: str
    problems: dict[int, list[str]]
    notes: list[str]
    passed: int

    @property
    def count(self) -> int:
        return sum(map(len, self.problems.values()))


_ROUND_PROBLEM = re.compile(r"round (\d+)\b")  # chain.verify starts every problem about one round with it


def verify(run: Run) -> Verification:
    """`python -m chain.explorer RUN_DIR --verify` on this run: its files against the chain it was recorded on
    (for the embedded chain and anvil, the copy the run wrote; for rpc, the node in its config)."""
    from chain.errors import ChainError
    from chain.explorer import verify_run

    try:
        source, report = verify_run(run.path, rpc=None, openings=[], recompute=False)
    except (ChainError, OSError, ValueError, KeyError, TypeError) as exc:
        raise RunProblem(f"Run {run.name} cannot be checked against its chain: {first_line(exc)}") from None
    problems: dict[int, list[str]] = {}
    for problem in report.problems:
        number = _ROUND_PROBLEM.match(problem)
        problems.setdefault(int(number.group(1)) if number else -1, []).append(problem)
    return Verification(source, problems, report.notes, report.passed)


def first_line(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
