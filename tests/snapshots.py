"""A run, and the copy of its directory as it stood after round 1 resumed to the end: the copy holds every party's
secrets and the strategy's state as they were, so both must end alike."""

from __future__ import annotations

import shutil
from pathlib import Path
from unittest import mock


def run_and_resume_after_round_1(config, snapshot: Path, resume_sets: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """(the whole run of `config`, `snapshot` resumed to the end with `resume_sets` as --set overrides)."""
    import assembly
    from server import coordinator as coordinator_module

    complete = coordinator_module.RoundCoordinator._complete

    def complete_and_copy(self, round, *args):
        complete(self, round, *args)
        # the ledger's sender may be appending a block to the embedded chain meanwhile: a copy holding part of it
        # reopens at the block before (the outbox sends the rest again); an atomic write's temporary file is no state
        if round == 1:
            shutil.copytree(self.run.path, snapshot, ignore=shutil.ignore_patterns("*.tmp"))

    with mock.patch.object(coordinator_module.RoundCoordinator, "_complete", complete_and_copy):
        uninterrupted = assembly.run(config)
    args = assembly.parse_args(["--resume", str(snapshot), *(arg for set_ in resume_sets for arg in ("--set", set_))])
    return uninterrupted, assembly.run(assembly.resolve_config(args), resume=str(snapshot))
