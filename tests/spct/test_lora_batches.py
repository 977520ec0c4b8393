"""The LoRA stages' batch plan: seeded epochs, and batches of similar lengths when lengths are given."""

import random

from spct.lora_sft import LoraSettings, batches


def _padded(plan, lengths):
    return sum(max(lengths[i] for i in batch) * len(batch) for batch in plan)


def test_grouped_batches_cover_each_epoch_once_and_pad_far_less_than_random_ones():
    rng = random.Random(3)
    lengths = [rng.randint(300, 1500) for _ in range(400)]
    settings = LoraSettings(batch_size=8, epochs=2.0, seed=0)
    plain, grouped = batches(400, settings), batches(400, settings, lengths)
    assert len(plain) == len(grouped) == 100
    for plan in (plain, grouped):
        for epoch in (plan[:50], plan[50:]):
            assert sorted(i for batch in epoch for i in batch) == list(range(400))
    assert grouped == batches(400, settings, lengths)  # a resumed run gets the same plan
    assert grouped[:50] != grouped[50:]  # each epoch its own order
    real = sum(lengths) * 2
    assert _padded(grouped, lengths) < 1.1 * real < 1.2 * real < _padded(plain, lengths)
    # the grouped batches are not simply sorted: long and short ones alternate through an epoch
    means = [sum(lengths[i] for i in b) / len(b) for b in grouped[:50]]
    assert means != sorted(means) and means != sorted(means, reverse=True)


def test_a_last_partial_batch_and_fractional_epochs_keep_the_planned_step_count():
    settings = LoraSettings(batch_size=4, epochs=1.5, seed=1)
    plan = batches(10, settings, [5, 9, 1, 7, 3, 8, 2, 6, 4, 10])
    assert len(plan) == 4 and sum(len(b) for b in plan[:3]) == 10
