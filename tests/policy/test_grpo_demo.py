"""``grm grpo-demo --quick``: the whole loop (policy fine-tuning, the bundled GRM served over
gRPC with Redis, GRPO, the rules' evaluation, the plot) in a short run."""

from __future__ import annotations

import json
import shutil

import pytest

from grm_cli.main import main

pytestmark = pytest.mark.slow


def test_quick_demo_writes_its_metrics_summary_and_plot(tmp_path):
    out = tmp_path / "demo"
    assert main(["grpo-demo", "--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, summary["steps"] + 1))
    assert all(0 <= r["true_pass_rate"] <= 1 and 1 <= r["true_score"] <= 10 for r in records)
    assert any(r["reward"] is not None for r in records)  # the bundled GRM judged for real
    assert [e["step"] for e in summary["evaluations"]][0] == 0
    assert summary["evaluations"][-1]["step"] == summary["steps"]
    assert summary["pass_rate_before"] == summary["evaluations"][0]["pass_rate"]
    assert summary["cache"].startswith("redis" if shutil.which("redis-server") else "in-memory")
    assert (out / "grpo_demo.png").stat().st_size > 10_000
