"""The inspector end to end, in a real headless browser (Debian's chromium, driven by Playwright).

Against a real ``grm serve`` on the bundled GRM (so the judgments have real principles and
critiques) with ``--http-port 0 --record 50``: score through the Try it form, check the
page shows exactly what the gRPC service returns for the same request, open the recorded
input, and check that a response carrying ``<script>`` and ``<img onerror>`` stays text.
Against ``grm inspect`` on a saved eval report and a metrics file the test appends to:
the accuracy chart, the wrong items opening the one-input view, the run's curves
refreshing. The run is a real one, ``RUN``: the ``metrics.jsonl`` of
``grm grpo-demo --sft-steps 80 --steps 30 --prompts-per-step 4 --eval-every 10
--eval-queries 20`` (seed 0), fed to the page in two parts as a running trainer writes it. Every page is screenshotted into docs/screenshots/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from grm.default_model import PACKAGED
from services.client import RewardClient
from services.testing.serve_process import ServeProcess

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
        "--disable-component-update", "--disable-sync", "--disable-quic"]
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
DATA = Path(__file__).parent / "data" / "inspector"
RUN = DATA / "grpo-demo" / "metrics.jsonl"  # a real grm grpo-demo run (see the module docstring)
FIRST_PART = 5  # records on the page before the rest of the run is written
EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
QUERY = "Name a vegetable. Use capital letters only. End with a question mark."
OPTIONS = dict(k=3, temperature=0.5, max_new_tokens=200, seed=11, aggregation="voting")

if not os.path.exists(CHROMIUM):  # .ci/run installs it; a missing browser must fail, not skip
    raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium (see .ci/run)")


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    pg.dialogs = []  # an alert() from injected script would land here
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    yield pg
    context.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def served():
    proc = ServeProcess(PACKAGED, "--metrics-port", "-1", "--http-port", "0", "--record", "50")
    url = proc.wait_for_line("inspector on ", 60).split("inspector on ", 1)[1].strip()
    with RewardClient(proc.address, timeout_s=300) as client:
        client.wait_ready(timeout_s=120)
        yield proc, url.replace("/inspect", ""), client
    assert proc.stop() == 0, proc.output()


def judgments_on_page(scope) -> list[dict]:
    return scope.locator("details.sample").evaluate_all("""els => els.map(el => ({
        sample: Number(el.dataset.sample),
        principles: el.querySelector("pre.principles").textContent,
        critique: el.querySelector("pre.critique").textContent,
        raw: el.querySelector("pre.raw").textContent}))""")


def check_matches(scope, result) -> None:
    """The principles, critiques, scores and votes the page shows are the service's."""
    shown = judgments_on_page(scope)
    assert len(shown) == len(result.judgments) == OPTIONS["k"]
    for s, j in zip(shown, result.judgments):
        assert (s["principles"], s["critique"], s["raw"]) == (j.principles, j.critique, j.text)
    rows = scope.locator("table.votes tbody tr").evaluate_all("""rows => rows.map(r =>
        [...r.querySelectorAll("td.score")].map(td => td.dataset.score ? Number(td.dataset.score) : null))""")
    assert rows == [list(j.scores) if j.valid else [None] * len(j.permutation) for j in result.judgments]
    sums = scope.locator("tfoot td.vote-sum").evaluate_all("tds => tds.map(td => Number(td.dataset.voteSum))")
    assert sums == list(result.vote_sums)
    rewards = scope.locator("tr.response td.reward").evaluate_all("tds => tds.map(td => td.textContent)")
    assert rewards == [f"{r:.2f}" if r is not None else "unscored" for r in result.rewards]
    assert any(j.valid and j.principles and j.critique for j in result.judgments)  # a real judgment was compared


def test_try_it_shows_what_the_service_returns_and_keeps_markup_as_text(served, page):
    proc, base, client = served
    page.goto(f"{base}/inspect/try")
    page.fill("textarea[name=query]", QUERY)
    boxes = page.locator("textarea[name=response]")
    boxes.nth(0).fill("CARROT?")
    boxes.nth(1).fill(EVIL)
    for name in ("k", "temperature", "max_new_tokens", "seed"):
        page.fill(f"input[name={name}]", str(OPTIONS[name]))
    shot(page, "try-form")
    with page.expect_navigation(timeout=240_000):  # scoring on a shared CPU takes a while
        page.click("button[type=submit]", no_wait_after=True)
    page.wait_for_selector("section.result table.votes")
    reply = client.score(QUERY, ["CARROT?", EVIL], return_judgments=True, **OPTIONS)
    assert reply.from_cache  # the form's request scored it; this one reads the same result back
    check_matches(page.locator("section.result"), reply.result)
    texts = page.eval_on_selector_all("tr.response pre.response", "els => els.map(e => e.textContent)")
    assert texts == ["CARROT?", EVIL]
    assert page.evaluate("window.__pwned") is None and page.dialogs == []
    assert page.locator("section.result img").count() == 0
    shot(page, "try-result")
    page.goto(f"{base}/inspect/recent")
    callers = page.locator("table.recent tbody tr td:nth-child(3)").all_text_contents()
    assert callers[0].startswith("ipv4:127.0.0.1:")  # the gRPC call above, newest first
    assert callers[1].startswith("inspector try-it from 127.0.0.1:") and " via ipv4:127.0.0.1:" in callers[1]


def test_recent_requests_list_and_open_the_recorded_input(served, page):
    proc, base, client = served
    reply = client.score(QUERY, ["CARROT?", EVIL], return_judgments=True, **OPTIONS)  # cached or computed
    body = json.dumps({"query": ["Name a prime. 7"], "prompts": ["Name a prime. "], "labels": [""]}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{base}/get_reward", body), timeout=240) as r:
        assert r.status == 200
    page.goto(f"{base}/inspect/recent")
    callers = page.eval_on_selector_all("table.recent tbody tr td:nth-child(3)", "tds => tds.map(t => t.textContent)")
    assert callers[0].startswith("http 127.0.0.1:") and " via ipv4:127.0.0.1:" in callers[0]
    shot(page, "recent")
    page.locator("a.record-link").nth(1).click()  # the gRPC call before the HTTP one
    page.wait_for_selector("table.votes")
    check_matches(page, reply.result)  # judgments recorded although the reply carried them anyway
    assert page.evaluate("window.__pwned") is None and page.dialogs == []
    shot(page, "input")


@pytest.fixture(scope="module")
def inspected(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inspect") / "grpo-demo"  # the run's name on the page
    folder.mkdir()
    metrics = folder / "metrics.jsonl"
    write_steps(metrics, run_lines()[:FIRST_PART])
    shutil.copy(DATA / "report.json", folder / "report.json")
    proc = subprocess.Popen([sys.executable, "-m", "grm_cli", "inspect", str(DATA / "judgments.jsonl"), str(folder / "report.json"),
                  "--metrics", str(metrics), "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    assert line.startswith("inspector on "), proc.stderr.read() if proc.poll() is not None else line
    yield line.split("inspector on ", 1)[1].strip().replace("/inspect", ""), metrics
    proc.terminate()
    assert proc.wait(30) == 0


def run_lines() -> list[str]:
    return RUN.read_text().splitlines(keepends=True)


def write_steps(path: Path, lines: list[str]) -> None:
    """Append records of the real run, as its trainer did step by step."""
    with open(path, "a") as f:
        f.writelines(lines)


def test_an_eval_report_with_its_wrong_items(inspected, page):
    base, _ = inspected
    page.goto(f"{base}/inspect/eval/0")
    page.wait_for_selector(".chart .uplot canvas")
    assert page.locator("table.position tbody tr").count() == 4
    report = json.loads((DATA / "report.json").read_text())
    assert page.locator("table.accuracy tbody tr").count() == len(report["settings"]["k"])
    links = page.locator("a.item-link")
    assert links.count() >= 1
    shot(page, "eval-report")
    links.first.click()
    page.wait_for_selector("table.votes")
    assert page.locator(".conversation .turn").count() >= 1  # the synthetic data was regenerated
    assert len(judgments_on_page(page)) == report["settings"]["samples"]
    shot(page, "eval-item")


def test_a_training_run_refreshes_while_it_goes_on(inspected, page):
    base, metrics = inspected
    page.goto(f"{base}/inspect/run/0")
    page.wait_for_selector("[data-run-curve=reward] canvas")
    assert page.text_content("#steps") == str(FIRST_PART)
    assert page.locator("[data-run-curve] canvas").count() >= 4  # reward, unscored fraction, KL, agreement
    lines = run_lines()
    write_steps(metrics, lines[FIRST_PART:])
    expect(page.locator("#steps")).to_have_text(str(len(lines)), timeout=15_000)  # the page polls every 3 s
    assert float(page.text_content("#last-reward")) == pytest.approx(json.loads(lines[-1])["reward"], abs=5e-4)
    shot(page, "training-run")
