"""The one-input view: a conversation, its responses, and the k judgments behind the rewards.

Every source of a judged input (a recorded request, a "Try it" result, an item of an
evaluation's judgments file) becomes an ``InputView`` and is drawn by ``render_input``:

- the conversation and the responses, each with its reward, vote sum S*_i and spread;
- a table of scores, sample by response in the ORIGINAL order, with the samples that
  voted marked (under meta voting, the ones the meta RM kept, with its ratings), and a
  last row of vote sums, so that where samples disagree is seen at a glance;
- each sample in turn: the order the responses were shown in, its scores in that shown
  order and mapped back, its principles and critique, and for an invalid sample its
  reason and raw text.

    html = render_input(InputView(title="Recorded request 7", item=item, result=result))
"""

from __future__ import annotations

from dataclasses import dataclass, field

from grm.types import Aggregation, Judgment, ScoreInput, ScoreResult
from services.inspector.html import esc, facts, fmt, text_block


@dataclass(frozen=True)
class InputView:
    title: str
    item: ScoreInput | None  # None when the conversation is not known (an eval item without its data)
    result: ScoreResult
    details: list[tuple[str, str]] = field(default_factory=list)  # (label, HTML) facts about the call
    label: int | None = None  # the labelled best response, for evaluation items
    note: str = ""  # HTML: what this view cannot show, and why
    response_count: int | None = None  # N when item is None

    @property
    def n(self) -> int:
        return len(self.item.responses) if self.item is not None else (self.response_count or 0)


def used_samples(result: ScoreResult) -> set[int]:
    """The samples whose scores were summed: every valid one, or under meta voting the
    ``num_used`` valid ones with the highest meta rating (ties to the earlier sample, as
    ``grm.aggregation`` picks them)."""
    valid = [i for i, j in enumerate(result.judgments) if j.valid]
    if Aggregation(result.aggregation) is not Aggregation.META_VOTING:
        return set(valid)
    if any(result.judgments[i].meta_score is None for i in valid):
        return set()
    return set(sorted(valid, key=lambda i: -result.judgments[i].meta_score)[:result.num_used])


def render_input(view: InputView) -> str:
    parts = [facts(view.details + _summary(view.result)) if view.details or view.result else ""]
    if view.note:
        parts.append(f'<p class="note">{view.note}</p>')
    if view.item is not None:
        parts.append(_conversation(view.item))
    parts.append(_responses(view))
    if view.result.judgments:
        used = used_samples(view.result)
        parts.append(_score_table(view, used))
        parts.append('<h2>Samples</h2>' + "".join(_sample(view, i, j, i in used)
                                                  for i, j in enumerate(view.result.judgments)))
    return "".join(parts)


def _summary(r: ScoreResult) -> list[tuple[str, str]]:
    k = len(r.judgments)
    reasons = ", ".join(f"{esc(reason)}: {count}" for reason, count in sorted(r.invalid_reasons.items()))
    return [("aggregation", esc(r.aggregation)), ("samples (k)", str(k) if k else "&mdash;"),
            ("valid", str(r.num_valid)), ("used in the votes", str(r.num_used)),
            ("invalid", f"{k - r.num_valid if k else sum(r.invalid_reasons.values())}"
                        + (f" ({reasons})" if reasons else ""))]


def _conversation(item: ScoreInput) -> str:
    turns = "".join(f'<div class="turn" data-role="{esc(m.role)}"><div class="role">{esc(m.role)}</div>'
                    f"{text_block(m.content, 'text message')}</div>" for m in item.conversation)
    extra = ""
    if item.principles:
        extra += f"<h3>Principles given by the caller</h3>{text_block(item.principles)}"
    if item.reference:
        extra += f"<h3>Reference answer</h3>{text_block(item.reference)}"
    return f'<h2>Conversation</h2><div class="conversation">{turns}</div>{extra}'


def _responses(view: InputView) -> str:
    r = view.result
    rows = []
    for i in range(view.n):
        marks = (' <span class="badge best">best</span>' if r.best == i else "") + \
                (' <span class="badge label">labelled best</span>' if view.label == i else "")
        text = text_block(view.item.responses[i], "text response") if view.item is not None else ""
        reward = fmt(r.rewards[i]) if i < len(r.rewards) else "&mdash;"
        unscored = i < len(r.rewards) and r.rewards[i] is None
        rows.append(f'<tr class="response" data-response="{i}"><th>Response {i + 1}{marks}</th><td>{text}</td>'
                    f'<td class="reward">{"unscored" if unscored else reward}</td>'
                    f'<td class="vote-sum">{fmt(r.vote_sums[i]) if i < len(r.vote_sums) else "&mdash;"}</td>'
                    f'<td class="spread">{fmt(r.spread[i]) if i < len(r.spread) else "&mdash;"}</td></tr>')
    return ('<h2>Responses</h2><table class="responses"><thead><tr><th></th><th>text</th><th>reward</th>'
            f'<th>vote sum S*</th><th>spread</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _score_table(view: InputView, used: set[int]) -> str:
    r, meta = view.result, Aggregation(view.result.aggregation) is Aggregation.META_VOTING
    head = "".join(f"<th>R{i + 1}</th>" for i in range(view.n))
    rows = []
    for s, j in enumerate(r.judgments):
        cells = "".join(f'<td class="score s{j.scores[i]}" data-score="{j.scores[i]}">{j.scores[i]}</td>'
                        if j.valid else '<td class="score none">&mdash;</td>' for i in range(view.n))
        status = ("kept by the meta RM" if meta else "voted") if s in used else \
                 ("not kept" if j.valid else f"invalid: {esc(j.reason)}")
        rows.append(f'<tr class="vote-row{" used" if s in used else ""}" data-sample="{s}"><th>'
                    f'<a href="#sample-{s + 1}">sample {s + 1}</a></th>{cells}<td>{esc(_shown(j))}</td>'
                    f'<td>{fmt(j.meta_score, 3)}</td><td class="status">{status}</td></tr>')
    sums = "".join(f'<td class="vote-sum" data-vote-sum="{v}">{v}</td>' for v in r.vote_sums)
    rewards = "".join(f"<td>{fmt(v)}</td>" for v in r.rewards)
    return (f'<h2>Votes</h2><p class="hint">Scores in the original response order. Only the marked rows '
            f'add up to the vote sums; reward = vote sum / {r.num_used or "&mdash;"} samples used.</p>'
            f'<table class="votes"><thead><tr><th>sample</th>{head}<th>shown order</th><th>meta RM</th>'
            f'<th>status</th></tr></thead><tbody>{"".join(rows)}</tbody><tfoot>'
            f'<tr class="sums"><th>vote sum S*</th>{sums}<td colspan="3"></td></tr>'
            f'<tr><th>reward</th>{rewards}<td colspan="3"></td></tr></tfoot></table>')


def _shown(j: Judgment) -> str:
    return " ".join(f"R{p + 1}" for p in j.permutation)


def _sample(view: InputView, s: int, j: Judgment, used: bool) -> str:
    head = f"sample {s + 1}: " + ("valid" if j.valid else f"invalid ({esc(j.reason)})") + \
           (", in the votes" if used else "") + (f", meta RM {j.meta_score:.3f}" if j.meta_score is not None else "")
    if j.valid:
        shown = ", ".join(f"position {p + 1} = R{idx + 1}: {j.scores[idx]}" for p, idx in enumerate(j.permutation))
        scores = f'<p class="shown-scores">Scores as written (shown order): {esc(shown)}</p>'
        if j.expected_scores is not None:
            read = ", ".join(f"R{i + 1}: {v:.2f}" for i, v in enumerate(j.expected_scores))
            scores += (f'<p class="expected-scores">Expected scores (the judge\'s distribution over 1..9): '
                       f'{esc(read)}</p>')
    else:
        scores = f'<p class="invalid-reason">Invalid: <b>{esc(j.reason)}</b>. Raw text below.</p>'
    body = (f'<p>Responses shown in the order {esc(_shown(j))}.</p>{scores}'
            f'<h4>Principles</h4>{text_block(j.principles, "text principles")}'
            f'<h4>Critique</h4>{text_block(j.critique, "text critique")}'
            f'<details{" open" if not j.valid else ""}><summary>raw text'
            f'{f" ({j.num_tokens} tokens)" if j.num_tokens else ""}</summary>'
            f'{text_block(j.text, "text raw")}</details>')
    return (f'<details class="sample{" invalid" if not j.valid else ""}" id="sample-{s + 1}" data-sample="{s}"'
            f'{" open" if s < 2 or not j.valid else ""}><summary>{head}</summary>{body}</details>')
