"""The Streamlit web demo in a real browser (Debian's chromium through playwright) on a tiny chain-recorded run.

A screenshot of each page is saved under test-artifacts/web/."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

import assembly
from chain import explorer
from chain.trail import read_trail
from flb.config import load_config
from flb.run.directory import RunDir

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "web"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


QUESTIONS = REPO / "tests" / "data" / "multiple_choice.jsonl"


def recorded_run_overrides(model_dir: Path, output: Path) -> list[str]:
    return [
        f"model.model_path={model_dir}",
        f"output_dir={output}",
        "num_clients=2",
        "clients_per_round=2",
        "num_rounds=1",
        "local_steps=1",
        "eval.size=4",
        "eval.max_new_tokens=2",
        "sft.max_length=64",
        "chain_record=true",
        "chain.backend=embedded",
        "eval.suites=[exact_match, multiple_choice]",
        f"eval.multiple_choice.path={QUESTIONS}",
    ]


@pytest.fixture(scope="module")
def web_run(tiny_model_dir, tmp_path_factory) -> Path:
    """One round, two clients, recorded on the embedded chain; beside it a tampered copy, a copy without its chain
    and a corrupt run."""
    output = tmp_path_factory.mktemp("web") / "runs"
    run_path = assembly.run(load_config(None, recorded_run_overrides(tiny_model_dir, output)))
    tampered = shutil.copytree(run_path, output / "tampered")
    update = tampered / "round_1" / "updates" / "client_1.safetensors"
    tensors = load_file(str(update))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 1e-3
    save_file(tensors, str(update))
    unverifiable = shutil.copytree(run_path, output / "unverifiable")
    (unverifiable / "chain" / "embedded_chain.db").unlink()
    (output / "broken").mkdir()
    (output / "broken" / "config.json").write_text("{not json")
    return run_path


@pytest.fixture(scope="module")
def private_run(web_run, tiny_model_dir) -> Path:
    """The same run with client-side DP, beside the others: the chain holds commitments, the clients' losses stay
    with them."""
    overrides = recorded_run_overrides(tiny_model_dir, web_run.parent) + [
        "client.local_dp=true",
        "client.dp.mode=update",
    ]
    return assembly.run(load_config(None, overrides))


@pytest.fixture(scope="module")
def split_run(web_run, tiny_model_dir) -> Path:
    """The same run in split mode (the tiny model's 2 blocks: the client keeps block 0, the server trains block 1)."""
    overrides = recorded_run_overrides(tiny_model_dir, web_run.parent) + ["mode=split", "split.tail_layers=0"]
    return assembly.run(load_config(None, overrides))


def start_app(run: Path, log: Path):
    """`streamlit run` on a free loopback port in its own process group; returns (process, url)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "examples/web_demo/app.py",
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--browser.gatherUsageStats",
        "false",
        "--",
        "--run",
        str(run),
    ]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.3)
    stop_app(process)
    pytest.fail(f"the web demo did not serve within 60 s:\n{log.read_text()[-3000:]}")


def stop_app(process) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def app_url(web_run, tmp_path_factory):
    process, url = start_app(web_run, tmp_path_factory.mktemp("app") / "streamlit.log")
    yield url
    stop_app(process)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright==1.65.2")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is missing: apt-get install -y --no-install-recommends chromium")
    sync_api.expect.set_options(timeout=60_000)  # the first chat page loads torch and the model
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 2000})
    page.set_default_timeout(60_000)
    yield page
    page.close()


def settle_and_screenshot(page, name: str) -> str:
    """Wait until the script run is over, check no traceback reached the page, save a screenshot."""
    from playwright.sync_api import expect

    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    expect(page.get_by_test_id("stSkeleton")).to_have_count(0)  # lazily loaded elements (tables, metrics) drawn
    expect(page.get_by_test_id("stException")).to_have_count(0)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    return page.get_by_test_id("stMainBlockContainer").inner_text()


def test_chat_page_streams_a_reply_from_the_base_and_the_tuned_model(app_url, page):
    from playwright.sync_api import expect

    page.goto(app_url)
    expect(page).to_have_url(re.compile(r"/chat\?run="))  # the root opens the chat page at its own address
    expect(page.get_by_text("Base + round 1 global adapter")).to_be_visible()
    page.get_by_test_id("stChatInputTextArea").fill("What is 2 + 3?")
    page.get_by_test_id("stChatInputTextArea").press("Enter")
    for side in ("base", "tuned"):
        expect(page.locator(f".st-key-reply-{side}-0")).to_have_text(re.compile(r"\S"))
    settle_and_screenshot(page, "chat")
    for side in ("base", "tuned"):
        reply = page.locator(f".st-key-reply-{side}-0").inner_text().strip()
        assert reply and "empty reply" not in reply, f"{side}: {reply!r}"
    assert "What is 2 + 3?" in page.get_by_test_id("stMainBlockContainer").inner_text()


def test_each_page_opens_at_its_own_address_with_a_minimal_toolbar(app_url, web_run, page):
    from playwright.sync_api import expect

    for path, heading in (("chat", "Chat"), ("training", "Training"), ("ledger", "Ledger")):
        page.goto(f"{app_url}/{path}")
        expect(page.get_by_role("heading", level=1)).to_have_text(heading)
        expect(page).to_have_url(f"{app_url}/{path}?run={web_run.name}")
        settle_and_screenshot(page, f"address-{path}")
        expect(page.get_by_role("dialog")).to_have_count(0)  # streamlit's "Page not found"
        expect(page.get_by_test_id("stHeader")).to_be_attached()  # drawn, and without the Deploy button in it
        expect(page.get_by_test_id("stAppDeployButton")).to_have_count(0)


def chart(page, title: str):
    """The Vega chart titled `title` (streamlit draws them as SVG, with ARIA labels for the axes and marks)."""
    return page.get_by_test_id("stVegaLiteChart").filter(has=page.locator(".role-title-text", has_text=title))


def test_training_page_shows_the_curves_and_the_config(app_url, page):
    from playwright.sync_api import expect

    page.goto(f"{app_url}/training")
    expect(page.get_by_text("Rounds done")).to_be_visible()
    expect(page.get_by_text("Resolved config")).to_be_visible()
    expect(page.get_by_test_id("stVegaLiteChart")).to_have_count(6)
    text = settle_and_screenshot(page, "training")
    assert "Evaluation suites" in text and "Score per suite (eval.suites)" in text
    assert "1 / 1" in text and "Resolved config" in text and "No ε recorded" in text
    assert "Communication" in text and re.search(r"Adapter tensors sent to and from clients in all\s+0\.\d{3} MB", text)
    assert "not the clients' contribution score" in text  # the suites' score is not the ledger's
    traffic = chart(page, "Adapter tensors per round")  # a bar each way, side by side, on an axis in MB from 0
    for direction in ("to clients", "from clients"):
        expect(traffic.locator(f'[aria-roledescription="bar"][aria-label*="series: {direction}"]')).to_have_count(1)
    assert traffic.locator("[aria-label^=\"Y-axis titled 'MB'\"] .role-axis-label text").count() >= 3


def test_training_page_lists_the_updates_that_missed_the_rounds_deadline(app_url, web_run, page):
    from playwright.sync_api import expect

    late = shutil.copytree(web_run, web_run.parent / "late")
    rows = [json.loads(line) for line in (late / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        if row["kind"] == "round" and row["round"] == 1:
            row["late"] = [{"client_id": 1, "reason": "client 1: its update came after the round's deadline"}]
    (late / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    page.goto(f"{app_url}/training?run=late")
    expect(page.get_by_text("Late updates (past server.round_deadline_s, or too stale under fedbuff)")).to_be_visible()
    expect(page.get_by_text("client 1: its update came after the round's deadline")).to_be_visible()
    assert "Rejected updates" not in settle_and_screenshot(page, "training-late")


def test_training_page_sets_each_clients_personal_adapter_beside_the_global_one(app_url, web_run, page):
    """The losses and exact-match accuracies clients report under strategy.personalization
    (tests/test_personalization.py checks them in a run) written into a copy of the run's metrics: a chart of the round
    mean losses and a row per client."""
    from playwright.sync_api import expect

    personal = shutil.copytree(web_run, web_run.parent / "personal")
    rows = [json.loads(line) for line in (personal / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        if row["kind"] == "client":
            row["personal"] = {
                "global_loss": 10.5,
                "personal_loss": 9.25 + row["client_id"],
                "global_accuracy": 0.25,
                "personal_accuracy": 0.75,
                "held_out": 4,
            }
    (personal / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    page.goto(f"{app_url}/training?run=personal")
    expect(page.get_by_text("Personal adapters", exact=True)).to_be_visible()
    means = chart(page, "Mean loss on the clients' own held-out records")
    expect(means.locator('[aria-roledescription="line mark"]')).to_have_count(2)
    for client_id, loss in ((0, "9.2500"), (1, "10.2500")):
        row = page.locator(".st-key-personal-clients").get_by_role("row").filter(has_text=loss)
        expect(row.get_by_role("cell")).to_have_text([str(client_id), loss, "10.5000", "0.7500", "0.2500"])
    settle_and_screenshot(page, "training-personal")


def test_ledger_page_shows_the_scores_and_verified_rounds(app_url, web_run, page):
    from playwright.sync_api import expect

    trail = read_trail(web_run)
    names = {address: f"client {i}" for i, address in enumerate(trail["accounts"]["clients"])}
    page.goto(f"{app_url}/ledger")
    expect(page.get_by_text("Score leaderboard")).to_be_visible()
    for number in (0, 1):
        expect(page.locator(f".st-key-round-{number}")).to_contain_text("verified")
    leaderboard = page.locator(".st-key-leaderboard")
    scores = explorer.scores_from(trail)
    assert len(scores) == 2
    for address, score in scores.items():
        expect(leaderboard.get_by_role("row").filter(has_text=names[address])).to_contain_text(str(score))
    expect(page.locator(".st-key-verify-source")).to_contain_text("a consistency check of a local export")
    expect(page.locator(".st-key-score-meaning")).to_contain_text(  # chain/scoring.py's flb_scores, in words
        "(chain.scoring: flb): for every round it takes part in, its data uploads × its update's size in bytes + its "
        "training examples"
    )
    text = settle_and_screenshot(page, "ledger")
    assert trail["contract"] in text and "mismatch" not in text.lower()


def test_training_page_of_a_private_run_shows_each_clients_epsilon(app_url, private_run, page):
    from playwright.sync_api import expect

    page.goto(f"{app_url}/training?run={private_run.name}")
    expect(page.get_by_text("ε of the run after round 1")).to_be_visible()
    expect(page.get_by_text("No local train loss")).to_be_visible()
    expect(page.get_by_test_id("stVegaLiteChart")).to_have_count(
        6
    )  # loss, perplexity, accuracy, suites, MB, ε per client
    text = settle_and_screenshot(page, "training-private")
    assert "No ε recorded" not in text
    # the two clients spend alike: one row and one line, named after both, beside the target; δ with each
    epsilon = [m for m in RunDir(private_run).metrics() if m.get("kind") == "round"][-1]["privacy"]["epsilon"]
    budget = page.locator(".st-key-privacy-budget").get_by_role("row").filter(has_text="clients 0-1")
    expect(budget.get_by_role("cell")).to_have_text(
        ["clients 0-1", f"{epsilon:.3f}", "8 (client.dp.target_epsilon)", "1e-05"]
    )
    epsilons = chart(page, "ε per client, δ = 1e-05")
    expect(epsilons.locator('[aria-roledescription="line mark"]')).to_have_attribute(
        "aria-label", re.compile("series: client 0 = client 1$")
    )
    expect(epsilons.locator('[aria-roledescription="rule mark"]')).to_have_attribute("aria-label", "value: 8")


def test_training_page_of_a_split_run_shows_the_cut_and_its_traffic(app_url, split_run, page):
    from playwright.sync_api import expect

    page.goto(f"{app_url}/training?run={split_run.name}")
    expect(page.get_by_text("Split learning")).to_be_visible()
    expect(page.get_by_test_id("stVegaLiteChart")).to_have_count(7)  # the default run's 6 and the cut's MB
    text = settle_and_screenshot(page, "training-split")
    assert "the first 1 and the last 0 blocks" in text and "trunk shared" in text
    assert re.search(r"Hidden states and gradients across the cut in all\s+0\.\d{3} MB", text)


def test_ledger_page_of_a_private_run_verifies_and_publishes_no_counts(app_url, private_run, page):
    from playwright.sync_api import expect

    page.goto(f"{app_url}/ledger?run={private_run.name}")
    for number in (0, 1):
        expect(page.locator(f".st-key-round-{number}")).to_contain_text("verified")
    expect(page.locator(".st-key-round-1")).to_contain_text("not published (DP)")
    text = settle_and_screenshot(page, "ledger-private")
    assert "mismatch" not in text.lower()


@pytest.fixture(scope="module")
def buffered_run(web_run, tiny_model_dir) -> Path:
    """The same run with strategy fedbuff over 3 rounds of one arrival: client 1, twice as slow, lands in round 3
    with the update it started from round 0."""
    overrides = recorded_run_overrides(tiny_model_dir, web_run.parent) + [
        "num_rounds=3",
        "strategy.name=fedbuff",
        "strategy.fedbuff.buffer_size=1",
        "server.min_clients=1",
        "simulation.client_speed=[1, 2]",
    ]
    return assembly.run(load_config(None, overrides))


def test_ledger_page_of_a_fedbuff_run_shows_where_each_update_started(app_url, buffered_run, page):
    from playwright.sync_api import expect

    page.goto(f"{app_url}/ledger?run={buffered_run.name}")
    for number in (0, 1, 2, 3):
        expect(page.locator(f".st-key-round-{number}")).to_contain_text("verified")
    expect(page.locator(".st-key-round-3").get_by_role("row").filter(has_text="client 1")).to_contain_text("round 0")
    expect(page.locator(".st-key-round-2")).to_contain_text("round 1")
    assert "mismatch" not in settle_and_screenshot(page, "ledger-fedbuff").lower()


@pytest.fixture(scope="module")
def crowded_run(web_run, tiny_model_dir) -> Path:
    """60 registered clients, 2 of them in its one round; a small block gas limit splits the uploads in two
    transactions."""
    overrides = recorded_run_overrides(tiny_model_dir, web_run.parent) + [
        "num_clients=60",
        "chain.block_gas_limit=5000000",
    ]
    return assembly.run(load_config(None, overrides))


PAGE_ROWS = 50  # examples/web_demo/ledger_page.py: the rows a page of a long list shows


def test_ledger_page_pages_the_clients_of_a_crowded_run(app_url, crowded_run, page):
    from playwright.sync_api import expect

    trail = read_trail(crowded_run)
    assert len(trail["accounts"]["clients"]) == 60 > PAGE_ROWS
    page.goto(f"{app_url}/ledger?run={crowded_run.name}")
    expect(page.get_by_text(f"rows 1-{PAGE_ROWS} of 60")).to_be_visible()
    expect(page.get_by_role("row").filter(has_text="client 59")).to_have_count(0)
    page.get_by_label("Page (of 2)").fill("2")
    page.get_by_label("Page (of 2)").press("Enter")
    expect(page.get_by_text(f"rows {PAGE_ROWS + 1}-60 of 60")).to_be_visible()
    expect(page.get_by_role("row").filter(has_text="client 59")).to_have_count(1)
    expect(page.get_by_text("DataUpload ×").first).to_be_attached()  # a batch's events counted, not listed
    for number in (0, 1):
        expect(page.locator(f".st-key-round-{number}")).to_contain_text("verified")
    settle_and_screenshot(page, "ledger-crowded")


def test_ledger_page_flags_a_tampered_update(app_url, web_run, page):
    from playwright.sync_api import expect

    page.goto(f"{app_url}/ledger?run=tampered")
    expect(page.locator(".st-key-round-1")).to_contain_text("mismatch")
    expect(page.locator(".st-key-round-1")).to_contain_text("round 1 client 1")
    expect(page.locator(".st-key-round-0")).to_contain_text("verified")
    # a copy of the run: the header names the chain file in the copy, not the one the run was written with
    expect(page.locator(".st-key-chain-source")).to_contain_text(
        f"embedded py-evm (saved in {web_run.parent / 'tampered' / 'chain' / 'embedded_chain.db'})"
    )
    text = settle_and_screenshot(page, "ledger-tampered")
    assert str(web_run) not in text


def test_a_run_without_its_chain_shows_the_trail_and_why_it_is_not_checked(app_url, page):
    from playwright.sync_api import expect

    page.goto(f"{app_url}/ledger?run=unverifiable")
    expect(page.get_by_text("Run unverifiable cannot be checked against its chain")).to_be_visible()
    for number in (0, 1):
        expect(page.locator(f".st-key-round-{number}")).to_contain_text("not checked")
    text = settle_and_screenshot(page, "ledger-unverifiable")
    assert "embedded_chain.db" in text and "verified" not in text.lower()


def test_a_corrupt_run_shows_a_clear_message(app_url, page):
    from playwright.sync_api import expect

    page.goto(f"{app_url}/?run=broken")
    expect(page.get_by_text("config.json is corrupt")).to_be_visible()
    settle_and_screenshot(page, "corrupt-run")


def test_no_run_yet_shows_the_command_that_makes_one(page, tmp_path):
    from playwright.sync_api import expect

    process, url = start_app(tmp_path / "runs" / "latest", tmp_path / "streamlit.log")
    try:
        page.goto(url)
        expect(page.get_by_text("No run yet")).to_be_visible()
        expect(page.get_by_test_id("stCode").first).to_contain_text("python main_simple_fl.py")
        text = settle_and_screenshot(page, "no-run")
    finally:
        stop_app(process)
    assert "python main_simple_fl.py" in text and "Traceback" not in text
