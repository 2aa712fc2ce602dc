"""Benchmark scripts (python -m bench.<name>); each size is measured in a fresh process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def measure_in_child(module: str, *args: str, env: dict[str, str] | None = None) -> dict:
    """`python -m <module> --one <args>` in a process of its own (its own heap and peak memory), offline, with `env`
    added to its environment; the JSON object its last stdout line holds. A child that fails is a RuntimeError with
    its exit code and last stderr line."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    done = subprocess.run([sys.executable, "-m", module, "--one", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        raise RuntimeError(f"exit {done.returncode}: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])
