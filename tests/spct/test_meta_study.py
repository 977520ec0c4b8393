"""The meta-RM recipe study: which samples and labels each recipe trains on, and a run end to end."""

import json

import pytest

from spct.meta_study import StudyConfig, recipe_data, run_study, validation_matrix


def row(item, scores, correct):
    return {"item": item, "permutation": [0, 1], "text": "t", "scores": scores, "correct": correct}


# item 0: best is response 0; item 1: best is response 1; item 2: three responses, best 2
BEST = [0, 1, 2]
ROWS = [row(0, [8, 5], True), row(0, [5, 5], False), row(0, [3, 7], False), row(0, None, False),
        row(1, [2, 6], True), row(1, [3, 9], True),
        row(2, [4, 4, 4], False), row(2, [1, 2, 9], True)]


def test_all_keeps_every_parsed_sample_with_the_rule_label():
    kept, labels = recipe_data(ROWS, BEST, "all")
    assert len(kept) == 7 and labels == [1, 0, 0, 1, 1, 0, 1]


def test_soft_labels_a_tie_by_the_chance_of_a_random_tie_break():
    _, labels = recipe_data(ROWS, BEST, "soft")
    assert labels == [1, 0.5, 0, 1, 1, pytest.approx(1 / 3), 1]


def test_mixed_keeps_only_prompts_whose_samples_disagree():
    kept, labels = recipe_data(ROWS, BEST, "mixed")
    assert [r["item"] for r in kept] == [0, 0, 0, 2, 2] and labels == [1, 0, 0, 0, 1]


def test_balanced_pairs_right_and_wrong_at_each_gap_without_ties():
    rows = [row(0, [9, 5], True), row(0, [8, 4], True), row(0, [5, 9], False),  # gap 4: two right, one wrong
            row(1, [2, 3], True), row(1, [3, 2], False), row(1, [4, 4], False),  # gap 1: one each, and a tie
            row(2, [9, 1], True)]  # gap 8: no wrong one to pair with
    kept, labels = recipe_data(rows, [0, 1, 0], "balanced")
    gaps = sorted((abs(r["scores"][0] - r["scores"][1]), label) for r, label in zip(kept, labels))
    assert gaps == [(1, 0), (1, 1), (4, 0), (4, 1)]
    with pytest.raises(ValueError, match="recipe"):
        recipe_data(rows, [0, 1, 0], "nope")


def test_validation_matrix_reads_the_judgments_file_format():
    lines = [{"line": 1, "best": 1, "sampled": [{"scores": [3, 7], "permutation": [1, 0]}, {"scores": None,
                                                                                          "permutation": [0, 1]}]},
             {"line": 2, "best": 0, "sampled": [{"scores": [6, 2, 1], "permutation": [2, 0, 1]},
                                                {"scores": [5, 5, 1], "permutation": [0, 1, 2]}]}]
    m, valid = validation_matrix(lines)
    assert m.scores.shape == (2, 2, 3) and list(m.best) == [1, 0]
    assert valid == [(0, 0), (1, 0), (1, 1)]
    assert list(m.scores[0, 0, :2]) == [3, 7] and m.valid.tolist() == [[True, False], [True, True]]


@pytest.mark.slow
def test_study_runs_end_to_end_on_saved_samples(tmp_path):
    """Steps 1-2 reuse the files given (a tiny random model writes no parseable judgment);
    each recipe then trains, rates the validation judgments and reports."""
    from grm.testing import build_tiny_model
    from spct.pipeline import FULL, train_items
    from spct.stages import meta_items

    grm = build_tiny_model(tmp_path / "grm")
    items = meta_items(train_items(FULL, 0), 6, 0)
    out = tmp_path / "study"
    out.mkdir()
    with open(out / "train_samples.jsonl", "w") as f:
        for i, it in enumerate(items):
            n = len(it.item.responses)
            for right in (True, False):
                scores = [5] * n
                if n > 1:
                    scores[it.best if right else (it.best + 1) % n] = 8
                f.write(json.dumps({"item": i, "permutation": list(range(n)), "text": f"Scores: {scores}",
                                    "scores": scores, "correct": right or n == 1}) + "\n")
    with open(out / "validation.jsonl", "w") as f:
        for line, best in ((1, 0), (2, 1), (3, 0)):
            sampled = [{"text": "x", "scores": [8, 3] if s % 2 else [3, 8], "permutation": [0, 1]} for s in range(4)]
            f.write(json.dumps({"line": line, "best": best, "sampled": sampled}) + "\n")
    returned = run_study(StudyConfig(out=str(out), grm=str(grm), prompts=6, val_items=3, steps=2, batch_size=4,
                                     recipes=("all", "balanced")))
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["recipe"] for r in returned] == [r["recipe"] for r in results]  # returned as written
    assert [r["recipe"] for r in results] == ["all", "balanced"]
    for r in results:
        assert r["k"] == [1, 2, 4] and r["train"]["steps"] == 2
        assert r["voting"][2] == pytest.approx(50, abs=5)  # two samples each way: every item ties at k = 4,
        # broken at random
        assert r["separation"]["right_vs_wrong_pairs"] == 12  # 2 right x 2 wrong in each of 3 items
        assert 0 <= r["separation"]["right_vs_wrong_auc"] <= 1
