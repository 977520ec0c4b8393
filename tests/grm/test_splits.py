"""Preference data splits by prompt: stable, disjoint by prompt, near the asked share."""

import json
from pathlib import Path

import pytest

from grm.eval.splits import split_of

SLICE = Path(__file__).parent / "data" / "preferences_slice.jsonl"


def test_records_that_share_a_prompt_share_a_split_and_the_share_is_near_the_asked_one():
    rows = [json.loads(line) for line in SLICE.read_text().splitlines()]
    by_prompt: dict[str, set[str]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt"], set()).add(split_of(r["prompt"]))
    assert all(len(s) == 1 for s in by_prompt.values())
    prompts = [f"prompt number {i}" for i in range(4000)]
    share = sum(split_of(p) == "validation" for p in prompts) / len(prompts)
    assert 0.27 < share < 0.33
    assert sum(split_of(p, 0.5) == "validation" for p in prompts) / len(prompts) == pytest.approx(0.5, abs=0.03)


def test_the_split_is_a_fixed_function_of_the_text():
    # Fixed here so that a change of the hash (which would move prompts between the
    # splits of a model already trained) cannot pass unnoticed.
    assert [split_of(f"q{i}") for i in range(8)] == ["train"] * 4 + ["validation"] * 2 + ["train"] * 2
    assert split_of([{"role": "user", "content": "hi"}]) == split_of([{"content": "hi", "role": "user"}])
    assert split_of("anything", 0.0) == "train" and split_of("anything", 1.0) == "validation"
    with pytest.raises(ValueError, match="validation_share"):
        split_of("x", 1.5)


def test_spct_reads_one_split_and_the_two_splits_partition_the_file():
    from spct.data import load_preference_data, load_preference_splits

    train, validation = (load_preference_data(SLICE, split) for split in ("train", "validation"))
    assert len(train) + len(validation) == len(load_preference_data(SLICE))
    assert load_preference_splits(SLICE) == {"train": train, "validation": validation}  # one pass, same split
    assert not {str(i.item.conversation) for i in train} & {str(i.item.conversation) for i in validation}
    with pytest.raises(ValueError, match="split must be one of"):
        load_preference_data(SLICE, "test")


def test_grm_eval_reads_one_split_keeping_the_file_s_line_numbers():
    from grm.eval.records import load_data

    everything, _ = load_data(str(SLICE), None)
    validation, skipped = load_data(str(SLICE), None, "validation")
    train, _ = load_data(str(SLICE), None, "train")
    assert not skipped and 0 < len(validation) < len(everything) == len(validation) + len(train)
    assert {it.line for it in validation} | {it.line for it in train} == {it.line for it in everything}
    assert {it.source for it in validation} <= {it.source for it in everything}
    with pytest.raises(ValueError, match="split applies to a data file"):
        load_data("synthetic:test:5", None, "validation")


def test_records_without_a_prompt_field_split_by_the_dialogue_they_share(tmp_path):
    from grm.eval.records import load_data
    from grm.eval.splits import record_prompt

    hh = [{"chosen": f"\n\nHuman: Question {i}?\n\nAssistant: Answer {j}.", "rejected": f"\n\nHuman: Question {i}?\n\nAssistant: No."}
          for i in range(40) for j in range(2)]  # each prompt twice, with different replies
    assert record_prompt(hh[0]) == record_prompt(hh[1]) == "\n\nHuman: Question 0?"
    messages = {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]}
    assert record_prompt(messages) == [{"role": "user", "content": "hi"}]
    path = tmp_path / "hh.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in hh))
    train, validation = (load_data(str(path), None, s)[0] for s in ("train", "validation"))
    assert len(train) + len(validation) == len(hh) and validation and train  # each record in exactly one split
    lines = {it.line for it in validation}
    assert all(((n + 1) if n % 2 else (n - 1)) in lines for n in lines)  # both records of a prompt together
