"""Experiment tracking: a run's config, every round's metrics, the final adapter and the ledger's round transactions,
sent to TensorBoard and/or MLflow (`tracking.backends`) as the run goes.

Each completed round (the coordinator's `on_round`, given the round's metrics.jsonl row) is logged at step = round:
`eval/loss`, `eval/perplexity`, `eval/accuracy` and `eval/accuracy/<task>`, each eval suite's headline score
(`suites/<suite>/<metric>`), `privacy/epsilon`, `comm/round_mb` and `comm/total_mb`, `train/learning_rate`,
`train/loss/client_<i>` (a client under local DP sends no loss), `round/num_clients`, `round/time_s` and
`round/eval_time_s`; a value a round does not have, or a non-finite one, is left out. Each round's ledger transaction,
once the outbox knows its hash, becomes the MLflow tag `ledger.round_<n>.tx` (TensorBoard: the text `ledger/tx` at that
step); those still unknown at a round's end are tagged when the run ends, after the ledger has sent what it holds.

Where: TensorBoard's event files go to RUN_DIR/tracking/tensorboard (`tensorboard --logdir runs` shows every run);
MLflow writes to `tracking.uri` when set (a tracking server, `http://host:5000`), else to an SQLite store in the run
directory, sqlite:///RUN_DIR/tracking/mlflow.db, artifacts in RUN_DIR/tracking/mlartifacts (MLflow 3 refuses a file:
store unless MLFLOW_ALLOW_FILE_STORE is set; `mlflow ui --backend-store-uri sqlite:///RUN_DIR/tracking/mlflow.db` shows
it; a run directory moved or copied takes its store along). MLflow gets the resolved config as params (flattened keys,
`model.lora.r`), and, when the run ends well, the final adapter directory as the artifact `final_adapter` and
config.json. TensorBoard gets the config as the text `config` and as hparams. The MLflow run id is kept in
RUN_DIR/tracking/mlflow_run.json, so --resume goes on logging into the same MLflow run (a key --resume --set changed,
such as num_rounds, is the tag `config.<key>`: MLflow params cannot change), and TensorBoard's steps continue in the
same directory.

A tracker never stops a round: its first failure (an unreachable server, a URI MLflow cannot use, a full disk) is one
WARNING naming the backend, and that backend is dropped for the rest of the run. Unless set already, FLB sets
MLFLOW_HTTP_REQUEST_MAX_RETRIES=2 and MLFLOW_HTTP_REQUEST_TIMEOUT=10 (a dead server costs seconds, not MLflow's minutes
of retries) and MLFLOW_DISABLE_TELEMETRY=true (FLB runs offline and sends nothing anywhere unasked).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from flb.errors import ConfigError, first_line
from flb.run.comm import MB
from flb.run.redaction import redact_text, redact_url

log = logging.getLogger(__name__)

TRACKING_DIR = "tracking"
MLFLOW_RUN_FILE = "mlflow_run.json"
EXPERIMENT = "flb"
# backend -> (module imported, package to install)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard==2.21.0"), "mlflow": ("mlflow", "mlflow-skinny==3.18.0")}
MLFLOW_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
_ROUND_RECORD = re.compile(r"round:(\d+)")
_NOT_IN_MLFLOW_KEYS = re.compile(r"[^\w\-. :/]")  # what MLflow refuses in a metric, param or tag key


def check_backends(settings) -> None:
    """Each backend of `tracking.backends` can be imported; a ConfigError naming the package to install otherwise
    (run before anything is created)."""
    for name in settings.backends:
        module, package = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"tracking.backends: {name} needs the {package.split('==')[0]} package; pip install "
                f"{package} (or drop {name} from tracking.backends)"
            )


def round_scalars(row: dict, clients: list[dict]) -> dict[str, float]:
    """A round's numbers by tag (see the module's docstring), from its metrics.jsonl row and its clients' rows."""
    from flb.run.summary import suite_scores

    privacy = row.get("privacy") or {}
    scalars = {
        "eval/loss": row.get("eval_loss"),
        "eval/perplexity": row.get("perplexity"),
        "eval/accuracy": row.get("accuracy"),
        "privacy/epsilon": privacy.get("epsilon"),
        "train/learning_rate": row.get("learning_rate"),
        "round/num_clients": row.get("num_clients"),
        "round/time_s": row.get("round_time_s"),
        "round/eval_time_s": row.get("eval_time_s"),
    }
    scalars.update({f"eval/accuracy/{task}": value for task, value in (row.get("accuracy_by_task") or {}).items()})
    scalars.update({"suites/" + name.replace(" ", "/"): value for name, value in suite_scores(row).items()})
    if "comm_down_bytes" in row:
        scalars["comm/round_mb"] = (row["comm_down_bytes"] + row["comm_up_bytes"]) / MB
        scalars["comm/total_mb"] = (row["comm_total_down_bytes"] + row["comm_total_up_bytes"]) / MB
    scalars.update({f"train/loss/client_{c['client_id']}": c.get("train_loss") for c in clients})
    return {
        _NOT_IN_MLFLOW_KEYS.sub("_", tag): float(value)
        for tag, value in scalars.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def flat_config(config: dict, prefix: str = "") -> dict[str, str | int | float | bool]:
    """The resolved config as dotted keys (`model.lora.r`) with scalar values; lists, null and empty mappings as
    their JSON text."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            plain = isinstance(value, (str, int, float, bool)) and value is not None
            flat[f"{prefix}{key}"] = value if plain else json.dumps(value)
    return flat


class TensorBoardBackend:
    name = "tensorboard"

    def __init__(self, settings, run_path: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(log_dir=str(run_path / TRACKING_DIR / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```")
        for summary in hparams(flat_config(config), {"eval/loss": None, "eval/accuracy": None}):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def log_round(self, round: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, round)
        self.writer.flush()

    def log_transaction(self, round: int, tx: str) -> None:
        self.writer.add_text("ledger/tx", tx, round)
        self.writer.flush()

    def log_final(self, final_adapter: Path) -> None:
        self.writer.add_text("final_adapter", str(final_adapter))

    def close(self, failed: bool) -> None:
        self.writer.close()


class MlflowBackend:
    """One MLflow run per FLB run, reopened by --resume from RUN_DIR/tracking/mlflow_run.json."""

    name = "mlflow"

    def __init__(self, settings, run_path: Path, config: dict):
        for variable, value in MLFLOW_DEFAULTS.items():
            os.environ.setdefault(variable, value)
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its store set-up lines would tear the progress bars
        folder = (run_path / TRACKING_DIR).resolve()
        folder.mkdir(exist_ok=True)
        if settings.uri is None:
            _relocate_own_store(folder)
        self.uri = settings.uri or f"sqlite:///{folder / 'mlflow.db'}"
        self.shown_uri = redact_url(settings.uri) if settings.uri else None  # null: the run's own, wherever it moves
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id = self._reopened(folder / MLFLOW_RUN_FILE) or self._created(folder, run_path.name)
        self._log_config(config)

    def _reopened(self, record: Path) -> str | None:
        if not record.is_file():
            return None
        kept = json.loads(record.read_text())
        if kept.get("uri") != self.shown_uri:
            log.warning(
                "tracking: MLflow run %s is in %s, not in %s; logging into a new MLflow run",
                kept.get("run_id"),
                kept.get("uri") or "the run's own store",
                self.shown_uri or "the run's own store (tracking.uri null)",
            )
            return None
        self.client.update_run(kept["run_id"], status="RUNNING")
        from mlflow.tracking._tracking_service import utils

        # MLflow caches where a run's artifacts go for the process; the run directory may have moved since
        getattr(utils, "_artifact_repos_cache", {}).pop(kept["run_id"], None)
        return kept["run_id"]

    def _created(self, folder: Path, run_name: str) -> str:
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:  # in the run's own store its artifacts stay in the run directory; a server keeps them where it says
            location = None if self.uri.startswith(("http://", "https://")) else (folder / "mlartifacts").as_uri()
            experiment_id = self.client.create_experiment(EXPERIMENT, artifact_location=location)
        run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        (folder / MLFLOW_RUN_FILE).write_text(json.dumps({"run_id": run_id, "uri": self.shown_uri}) + "\n")
        return run_id

    def _log_config(self, config: dict) -> None:
        """Params for keys not logged yet; a value --resume --set changed becomes the tag config.<key>."""
        from mlflow.entities import Param, RunTag

        logged = self.client.get_run(self.run_id).data.params
        values = {_NOT_IN_MLFLOW_KEYS.sub("_", key): str(value)[:6000] for key, value in flat_config(config).items()}
        params = [Param(key, value) for key, value in values.items() if key not in logged]
        tags = [RunTag(f"config.{key}", value) for key, value in values.items() if logged.get(key, value) != value]
        for start in range(0, max(len(params), len(tags)), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(self.run_id, params=params[start : start + 100], tags=tags[start : start + 100])

    def log_round(self, round: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(tag, value, now, round) for tag, value in scalars.items()])

    def log_transaction(self, round: int, tx: str) -> None:
        self.client.set_tag(self.run_id, f"ledger.round_{round}.tx", tx)

    def log_final(self, final_adapter: Path) -> None:
        """The final adapter directory, and config.json as the run ended (a resume may have changed it)."""
        self.client.log_artifacts(self.run_id, str(final_adapter), "final_adapter")
        self.client.log_artifact(self.run_id, str(final_adapter.parent / "config.json"))

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def _relocate_own_store(folder: Path) -> None:
    """MLflow keeps artifact locations as absolute URIs: when a run directory was moved or copied, point those of its
    own store (folder/mlflow.db) at folder/mlartifacts again, so a resumed run's artifacts land in its directory."""
    import sqlite3

    if not (folder / "mlflow.db").is_file():
        return
    with contextlib.closing(sqlite3.connect(folder / "mlflow.db")) as db, db:
        [(location,)] = db.execute("SELECT artifact_location FROM experiments WHERE name = ?", (EXPERIMENT,))
        old, new = location.rpartition("/mlartifacts")[0] + "/mlartifacts", (folder / "mlartifacts").as_uri()
        if old != new:
            db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (old, new))
            db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))


BACKENDS = {"tensorboard": TensorBoardBackend, "mlflow": MlflowBackend}


class Tracker:
    """The run's tracking backends. Every call goes to each backend still working; a backend's first failure is one
    warning and drops it, and a failure outside the backends (a round's row or the ledger unreadable) is one warning
    and ends all tracking: nothing here raises into a round."""

    def __init__(self, settings, run_path: Path, config: dict):
        self.run_path, self.settings, self.ledger = run_path, settings, None
        self.backends: list = []
        for name in settings.backends:
            started, backend = self._guarded(name, BACKENDS[name], settings, run_path, config)
            self.backends += [backend] if started else []
        self._tagged: set[int] = set()

    def follow(self, ledger) -> None:
        """Tag each round with its transaction in `ledger` (a chain ledger; NullLedger records nothing)."""
        self.ledger = ledger if ledger.signing_domain is not None else None

    def on_round(self, row: dict) -> None:
        """Log a completed round (the coordinator's on_round) and the transactions known so far."""
        if self.backends:
            self._guarded("tracking", self._log_round, row)

    def close(self, final_adapter: Path | None) -> None:
        """The transactions the ledger now knows, the final adapter (None: the run did not end well), and each
        backend closed."""
        if self.backends:
            self._guarded("tracking", self._log_transactions)
        if final_adapter is not None:
            self._each("log_final", final_adapter)
        self._each("close", final_adapter is None)

    def _log_round(self, row: dict) -> None:
        from flb.run.directory import RunDir

        clients = [m for m in RunDir(self.run_path).metrics() if m["kind"] == "client" and m["round"] == row["round"]]
        self._each("log_round", row["round"], round_scalars(row, clients))
        self._log_transactions()

    def _log_transactions(self) -> None:
        if self.ledger is None:
            return
        for transaction in self.ledger.summary()["transactions"]:
            match = _ROUND_RECORD.fullmatch(transaction["record"])
            if match and transaction["tx"] and int(match[1]) not in self._tagged:
                self._tagged.add(int(match[1]))
                self._each("log_transaction", int(match[1]), transaction["tx"])

    def _each(self, method: str, *args) -> None:
        self.backends = [b for b in self.backends if self._guarded(b.name, getattr(b, method), *args)[0]]

    def _guarded(self, name: str, call: Callable, *args) -> tuple[bool, object]:
        """(True, call(*args)), or (False, None) after one warning naming `name` (a backend, or "tracking": then
        every backend is dropped)."""
        try:
            return True, call(*args)
        except Exception as exc:
            where = f" at {redact_url(self.settings.uri)}" if name == "mlflow" and self.settings.uri else ""
            key = "tracking" if name == "tracking" else f"tracking.backends {name}{where}"
            log.warning("%s", redact_text(f"{key}: {first_line(exc)}; {name} stops here, the run goes on"))
            if name == "tracking":
                self.backends = []
            return False, None


@contextlib.contextmanager
def experiment_tracking(settings, run_path: Path, config: dict) -> Iterator[Tracker]:
    """The run's Tracker while the block runs; closed when it ends, with the final adapter as an artifact when the
    block ended without an exception."""
    tracker = Tracker(settings, run_path, config)
    final_adapter = None
    try:
        yield tracker
        final_adapter = run_path / "final_adapter"
    finally:
        tracker.close(final_adapter if final_adapter is not None and final_adapter.is_dir() else None)


def each_round(*callbacks: Callable[[dict], None] | None) -> Callable[[dict], None] | None:
    """One `on_round` calling each given callback in turn; None when none is given."""
    given = [callback for callback in callbacks if callback is not None]
    if not given:
        return None

    def on_round(row: dict) -> None:
        for callback in given:
            callback(row)

    return on_round
