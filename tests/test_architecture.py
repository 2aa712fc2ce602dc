"""The house's shape: imports point down only (front ends -> assembly -> server, client, chain -> flb), checked over
every import statement, those inside functions included, and the command line stays thin."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FRONT_ENDS = ("main_simple_fl", "flb_flower", "bench", "examples", "tests")
# package -> the top-level packages of ours it must never import
FORBIDDEN = {
    "flb": ("server", "client", "chain", "assembly", *FRONT_ENDS),
    "server": ("client", "chain", "assembly", *FRONT_ENDS),
    "client": ("server", "chain", "assembly", *FRONT_ENDS),
    "chain": ("server", "client", "assembly", *FRONT_ENDS),
    "assembly": FRONT_ENDS,
}
# Programs of their own that live beside what they drive: the split node runs a client; the explorer hands the
# verifier the server's strategies for --recompute
FRONT_END_FILES = {REPO / "client" / "split_node.py", REPO / "chain" / "explorer.py"}


def imported_packages(path: Path) -> set[str]:
    """The top-level names of every module `path` imports, wherever the import statement is."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def upward_imports(package: str) -> list[str]:
    return [
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted((REPO / package).rglob("*.py"))
        if path not in FRONT_END_FILES
        for name in sorted(imported_packages(path) & set(FORBIDDEN[package]))
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_back_up(package):
    assert upward_imports(package) == []


def test_the_scan_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from server.coordinator import RoundCoordinator\n    import chain.ledger\n")
    assert imported_packages(module) == {"server", "chain"}


def test_the_command_line_is_thin():
    lines = len((REPO / "main_simple_fl.py").read_text().splitlines())
    assert lines < 100, f"main_simple_fl.py has {lines} lines: what builds or runs belongs in assembly/"
