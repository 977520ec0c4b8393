"""Offline evaluation of the GRM: labelled preference data in, accuracy@k with intervals out.

Two halves, both free of models and I/O beyond reading a file, so they test in milliseconds:

- **readers** turn JSONL lines in common preference formats into ``EvalItem``s (a
  ``ScoreInput``, the index of the labelled best response, the line's ``source`` field if
  it has one); a line that cannot be used becomes a ``Skipped`` with its line number and a
  reason, never an exception;
- **maths** over plain numpy arrays: a ``SampleMatrix`` holds the scores of S sampled
  judgments per item, and ``bootstrap_accuracy`` estimates accuracy@k for voting and
  meta-RM voting by drawing k-subsets of the S samples (docs/design.md, "The small judge"; the paper's
  figures are voting@k and MetaRM@k, DeepSeek-GRM, Liu et al. 2025, section 5), and
  ``meta_separation`` measures how well the meta RM orders samples of the same item;
  ``SampleMatrix.take`` restricts a matrix to some items (one source's), and
  ``longer_response_correct`` is the "longer response wins" baseline.

An item counts as correct under a subset when the labelled best response gets the
highest vote sum over the subset's valid samples, a tie broken uniformly at random (as
``grm.aggregation.best_index`` does); with no valid sample in the subset it is wrong.
Meta voting first keeps the ``k_meta = max(1, k // 2)`` valid samples of the subset that
the meta RM rates highest.

Example (3 items, 2 samples, 2 responses; NaN marks an invalid sample)::

    m = SampleMatrix(scores=np.array([[[8, 5], [6, 7]], [[3, 9], [nan, nan]], [[5, 5], [5, 5]]]),
                     best=np.array([0, 1, 0]))
    bootstrap_accuracy(m, ks=[2], rounds=200)["voting"][0].accuracy
    # item 0: sums 14 > 12, right; item 1: 9 > 3, right; item 2: 10 = 10, right half the time
    # -> about (1 + 1 + 0.5) / 3 = 0.83
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from grm.types import Message, ScoreInput, ScoreResult, StrEnum


# ---------------------------------------------------------------- readers

class SkipReason(StrEnum):
    BAD_JSON = "bad_json"  # the line is not JSON
    NOT_AN_OBJECT = "not_an_object"  # JSON, but not {...}
    UNKNOWN_FORMAT = "unknown_format"  # none of the known field sets
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"  # a field of the wrong type or shape
    EMPTY_RESPONSE = "empty_response"
    TOO_FEW_RESPONSES = "too_few_responses"  # accuracy needs at least 2 responses
    TIED_BEST = "tied_best"  # the labelled scores have no unique maximum
    BAD_BEST = "bad_best"  # best out of range, or not the unique top of the scores
    DIALOGUE_MISMATCH = "dialogue_mismatch"  # chosen and rejected differ before their last turn
    TOO_LONG = "too_long"  # (scoring) the judge prompt does not fit the model's context
    SCORING_ERROR = "scoring_error"  # (scoring) the service refused or failed the item


@dataclass(frozen=True)
class EvalItem:
    input: ScoreInput
    best: int  # index of the labelled best response in input.responses
    line: int  # 1-based line of the source file
    source: str = ""  # the record's ``source`` field (where the pair comes from), "" when absent


@dataclass(frozen=True)
class Skipped:
    line: int  # 1-based line of the source file
    reason: SkipReason
    detail: str = ""


class BadRecord(ValueError):
    def __init__(self, reason: SkipReason, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant",
          "gpt": "assistant", "bot": "assistant", "model": "assistant"}
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_HH_ASSISTANT = "\n\nAssistant:"


def parse_lines(lines: Iterable[str], limit: int | None = None) -> tuple[list[EvalItem], list[Skipped]]:
    """Read JSONL lines until ``limit`` usable items; blank lines are ignored."""
    items: list[EvalItem] = []
    skipped: list[Skipped] = []
    for number, line in enumerate(lines, 1):
        if limit is not None and len(items) >= limit:
            break
        if not line.strip():
            continue
        try:
            record = json.loads(line.strip())
        except json.JSONDecodeError as e:
            skipped.append(Skipped(number, SkipReason.BAD_JSON, str(e)))
            continue
        try:
            item, best = item_from_record(record)
        except BadRecord as e:
            skipped.append(Skipped(number, e.reason, e.detail))
            continue
        source = record.get("source")
        items.append(EvalItem(item, best, number, source if isinstance(source, str) else ""))
    return items, skipped


def item_from_record(record) -> tuple[ScoreInput, int]:
    """One record in any known format -> (input, index of the best response); BadRecord if unusable.

    Formats: ``{prompt?, chosen, rejected}`` (strings, message lists, or Anthropic HH
    dialogues ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``; best = chosen, shown first here,
    the judge shuffles anyway) and ``{conversation | messages | prompt | query, responses,
    best | scores}`` (our ``spct-task/1`` records are of this kind).
    """
    if not isinstance(record, dict):
        raise BadRecord(SkipReason.NOT_AN_OBJECT, type(record).__name__)
    if "chosen" in record or "rejected" in record:
        conversation, responses, best = _pairwise(record)
    elif any(key in record for key in ("responses", "conversation", "messages", "best", "scores")):
        conversation, responses, best = _listwise(record)
    else:
        raise BadRecord(SkipReason.UNKNOWN_FORMAT, f"fields {sorted(record)[:8]}")
    if not all(isinstance(r, str) for r in responses):
        raise BadRecord(SkipReason.BAD_FIELD, "responses must be strings")
    if len(responses) < 2:
        raise BadRecord(SkipReason.TOO_FEW_RESPONSES, f"{len(responses)} response(s)")
    empty = [i for i, r in enumerate(responses) if not r.strip()]
    if empty:
        raise BadRecord(SkipReason.EMPTY_RESPONSE, f"response {empty[0]} is empty")
    extra = {key: record[key] for key in ("principles", "reference") if isinstance(record.get(key), str)}
    try:
        return ScoreInput(conversation, responses, **extra), best
    except (ValueError, KeyError, TypeError) as e:
        raise BadRecord(SkipReason.BAD_FIELD, f"conversation: {e}") from None


def _pairwise(record: dict) -> tuple[list[Message], list[str], int]:
    for key in ("chosen", "rejected"):
        if key not in record:
            raise BadRecord(SkipReason.MISSING_FIELD, key)
    chosen, rejected, prompt = record["chosen"], record["rejected"], record.get("prompt")
    if isinstance(chosen, list) and isinstance(rejected, list):  # transcripts ending in the response
        (context, good), (other, bad) = _last_turn(chosen), _last_turn(rejected)
        if context != other:
            raise BadRecord(SkipReason.DIALOGUE_MISMATCH, "chosen and rejected differ before the last turn")
        return (context or _conversation(prompt)), [good, bad], 0
    if not (isinstance(chosen, str) and isinstance(rejected, str)):
        raise BadRecord(SkipReason.BAD_FIELD, "chosen and rejected must both be strings or message lists")
    if prompt:
        return _conversation(prompt), [chosen, rejected], 0
    return _split_hh(chosen, rejected)


def _listwise(record: dict) -> tuple[list[Message], list[str], int]:
    key = next((k for k in ("conversation", "messages", "prompt", "query") if record.get(k)), None)
    if key is None:
        raise BadRecord(SkipReason.MISSING_FIELD, "conversation")
    if not record.get("responses"):
        raise BadRecord(SkipReason.MISSING_FIELD, "responses")
    responses = record["responses"]
    if not isinstance(responses, list):
        raise BadRecord(SkipReason.BAD_FIELD, "responses must be a list")
    top = None
    if record.get("scores") is not None:
        scores = record["scores"]
        if (not isinstance(scores, list) or len(scores) != len(responses)
                or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores)):
            raise BadRecord(SkipReason.BAD_FIELD, f"scores must be {len(responses)} numbers")
        top = [i for i, s in enumerate(scores) if s == max(scores)]
        if len(top) > 1:
            raise BadRecord(SkipReason.TIED_BEST, f"responses {top} share the top score {max(scores)}")
    if "best" in record:
        best = record["best"]
        if isinstance(best, bool) or not isinstance(best, int) or not 0 <= best < len(responses):
            raise BadRecord(SkipReason.BAD_BEST, f"best must be an index in 0..{len(responses) - 1}, got {best!r}")
        if top is not None and top != [best]:
            raise BadRecord(SkipReason.BAD_BEST, f"best {best} is not the top of the scores")
        return _conversation(record[key]), responses, best
    if top is None:
        raise BadRecord(SkipReason.MISSING_FIELD, "best or scores")
    return _conversation(record[key]), responses, top[0]


def _conversation(value) -> list[Message]:
    """A string (plain query, or an HH dialogue) or a list of {role, content} messages."""
    if isinstance(value, str):
        return _hh_turns(value) if _HH_TURN.match(value) else [Message("user", value)]
    if not isinstance(value, list) or not value:
        raise BadRecord(SkipReason.BAD_FIELD, "the conversation must be a string or a non-empty message list")
    messages = []
    for m in value:
        if not (isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in _ROLES):
            raise BadRecord(SkipReason.BAD_FIELD, f"not a message with a known role and text content: {str(m)[:80]}")
        messages.append(Message(_ROLES[m["role"]], m["content"]))
    return messages


def _last_turn(messages: list) -> tuple[list[Message], str]:
    if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") not in ("assistant", "gpt"):
        raise BadRecord(SkipReason.BAD_FIELD, "a chosen/rejected transcript must end with an assistant turn")
    response = messages[-1].get("content")
    return (_conversation(messages[:-1]) if len(messages) > 1 else []), response


def _split_hh(chosen: str, rejected: str) -> tuple[list[Message], list[str], int]:
    """HH-RLHF pairs repeat the dialogue in both texts; they differ in the final Assistant turn."""
    cut_good, cut_bad = chosen.rfind(_HH_ASSISTANT), rejected.rfind(_HH_ASSISTANT)
    if cut_good < 0 or cut_bad < 0:
        raise BadRecord(SkipReason.MISSING_FIELD, "prompt (and chosen/rejected hold no HH 'Assistant:' turn)")
    if chosen[:cut_good] != rejected[:cut_bad]:
        raise BadRecord(SkipReason.DIALOGUE_MISMATCH, "chosen and rejected differ before the last Assistant turn")
    start = len(_HH_ASSISTANT)
    return _hh_turns(chosen[:cut_good]), [chosen[cut_good + start:].strip(), rejected[cut_bad + start:].strip()], 0


def _hh_turns(text: str) -> list[Message]:
    parts = _HH_TURN.split(text)  # ["", "Human", "hi", "Assistant", "hello", ...]
    if parts[0].strip() or len(parts) < 3:
        raise BadRecord(SkipReason.BAD_FIELD, "an HH dialogue must start with a 'Human:' turn")
    turns = [Message("user" if role == "Human" else "assistant", body.strip())
             for role, body in zip(parts[1::2], parts[2::2])]
    # A prompt written as "...\n\nAssistant:" (TRL's HH split) ends with the empty turn to fill.
    return turns[:-1] if turns[-1].role == "assistant" and not turns[-1].content else turns


# ---------------------------------------------------------------- maths

@dataclass(frozen=True)
class SampleMatrix:
    """S sampled judgments for each of I items with up to R responses, as arrays."""

    scores: np.ndarray  # [I, S, R] 1..10; NaN for an invalid sample and past an item's last response
    best: np.ndarray  # [I] index of the labelled best response
    meta: np.ndarray | None = None  # [I, S] meta RM rating per sample (finite where the sample is valid)
    shown_at: np.ndarray | None = None  # [I, S] 0-based position at which the best response was shown

    def __post_init__(self) -> None:
        scores = np.asarray(self.scores, dtype=float)
        if scores.ndim != 3 or 0 in scores.shape:
            raise ValueError(f"scores must be a non-empty [items, samples, responses] array, got shape {scores.shape}")
        best = np.asarray(self.best, dtype=int)
        if best.shape != scores.shape[:1] or not ((0 <= best) & (best < scores.shape[2])).all():
            raise ValueError(f"best must hold one index in 0..{scores.shape[2] - 1} per item, got {best}")
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "best", best)
        for name in ("meta", "shown_at"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=float if name == "meta" else int)
                if value.shape != scores.shape[:2]:
                    raise ValueError(f"{name} must have shape {scores.shape[:2]}, got {value.shape}")
                object.__setattr__(self, name, value)
        if self.meta is not None and not np.isfinite(self.meta[self.valid]).all():
            raise ValueError("meta must be finite for every valid sample")

    @property
    def valid(self) -> np.ndarray:  # [I, S]; response 0 exists in every item
        return ~np.isnan(self.scores[:, :, 0])

    def take(self, rows) -> "SampleMatrix":
        """The matrix of the items at ``rows`` (indices or a mask), e.g. one source's."""
        meta, shown_at = (None if a is None else a[rows] for a in (self.meta, self.shown_at))
        return SampleMatrix(self.scores[rows], self.best[rows], meta, shown_at)


@dataclass(frozen=True)
class Estimate:
    accuracy: float  # fraction in [0, 1]
    lo: float  # percentile interval
    hi: float

    def to_json(self) -> dict:
        return {"accuracy": self.accuracy, "interval": [self.lo, self.hi]}


def predict_best(vote_sums: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[..., R] -> [...] index of the largest sum, a tie broken uniformly at random."""
    top = vote_sums == vote_sums.max(axis=-1, keepdims=True)
    return np.where(top, rng.random(vote_sums.shape), -1.0).argmax(axis=-1)


def vote_correct(m: SampleMatrix, subsets: np.ndarray, rng: np.random.Generator,
                 k_meta: int | None = None, items: np.ndarray | None = None) -> np.ndarray:
    """[B, J, k] subsets (sample indices, ascending) -> [B, J] whether voting over each
    subset picks the labelled best.

    Slot j holds item j, or ``items[b, j]`` when given (a bootstrap resample of the items).
    With ``k_meta``, only the subset's k_meta valid samples with the highest meta rating
    vote (equal ratings: the lower sample index first, as ``grm.aggregation`` does).
    """
    if items is None:
        items = np.broadcast_to(np.arange(len(m.best)), subsets.shape[:2])
    rows = items[..., None]
    picked = m.scores[rows, subsets]  # [B, J, k, R]
    valid = ~np.isnan(picked[..., 0])  # [B, J, k]
    if k_meta is not None:
        if m.meta is None:
            raise ValueError("meta voting needs SampleMatrix.meta")
        rating = np.where(valid, m.meta[rows, subsets], -np.inf)
        top = np.argsort(-rating, axis=-1, kind="stable")[..., :k_meta]
        keep = np.zeros_like(valid)
        np.put_along_axis(keep, top, True, axis=-1)
        valid &= keep
    sums = np.where(valid[..., None], np.nan_to_num(picked), 0.0).sum(axis=-2)  # [B, J, R]
    missing = np.isnan(m.scores).all(axis=1)  # [I, R] padding (or never validly scored)
    sums = np.where(missing[items], -np.inf, sums)
    return (predict_best(sums, rng) == m.best[items]) & valid.any(axis=-1)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_accuracy(m: SampleMatrix, ks: Sequence[int], rounds: int = 1000, seed: int = 0,
                       aggregations: Sequence[str] = ("voting",), level: float = 0.95,
                       chunk: int = 64) -> dict[str, list[Estimate]]:
    """Accuracy@k per aggregation (``voting``, ``meta_voting``), one Estimate per k.

    The estimate: each round draws one k-subset per item, and it is the mean correctness
    over all rounds x I draws. With k = S every subset is the whole set, so it is exact
    but for random tie-breaks. The interval: each round also resamples the items with
    replacement, draws a fresh k-subset for every resampled slot (a repeated item gets
    independent draws), and takes the percentile interval of the rounds' accuracies;
    it carries both item and subset noise. Subsets of different k are nested (the first
    k of one random order per slot and round), which keeps the curve smooth in k.
    """
    num_items, num_samples, _ = m.scores.shape
    for k in ks:
        if not 1 <= k <= num_samples:
            raise ValueError(f"k must be in 1..{num_samples} (the samples per item), got {k}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    unknown = set(aggregations) - {"voting", "meta_voting"}
    if unknown:
        raise ValueError(f"aggregations must be voting or meta_voting, got {sorted(unknown)}")
    rng = np.random.default_rng(seed)
    resample = rng.integers(0, num_items, size=(rounds, num_items))  # [B, I] item bootstrap
    total = {(a, k): 0 for a in aggregations for k in ks}
    per_round = {(a, k): np.empty(rounds) for a in aggregations for k in ks}
    for start in range(0, rounds, chunk):
        stop = min(rounds, start + chunk)
        order = rng.random((stop - start, num_items, num_samples)).argsort(axis=-1)
        boot_order = rng.random((stop - start, num_items, num_samples)).argsort(axis=-1)
        for k in ks:
            subsets, boot_subsets = np.sort(order[..., :k], axis=-1), np.sort(boot_order[..., :k], axis=-1)
            for a in aggregations:
                k_meta = max(1, k // 2) if a == "meta_voting" else None
                total[a, k] += int(vote_correct(m, subsets, rng, k_meta).sum())
                per_round[a, k][start:stop] = vote_correct(m, boot_subsets, rng, k_meta,
                                                           items=resample[start:stop]).mean(axis=1)
    return {a: [Estimate(total[a, k] / (rounds * num_items), *percentile_interval(per_round[a, k], level))
                for k in ks] for a in aggregations}


def item_bootstrap(correct: np.ndarray, rounds: int = 1000, seed: int = 0, level: float = 0.95) -> Estimate:
    """[I] per-item correctness (e.g. greedy) -> mean and percentile interval over item resamples."""
    correct = np.asarray(correct, dtype=float)
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), size=(rounds, len(correct)))].mean(axis=1)
    return Estimate(float(correct.mean()), *percentile_interval(means, level))


def longer_response_correct(responses: Sequence[Sequence[str]], best: Sequence[int]) -> np.ndarray:
    """[I] whether "the longer response wins" picks the labelled best: right only when the
    best response is the unique longest by characters (a tie for the longest is wrong, as an
    unscored item is for the judge)."""
    out = []
    for texts, label in zip(responses, best):
        lengths = [len(t) for t in texts]
        out.append(lengths[label] == max(lengths) and lengths.count(max(lengths)) == 1)
    return np.array(out, dtype=bool)


def position_accuracy(correct: np.ndarray, shown_at: np.ndarray, num_positions: int) -> list[dict]:
    """Accuracy split by the 1-based position at which the best response was shown."""
    correct, shown_at = np.asarray(correct, dtype=float).ravel(), np.asarray(shown_at).ravel()
    return [{"position": p + 1, "accuracy": float(correct[shown_at == p].mean()) if (shown_at == p).any() else None,
             "count": int((shown_at == p).sum())} for p in range(num_positions)]


def matrix_from_results(results: Sequence[ScoreResult], best: Sequence[int], meta: bool = False) -> SampleMatrix:
    """The S judgments of each result (scores in original order) as a SampleMatrix;
    ``meta``: keep the meta RM's ratings (every valid judgment must have one)."""
    num_samples = {len(r.judgments) for r in results}
    if len(num_samples) != 1:
        raise ValueError(f"every result needs the same number of judgments, got {sorted(num_samples)}")
    shape = (len(results), num_samples.pop(), max(len(r.vote_sums) for r in results))
    scores, ratings = np.full(shape, np.nan), np.full(shape[:2], np.nan)
    shown_at = np.zeros(shape[:2], dtype=int)
    for i, (result, label) in enumerate(zip(results, best)):
        for s, j in enumerate(result.judgments):
            if j.valid:
                scores[i, s, :len(j.scores)] = j.scores
            if j.meta_score is not None:
                ratings[i, s] = j.meta_score
            shown_at[i, s] = j.permutation.index(label)
    return SampleMatrix(scores, np.asarray(best), ratings if meta else None, shown_at)


def sample_outcomes(m: SampleMatrix) -> np.ndarray:
    """[I, S] per sample: 1 when the labelled best response is strictly on top, 0 when it
    shares the top with another, -1 when another is above it, NaN for an invalid sample."""
    scores = np.where(np.isnan(m.scores), -np.inf, m.scores)
    rows = np.arange(len(m.best))
    best = scores[rows, :, m.best]  # [I, S]
    others = scores.copy()
    others[rows, :, m.best] = -np.inf
    with np.errstate(invalid="ignore"):  # an invalid sample: -inf - -inf
        gap = best - others.max(axis=-1)
    return np.where(m.valid, np.sign(gap), np.nan)


def within_item_auc(rating: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> tuple[float | None, int]:
    """AUC of ``rating`` [I, S] for samples marked ``upper`` against samples marked ``lower``
    ([I, S] masks), counting only pairs from the same item (equal ratings count 1/2).
    Returns (AUC or None when there is no pair, number of pairs)."""
    higher = rating[:, :, None] > rating[:, None, :]  # [I, S, S]
    equal = rating[:, :, None] == rating[:, None, :]
    pairs = upper[:, :, None] & lower[:, None, :]
    count = int(pairs.sum())
    if not count:
        return None, 0
    return float((higher[pairs].sum() + 0.5 * equal[pairs].sum()) / count), count


def meta_separation(m: SampleMatrix) -> dict:
    """How well the meta RM tells samples of the same item apart, which is all guided voting
    uses: right rankings against wrong ones, and untied against tied (a tie at the top
    changes no vote between the tied responses, so spotting ties alone gains nothing)."""
    if m.meta is None:
        raise ValueError("meta_separation needs SampleMatrix.meta")
    outcome = sample_outcomes(m)
    rating = np.where(m.valid, m.meta, np.nan)
    right_wrong, n_rw = within_item_auc(rating, outcome == 1, outcome == -1)
    untied_tied, n_ut = within_item_auc(rating, np.abs(outcome) == 1, outcome == 0)
    return {"right_vs_wrong_auc": right_wrong, "right_vs_wrong_pairs": n_rw,
            "untied_vs_tied_auc": untied_tied, "untied_vs_tied_pairs": n_ut,
            "share": {name: float((outcome[m.valid] == v).mean()) if m.valid.any() else None
                      for name, v in (("right", 1), ("tied", 0), ("wrong", -1))}}


def accuracy_figures(m: SampleMatrix, greedy_correct: np.ndarray, ks: Sequence[int],
                     aggregations: Sequence[str] = ("voting",), rounds: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """A report's ``accuracy`` entry: per aggregation one {k, accuracy, interval} per k, and
    ``greedy`` (``greedy_correct`` is [I]); for all items or any subset (``SampleMatrix.take``)."""
    curves = bootstrap_accuracy(m, ks, rounds, seed, aggregations, level)
    accuracy = {a: [{"k": k, **e.to_json()} for k, e in zip(ks, curve)] for a, curve in curves.items()}
    accuracy["greedy"] = item_bootstrap(greedy_correct, rounds, seed, level).to_json()
    return accuracy


def summarize(m: SampleMatrix, greedy_correct: np.ndarray, greedy_shown_at: np.ndarray, ks: Sequence[int],
              aggregations: Sequence[str] = ("voting",), rounds: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict:
    """The figures of a report: accuracy@k per aggregation and greedy (with intervals),
    the parse-valid rate, and accuracy by the position at which the best response was shown
    (voting@1, i.e. each sample on its own, and greedy; ``greedy_*`` are [I])."""
    num_items, num_samples, num_positions = m.scores.shape
    alone = np.broadcast_to(np.arange(num_samples)[:, None, None], (num_samples, num_items, 1))
    single = vote_correct(m, alone, np.random.default_rng([seed, 1])).T  # [I, S]
    report = {
        "accuracy": accuracy_figures(m, greedy_correct, ks, aggregations, rounds, seed, level),
        "parse_valid_rate": float(m.valid.mean()),
        "position_bias": {"voting@1": position_accuracy(single, m.shown_at, num_positions),
                          "greedy": position_accuracy(greedy_correct, greedy_shown_at, num_positions)},
    }
    if m.meta is not None:
        report["meta_rm"] = meta_separation(m)
    return report
