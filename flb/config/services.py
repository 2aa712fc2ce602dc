"""The sections of what a run talks to: notify, tracking, chain."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from flb.config.fields import described, one_of
from flb.errors import ConfigError, require

HTTP_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
ENV_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class NotifySettings:
    url: str | None = described(
        "POST a JSON summary of every round here (run id, round, eval loss, accuracy, "
        "epsilon, ledger transaction); user:password@ in it is sent as HTTP Basic "
        "authorization; null: none.",
        default=None,
    )
    command: str | None = described(
        "Run this shell command after every round with the same JSON on stdin (one line, "
        "newline-terminated); null: none.",
        default=None,
    )
    headers: dict = described(
        "HTTP headers of every notify.url POST, each mapped to the environment variable that "
        "holds its value (the config keeps the variable's name, never the value), e.g. "
        "{Authorization: SLACK_TOKEN}.",
        default_factory=dict,
    )
    timeout_s: float = described(
        "Longest a notification may take before it is given up (logged, the run goes on).", default=10.0
    )

    def __post_init__(self):
        require(self.url is None or _http_url(self.url), "notify.url", self.url, "an http:// or https:// URL, or null")
        require(
            self.command is None or bool(self.command.strip()),
            "notify.command",
            self.command,
            "a shell command, or null",
        )
        require(self.timeout_s > 0, "notify.timeout_s", self.timeout_s, "a number of seconds > 0")
        require(
            not self.headers or self.url is not None,
            "notify.headers",
            self.headers,
            "{} without notify.url (the headers go with its POST); set notify.url or drop them",
        )
        for name, variable in self.headers.items():
            require(
                isinstance(name, str) and HTTP_HEADER_NAME.fullmatch(name) is not None,
                "notify.headers",
                name,
                "HTTP header names (letters, digits and !#$%&'*+-.^_`|~), e.g. Authorization",
            )
            require(
                isinstance(variable, str) and ENV_VAR_NAME.fullmatch(variable) is not None,
                f"notify.headers.{name}",
                variable,
                "the name of an environment variable holding the value, e.g. SLACK_TOKEN",
            )
        require(
            not (self.url and "@" in urlsplit(self.url).netloc and "authorization" in map(str.lower, self.headers)),
            "notify.headers",
            "Authorization",
            "no Authorization header when notify.url holds user:password@ "
            "(sent as Basic authorization); keep one of the two",
        )

    def header_values(self) -> dict[str, str]:
        """notify.headers with each value read from its environment variable; a variable not set is a ConfigError
        naming it (checked before a run starts, and read again when the notifier starts)."""
        for name, variable in self.headers.items():
            if not os.environ.get(variable):
                raise ConfigError(
                    f"notify.headers.{name}: environment variable {variable} is not set; export it "
                    "(it holds the header's value), or drop the header"
                )
        return {name: os.environ[variable] for name, variable in self.headers.items()}


def _http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed [IPv6 bracket
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


TRACKING_BACKENDS = ("tensorboard", "mlflow")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://.*|file:.+|databricks")


@dataclass(frozen=True)
class TrackingSettings:
    backends: list[str] = described(
        "Experiment trackers that get the config, every round's metrics, the final adapter and "
        "each round's ledger transaction: " + " | ".join(TRACKING_BACKENDS) + " (a list; [] "
        "none).",
        default_factory=list,
    )
    uri: str | None = described(
        "mlflow: its tracking URI, e.g. a server http://localhost:5000; null: an SQLite store "
        "in the run directory (tracking/mlflow.db).",
        default=None,
    )

    def __post_init__(self):
        for backend in self.backends:
            one_of("tracking.backends", backend, TRACKING_BACKENDS)
        require(
            len(set(self.backends)) == len(self.backends),
            "tracking.backends",
            self.backends,
            "each backend at most once",
        )
        require(
            self.uri is None or "mlflow" in self.backends,
            "tracking.uri",
            self.uri,
            "null unless tracking.backends has mlflow (the URI is MLflow's)",
        )
        require(
            self.uri is None or _URI.fullmatch(self.uri) is not None,
            "tracking.uri",
            self.uri,
            "an MLflow tracking URI with its scheme, e.g. http://localhost:5000 or sqlite:///mlflow.db",
        )


@dataclass(frozen=True)
class ChainSettings:
    backend: str = described(
        "Ledger chain: embedded (in-process py-evm) | anvil (local node) | rpc (any JSON-RPC URL).", default="embedded"
    )
    rpc_url: str | None = described("JSON-RPC endpoint for backend rpc.", default=None)
    chain_id: int | None = described("Chain id expected at rpc_url (backend rpc).", default=None)
    contract_address: str | None = described("Reuse this FLB contract instead of deploying a new one.", default=None)
    scoring: str = described(
        "Contribution score: flb (uploads x update size + examples) | quality (leave-one-out eval-loss gain).",
        default="flb",
    )
    keystore_dir: str | None = described(
        "Folder of encrypted keystores: admin.json (backend rpc) and, under client_keys persistent, client_<i>.json.",
        default=None,
    )
    client_keys: str = described(
        "fresh: every client signs with a key made for the run (two runs cannot be linked by a "
        "client's address) | persistent: each client keeps its key across runs (in-process: "
        "keystore_dir/client_<i>.json; a Flower node: its node config keystore).",
        default="fresh",
    )
    password_env: str = described(
        "Environment variable holding the keystores' password.", default="FLB_KEYSTORE_PASSWORD"
    )
    explorer_url: str | None = described(
        "Link template per transaction, e.g. https://explorer.example/tx/{tx}.", default=None
    )
    record_participants: bool = described(
        "Record each round's clients, update digests and scores; false records a salted "
        "commitment to them instead (no scores).",
        default=True,
    )
    block_gas_limit: int | None = described(
        "Gas one client-registration or data-upload batch may use (clients are "
        "registered and uploaded in as many transactions as that takes); null: "
        "the node's block gas limit. The embedded chain is created with it.",
        default=None,
    )

    def __post_init__(self):
        one_of("chain.backend", self.backend, ("embedded", "anvil", "rpc"))
        one_of("chain.scoring", self.scoring, ("flb", "quality"))
        one_of("chain.client_keys", self.client_keys, ("fresh", "persistent"))
        least = 5_000_000  # the contract's deployment takes about 4 M gas
        require(
            self.block_gas_limit is None or self.block_gas_limit >= least,
            "chain.block_gas_limit",
            self.block_gas_limit,
            f"null (the node's) or at least {least} (the contract's deployment takes about 4 M gas)",
        )
        if self.backend == "rpc":
            require(self.rpc_url is not None, "chain.rpc_url", self.rpc_url, "an http(s) URL when chain.backend is rpc")
            require(
                self.chain_id is not None,
                "chain.chain_id",
                self.chain_id,
                "the chain's integer id when chain.backend is rpc",
            )
