"""``grm spct --quick`` end to end: every stage writes a checkpoint that loads with
``from_pretrained``, the RFT filter keeps only correct samples of not-too-easy prompts, RL
moves the weights, and the meta RM is a one-label sequence classifier.

The main run starts from the shipped GRM (``--base-model grm/models/grm-default``) so
that its samples parse and the RFT and RL stages have real signal to act on; a second
run starts from nothing through the cold start (tokenizer training and model building).
"""

import json
import time
from collections import defaultdict

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from grm.default_model import PACKAGED
from grm.judge import GenerativeRewardModel
from grm.meta_rm import MetaRewardModel
from spct.data import SPCT_TEMPLATE
from grm_cli.main import main as grm_main


def main(argv):
    return grm_main(["spct", *argv])

pytestmark = pytest.mark.slow
QUICK_LIMIT_S = 120


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    if not (PACKAGED / "config.json").exists():
        pytest.fail("the shipped GRM is missing: grm/models/grm-default")
    out = tmp_path_factory.mktemp("spct")
    start = time.monotonic()
    assert main(["--out", str(out), "--quick", "--base-model", str(PACKAGED), "--hinted", "--seed", "1"]) == 0
    return out, time.monotonic() - start


def test_quick_pipeline_is_quick(quick_run):
    _, seconds = quick_run
    assert seconds < QUICK_LIMIT_S, f"the quick pipeline took {seconds:.0f}s"


def test_every_stage_wrote_a_loadable_checkpoint(quick_run):
    out, _ = quick_run
    for stage in ("cold_start", "rft", "rl"):
        model = AutoModelForCausalLM.from_pretrained(out / stage)
        assert model.config.vocab_size > 0
        assert (out / stage / "tokenizer.model").is_file()
        grm = GenerativeRewardModel.load(str(out / stage), device="cpu")
        assert grm.template == SPCT_TEMPLATE  # the checkpoint carries its template
    report = json.loads((out / "report.json").read_text())
    for stage in ("cold_start", "rft", "rl", "meta_rm"):
        assert stage in report and report[stage]["wall_s"] >= 0
    assert report["rl"]["group_size"] == 4


def test_rft_kept_only_correct_samples_of_prompts_not_all_correct(quick_run):
    out, _ = quick_run
    rows = [json.loads(line) for line in (out / "rft_samples.jsonl").read_text().splitlines()]
    by_item = defaultdict(list)
    for r in rows:
        by_item[r["item"]].append(r)
    assert all(sum(not r["hinted"] for r in group) == 3 for group in by_item.values())  # 3 samples a prompt
    for group in by_item.values():
        all_correct = all(r["correct"] for r in group if not r["hinted"])
        for r in group:
            assert r["kept"] == (r["correct"] and not all_correct)
            assert not r["correct"] or r["scores"] is not None
    report = json.loads((out / "report.json").read_text())["rft"]
    assert report["kept"] == sum(r["kept"] for r in rows)
    assert report["dropped_all_correct"] == sum(all(r["correct"] for r in g if not r["hinted"])
                                                for g in by_item.values())


def test_rl_changed_the_parameters(quick_run):
    out, _ = quick_run
    before, after = load_file(out / "rft" / "model.safetensors"), load_file(out / "rl" / "model.safetensors")
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, f"only {len(changed)} of {len(before)} tensors changed"


def test_meta_rm_is_a_one_label_classifier(quick_run):
    out, _ = quick_run
    model = AutoModelForSequenceClassification.from_pretrained(out / "meta_rm")
    assert model.config.num_labels == 1
    meta = MetaRewardModel.load(str(out / "meta_rm"), device="cpu")
    [p] = meta.score([("a judge prompt", "Scores: \\boxed{7, 3}")])
    assert 0.0 <= p <= 1.0


def test_from_nothing_through_the_cold_start(tmp_path):
    start = time.monotonic()
    assert main(["--out", str(tmp_path), "--quick", "--stop-after", "cold_start"]) == 0
    assert time.monotonic() - start < QUICK_LIMIT_S
    assert (tmp_path / "tokenizer" / "tokenizer.model").is_file()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "cold_start")
    assert model.config.model_type == "llama" and model.config.hidden_size == 64


def test_preference_data_without_judgments_skips_the_cold_start(tmp_path):
    from grm.tasks import generate_tasks

    data = tmp_path / "prefs.jsonl"
    with open(data, "w") as f:
        for t in generate_tasks(60, seed=9, split="train"):
            f.write(json.dumps({"prompt": t.query, "chosen": t.responses[t.best],
                                "rejected": t.responses[1 - t.best]}) + "\n")
    out = tmp_path / "run"
    assert main(["--out", str(out), "--quick", "--data", str(data), "--base-model", str(PACKAGED),
                 "--stop-after", "rft"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["cold_start"] == {"skipped": True} and not (out / "cold_start").exists()
    assert report["rft"]["samples"] == 3 * report["rft"]["prompts"] and (out / "rft" / "config.json").exists()
