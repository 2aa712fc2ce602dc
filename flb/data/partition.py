"""Split training records over clients: IID, Dirichlet(alpha) over a label column, or by a column.

Each function returns one list of record indices per client; every client gets at least one.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from flb.errors import DataError

_DIRICHLET_TRIES = 100


def partition_indices(
    records: list[dict], num_clients: int, method: str, *, alpha: float, column: str, seed: int
) -> list[list[int]]:
    if len(records) < num_clients:
        raise DataError(
            f"num_clients: {num_clients} clients but only {len(records)} training records; "
            "lower num_clients or add data"
        )
    rng = np.random.default_rng(seed)
    if method == "iid":
        return iid(len(records), num_clients, rng)
    labels = _column_values(records, column, method)
    if method == "dirichlet":
        return dirichlet(labels, num_clients, alpha, rng)
    return by_column(labels, num_clients)


def iid(num_records: int, num_clients: int, rng: np.random.Generator) -> list[list[int]]:
    shuffled = rng.permutation(num_records)
    return [sorted(part.tolist()) for part in np.array_split(shuffled, num_clients)]


def dirichlet(labels: list, num_clients: int, alpha: float, rng: np.random.Generator) -> list[list[int]]:
    """Per label, client shares ~ Dir(alpha); redrawn until every client has data (Hsu et al., 2019)."""
    by_label = defaultdict(list)
    for index, label in enumerate(labels):
        by_label[label].append(index)
    for _ in range(_DIRICHLET_TRIES):
        parts = [[] for _ in range(num_clients)]
        for label in sorted(by_label, key=str):
            indices = rng.permutation(by_label[label])
            shares = rng.dirichlet([alpha] * num_clients)
            cuts = (np.cumsum(shares)[:-1] * len(indices)).astype(int)
            for client, chunk in enumerate(np.split(indices, cuts)):
                parts[client].extend(chunk.tolist())
        if all(parts):
            return [sorted(p) for p in parts]
    raise DataError(
        f"partition.alpha: {alpha} left a client with no data in {_DIRICHLET_TRIES} draws; "
        "raise partition.alpha or lower num_clients"
    )


def by_column(labels: list, num_clients: int) -> list[list[int]]:
    """Each distinct value goes whole to one client, values dealt round-robin in sorted order."""
    values = sorted(set(labels), key=str)
    if len(values) < num_clients:
        raise DataError(
            f"partition.column: only {len(values)} distinct values for {num_clients} clients; "
            "lower num_clients or partition by another column"
        )
    owner = {value: i % num_clients for i, value in enumerate(values)}
    parts = [[] for _ in range(num_clients)]
    for index, label in enumerate(labels):
        parts[owner[label]].append(index)
    return parts


def _column_values(records: list[dict], column: str, method: str) -> list:
    if column not in records[0]:
        raise DataError(
            f"partition.column: {column!r} is not a column of the data (columns: "
            f"{', '.join(sorted(records[0]))}); set it for partition.method={method}"
        )
    labels = [r.get(column) for r in records]
    if any(isinstance(label, (list, dict)) for label in labels):  # a conversation, not a label
        raise DataError(
            f"partition.column: {column!r} holds lists or mappings, not labels; name a column of labels such as task"
        )
    return labels
