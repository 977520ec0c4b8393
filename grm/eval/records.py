"""Reading labelled preference data: JSONL lines in, ``EvalItem``s and ``Skipped`` lines out.

Free of models, so it tests in milliseconds. The readers turn JSONL lines in common
preference formats into ``EvalItem``s (a ``ScoreInput``, the index of the labelled best
response, the line's ``source`` field if it has one); a line that cannot be used becomes a
``Skipped`` with its line number and a reason, never an exception. ``load_data`` reads a
file (optionally one split of it, ``grm.eval.splits``) or makes synthetic items
(``synthetic:SPLIT:N[:SEED]``, ``grm.tasks``).

Formats (``item_from_record``): ``{prompt?, chosen, rejected}`` (strings, message lists, or
Anthropic HH dialogues) and ``{conversation | messages | prompt | query, responses, best |
scores}`` (our ``spct-task/1`` records are of this kind).

Example::

    items, skipped = parse_lines(['{"prompt": "2+2?", "chosen": "4", "rejected": "5"}', "{"])
    items[0].input.responses, items[0].best      # (('4', '5'), 0)
    skipped[0].line, skipped[0].reason            # (2, SkipReason.BAD_JSON)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterable

from grm.eval.splits import check_split, record_prompt, split_of
from grm.tasks import generate_tasks, task_to_record
from grm.types import Message, ScoreInput, StrEnum


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


def load_data(spec: str, limit: int | None, split: str | None = None):
    """Items and skipped lines from a JSONL file or from ``synthetic:SPLIT:N[:SEED]``.

    ``split`` ("train" or "validation") keeps a file's records whose prompt falls in that
    split (``grm.eval.splits``); line numbers stay those of the file."""
    if split is not None:
        check_split(split)
        if spec.startswith("synthetic:"):
            raise ValueError("split applies to a data file; synthetic data names its split itself")
    if spec.startswith("synthetic:"):
        parts = spec.split(":")
        if len(parts) not in (3, 4) or not all(p.isdigit() for p in parts[2:]):
            raise ValueError(f"data synthetic must look like synthetic:SPLIT:N[:SEED], got {spec!r}")
        count = int(parts[2]) if limit is None else min(int(parts[2]), limit)
        tasks = generate_tasks(count, seed=int(parts[3]) if len(parts) == 4 else 0, split=parts[1])
        return parse_lines((json.dumps(task_to_record(t)) for t in tasks), limit)
    try:
        with open(spec, encoding="utf-8") as f:
            return parse_lines(f if split is None else (_in_split(line, split) for line in f), limit)
    except OSError as e:
        raise ValueError(f"cannot read {spec}: {e}") from None


def _in_split(line: str, split: str) -> str:
    """The line when its record's prompt is in ``split``, else a blank line (skipped, counted
    in the numbering). A line that does not parse is kept, to be reported as it is."""
    try:
        prompt = record_prompt(json.loads(line))
    except (ValueError, AttributeError, KeyError, TypeError):  # not a record one can split: kept, to be reported
        return line
    return line if split_of(prompt) == split else ""
