"""Pages for saved files: an evaluation report and a training run.

The evaluation page draws accuracy against k for voting and meta voting with their 95%
intervals (from the report's bootstrap), greedy as a reference line, accuracy by the
position the best response was shown at, parse failures by reason, and the items the
judge got wrong, each linking to the one-input view. The training page draws the
trainer's curves (reward, unscored fraction, KL, judge agreement where logged) and its
script re-reads ``/inspect/run/<n>.json`` every few seconds while the run goes on.

    html = eval_page(source, index=0)        # source: services.inspector.sources.EvalSource
    html = run_page(RunSource(path), index=0)
"""

from __future__ import annotations

from pathlib import Path

from services.inspector.html import esc, facts, fmt, json_data, pct, table
from services.inspector.sources import EvalSource, RunSource

LABELS = {"voting": "Voting@k", "meta_voting": "MetaRM@k"}
POLL_MS = 3000


def eval_page(source: EvalSource, index: int) -> str:
    r, s = source.report, source.report.get("settings", {})
    model = s.get("model") or {}
    acc = r.get("accuracy", {})
    parts = [facts([("model", esc(model.get("id"))), ("template", esc(model.get("template_version"))),
                    ("meta RM", esc(model.get("meta_rm") or "none")), ("data", esc(s.get("data"))),
                    ("items", f"{esc(r.get('items'))} ({esc(r.get('skipped', {}).get('count', 0))} skipped)"),
                    ("samples per item", esc(s.get("samples"))), ("temperature", esc(s.get("temperature"))),
                    ("greedy accuracy", _acc_cell(acc.get("greedy")))])]
    parts.append("<h2>Accuracy against k</h2>" + _accuracy_chart(r) + _accuracy_table(r))
    parts.append("<h2>Position bias</h2><p class=hint>Accuracy by the position the labelled best response "
                 "was shown at; an unbiased judge is level across positions.</p>" + _position_table(r))
    parts.append("<h2>Parse failures</h2>" + _failures(r))
    parts.append("<h2>Items the judge got wrong</h2>" + _wrong(source, index))
    return "".join(parts)


def _acc_cell(entry: dict | None) -> str:
    if not entry:
        return "&mdash;"
    lo, hi = entry.get("interval", (None, None))
    return f'{pct(entry.get("accuracy"))} <span class="interval">[{pct(lo)}, {pct(hi)}]</span>'


def _accuracy_chart(r: dict) -> str:
    ks = r.get("settings", {}).get("k", [])
    acc = r.get("accuracy", {})
    series = []
    for name, label in LABELS.items():
        rows = acc.get(name)
        if rows:
            series.append({"label": label, "values": [row["accuracy"] for row in rows],
                           "lo": [row["interval"][0] for row in rows], "hi": [row["interval"][1] for row in rows]})
    if acc.get("greedy"):
        series.append({"label": "greedy", "values": [acc["greedy"]["accuracy"]] * len(ks), "dash": True})
    chart = {"x": ks, "xlabel": "k", "ylabel": "accuracy", "series": series, "log2x": True}
    return f'<div class="chart" data-chart="accuracy-data"></div>{json_data("accuracy-data", chart)}'


def _accuracy_table(r: dict) -> str:
    acc, ks = r.get("accuracy", {}), r.get("settings", {}).get("k", [])
    names = [n for n in LABELS if acc.get(n)]
    rows = [[str(k)] + [_acc_cell(acc[n][i]) for n in names] for i, k in enumerate(ks)]
    return table(["k"] + [LABELS[n] for n in names], rows, "accuracy")


def _position_table(r: dict) -> str:
    bias = r.get("position_bias", {})
    rows = []
    for name, entries in bias.items():
        for e in entries:
            rows.append([esc(name), esc(e.get("position")), pct(e.get("accuracy")), esc(e.get("count"))])
    return table(["judgments", "shown at", "accuracy", "items"], rows, "position") if rows else "<p>none</p>"


def _failures(r: dict) -> str:
    total, valid = r.get("samples_total"), r.get("samples_valid")
    rows = [["sampled", esc(reason), esc(n)] for reason, n in sorted(r.get("invalid_reasons", {}).items())]
    rows += [["greedy", esc(reason), esc(n)] for reason, n in sorted(r.get("greedy_invalid_reasons", {}).items())]
    head = (f"<p>{esc(valid)} of {esc(total)} sampled judgments parsed ({pct(r.get('parse_valid_rate'))}); "
            f"greedy {pct(r.get('greedy_valid_rate'))}.</p>")
    return head + (table(["judgments", "reason", "count"], rows, "failures") if rows else "<p>No parse failures.</p>")


def _wrong(source: EvalSource, index: int) -> str:
    if not source.items:
        return "<p class=note>No judgments file was given with this report (grm eval --judgments).</p>"
    wrong = source.wrong()
    rows = []
    for i in wrong:
        it = source.items[i]
        query = esc(_clip(it.item.query)) if it.item is not None else "&mdash;"
        rows.append([f'<a class="item-link" href="/inspect/eval/{index}/item/{i}">line {it.line}</a>', query,
                     f"R{it.best + 1}", " / ".join(fmt(v) for v in it.sampled.rewards),
                     _ok(it.voting_correct), _ok(it.greedy_correct)])
    note = (f"<p>{len(wrong)} of {len(source.items)} items: voting over all samples or the greedy judgment "
            "did not put the labelled best response strictly on top (a tie counts as wrong here).</p>")
    return note + table(["item", "query", "labelled best", "rewards", "voting", "greedy"], rows, "wrong")


def _ok(ok: bool) -> str:
    return '<span class="ok">right</span>' if ok else '<span class="bad">wrong</span>'


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def run_page(source: RunSource, index: int) -> str:
    data = source.series()
    last = data["last"] or {}
    summary = facts([("file", esc(Path(source.path).name)), ("steps so far", f'<span id="steps">{len(data["steps"])}</span>'),
                     ("last reward", f'<span id="last-reward">{fmt(last.get("reward"), 3)}</span>')])
    charts = "".join(f'<div class="chart" data-run-curve="{esc(c["key"])}"></div>' for c in data["curves"])
    return (f'{summary}<p class="hint">Refreshes every {POLL_MS // 1000} s while the run goes on.</p>'
            f'<div id="run" data-poll="/inspect/run/{index}.json" data-poll-ms="{POLL_MS}">{charts}</div>'
            + json_data("run-data", data))
