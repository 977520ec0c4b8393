"""A rule-based teacher that writes correct judgments, and the rejection rule of SPCT.

In the paper a larger model wrote the cold-start judgments; here the tasks are
verifiable, so code writes them. The format is the judge's output format
(docs/design.md, "Judgment format") with the analysis written EVIDENCE FIRST: for each
response and each principle the observable fact, then the verdict, then the satisfied
weight and the score. The sizing run ("The small judge") found this the only format a
~3M-parameter model learned; the verdict-first form stayed at chance. Example for a
two-response task shown in the order (1, 0)::

    Specific Criteria:
    1. The answer has exactly 6 words (weight 40%).
    2. The answer ends with a question mark (weight 60%).

    Analysis:
    Response 1: 5 words vs 6 required, fails 1; ends with '?', meets 2; total 60%, score 6.
    Response 2: 6 words vs 6 required, meets 1; ends with '.' not '?', fails 2; total 40%, score 5.

    Scores: \\boxed{6, 5}

Wording varies (the verdict verbs and the total phrase are drawn once per judgment from
a few synonyms) while the structure stays fixed, so the text is short and regular.
"""

from __future__ import annotations

import random
from typing import Sequence

from grm.tasks import Task, satisfied_weight, score_from_weight

# (meets, fails) verb pairs and the phrase that introduces a response's satisfied weight.
_VERDICTS = (("meets", "fails"), ("satisfies", "violates"), ("passes", "misses"))
_TOTALS = ("total {w}%, score {s}", "met weight {w}%, so score {s}", "{w}% in all, score {s}")


def teacher_judgment(task: Task, permutation: Sequence[int], rng: random.Random) -> str:
    """A correct judgment of ``task`` whose responses are shown in ``permutation`` order.

    ``permutation[j]`` is the original index of the response shown at position j; it is
    called "Response j+1" and its score is the (j+1)-th number in the box.
    """
    n = len(task.responses)
    if sorted(permutation) != list(range(n)):
        raise ValueError(f"permutation must be a permutation of range({n}), got {tuple(permutation)}")
    meets, fails = rng.choice(_VERDICTS)
    total = rng.choice(_TOTALS)
    lines = ["Specific Criteria:"]
    lines += [f"{i}. {c.describe()} (weight {c.weight}%)." for i, c in enumerate(task.constraints, 1)]
    lines += ["", "Analysis:"]
    shown_scores = []
    for j, index in enumerate(permutation, 1):
        text = task.responses[index]
        checks = [f"{c.evidence(text)}, {meets if c.check(text) else fails} {i}"
                  for i, c in enumerate(task.constraints, 1)]
        weight = satisfied_weight(task.constraints, text)
        score = score_from_weight(weight)
        shown_scores.append(score)
        lines.append(f"Response {j}: {'; '.join(checks)}; {total.format(w=weight, s=score)}.")
    lines += ["", "Scores: \\boxed{" + ", ".join(map(str, shown_scores)) + "}"]
    return "\n".join(lines)


def judgment_is_correct(scores: Sequence[int] | None, true_scores: Sequence[int]) -> bool:
    """The SPCT rejection rule, with ``scores`` in the ORIGINAL response order.

    N >= 2: correct iff the ground-truth best response (the unique maximum of
    ``true_scores``) gets a score strictly higher than every other response, so a tie
    at the top is wrong. N == 1: correct iff the score equals the label. An invalid
    judgment (``None``) is never correct. Used to reject RFT trajectories and as the
    +1/-1 online RL reward (Liu et al. 2025, SPCT; docs/design.md, "SPCT").
    """
    if scores is None:
        return False
    if len(scores) != len(true_scores):
        raise ValueError(f"scores hold {len(scores)} values but true_scores hold {len(true_scores)}")
    if len(true_scores) == 1:
        return scores[0] == true_scores[0]
    top = max(true_scores)
    if list(true_scores).count(top) != 1:
        raise ValueError(f"true_scores {tuple(true_scores)} have no unique best response")
    best = list(true_scores).index(top)
    return all(scores[best] > s for i, s in enumerate(scores) if i != best)
