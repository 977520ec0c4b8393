"""Showing an evaluation: a ``grm-eval/1`` report as a terminal table or a plot, and the
judgments behind it as JSONL.

``format_table`` prints accuracy@k per aggregation, greedy, validity, grounding, the meta
RM's separation and position bias; when the report holds baselines, ``comparison_table``
adds the judge beside them and the hack rate, over all items and per source.
``plot_accuracy`` draws accuracy against k (matplotlib, imported only then), and
``write_judgments`` writes every sampled and greedy judgment of a run, so the principles
and critiques behind a figure can be read. The report itself is built by
``grm.eval.run.evaluate``.

Example::

    run = evaluate(local_scorer(judge), describe_judge(judge), items, skipped, settings)
    print(format_table(run.report))
    plot_accuracy(run.report, "accuracy.png")
    write_judgments("judgments.jsonl", run.kept, run.sampled, run.greedy)
"""

from __future__ import annotations

import json

from grm.eval.attacks import ATTACK_LABELS

PLOT_LABELS = {"voting": "Voting@k", "meta_voting": "MetaRM@k"}


def _judgment_json(j) -> dict:
    return {"text": j.text, "scores": None if j.scores is None else list(j.scores),
            "permutation": list(j.permutation), "reason": None if j.reason is None else str(j.reason),
            "meta_score": j.meta_score,
            "expected_scores": None if j.expected_scores is None else list(j.expected_scores)}


def write_judgments(path: str, kept, sampled, greedy) -> None:
    """One JSON line per scored item: its source line, the labelled best response, and its
    sampled and greedy judgments (scores in the data's response order, ``permutation`` the
    order shown to the judge), so the principles and critiques behind a figure can be read."""
    with open(path, "w", encoding="utf-8") as f:
        for item, s, g in zip(kept, sampled, greedy):
            f.write(json.dumps({"line": item.line, "best": item.best,
                                "sampled": [_judgment_json(j) for j in s.judgments],
                                "greedy": _judgment_json(g.judgments[0])}) + "\n")


def _pct(entry: dict | None, key: str = "accuracy") -> str:
    if entry is None:
        return "-"
    lo, hi = entry["interval"]
    return f"{100 * entry[key]:5.1f} [{100 * lo:5.1f}, {100 * hi:5.1f}]"


def format_table(report: dict) -> str:
    """The report's figures for a terminal: accuracy@k per aggregation, greedy, validity, position."""
    s, acc = report["settings"], report["accuracy"]
    curves = [a for a in s["aggregations"] if a in acc]
    lines = [f"{report['items']} items ({report['skipped']['count']} skipped), {s['samples']} samples each, "
             f"95% intervals over {s['bootstrap_rounds']} bootstrap rounds",
             f"{'k':>4}  " + "".join(f"{PLOT_LABELS[a]:<22}" for a in curves)]
    for row, k in enumerate(s["k"]):
        lines.append(f"{k:>4}  " + "".join(f"{_pct(acc[a][row]):<22}" for a in curves))
    lines.append(f"greedy  {_pct(acc['greedy'])}")
    if "tokens_per_item" in report:
        lines.append("generated tokens per item, fixed k: " + ", ".join(
            f"k={k} {t:.0f}" for k, t in report["tokens_per_item"].items()))
    if "adaptive" in report:
        a = report["adaptive"]
        lines.append(f"adaptive ({a['rule']}, z={a['z']:g}, budget {a['budget']}): {_pct(a)}, "
                     f"{a['tokens_per_item']:.0f} tokens and {a['samples_per_item']:.1f} samples per item, "
                     f"stops {a['stop_reasons']}")
    lines.append(f"parse-valid  {100 * report['parse_valid_rate']:.1f}% of {report['samples_total']} samples, "
                 f"greedy {100 * report['greedy_valid_rate']:.1f}%")
    if (g := report.get("grounding")) and g["quotes"]:
        lines.append(f"grounding  {100 * g['share']:.1f}% of {g['quotes']} quoted fragments found in the response "
                     f"their line talks about; {100 * g['judgments_quoting']:.1f}% of judgments quote")
    if "meta_rm" in report:
        sep = report["meta_rm"]
        right, untied = (("-" if v is None else f"{v:.3f}")
                         for v in (sep["right_vs_wrong_auc"], sep["untied_vs_tied_auc"]))
        lines.append(f"meta RM within items: AUC right vs wrong ranking {right} ({sep['right_vs_wrong_pairs']} "
                     f"pairs), untied vs tied {untied} ({sep['untied_vs_tied_pairs']} pairs)")
    for name, rows in report["position_bias"].items():
        cells = [f"pos {r['position']}: " + ("-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f}")
                 + f" (n={r['count']})" for r in rows]
        lines.append(f"best shown at, {name}:  " + "  ".join(cells))
    if "baselines" in report:
        lines += comparison_table(report)
    return "\n".join(lines)


def comparison_table(report: dict) -> list[str]:
    """The judge at its largest k and greedy, the baselines, and the hack rate, one row each,
    over all items and per source (columns)."""
    s, k = report["settings"], report["settings"]["k"][-1]
    sources = report.get("by_source", {})
    columns = [f"all ({report['items']})"] + [f"{name} ({g['items']})" for name, g in sources.items()]

    def cells(overall, per_source, key="accuracy"):  # entry overall, name -> entry or None
        return [_pct(overall, key)] + [_pct(per_source(name), key) for name in sources]

    def judge_rows(who, acc, by_source, aggregations):
        out = [(f"{who} {PLOT_LABELS[a].replace('@k', f'@{k}')}",
                cells(acc[a][-1], lambda n: by_source[n][a][-1] if n in by_source else None)) for a in aggregations]
        return out + [(f"{who} greedy", cells(acc["greedy"], lambda n: by_source[n]["greedy"] if n in by_source
                                               else None))]

    acc = report["accuracy"]
    rows = judge_rows("judge", acc, sources, [a for a in s["aggregations"] if a in acc])
    base = report["baselines"].get("base_model")
    if base and base["items"]:
        rows += judge_rows("base model", base["accuracy"], base["by_source"], ["voting"])
    length = report["baselines"]["length"]
    rows.append(("longer response wins", cells(length, lambda n: length["by_source"].get(n))))
    hack = report.get("hack")
    if hack:
        rows.append((f"hack rate, judge {PLOT_LABELS[hack['aggregation']].replace('@k', '@' + str(hack['k']))}",
                     None))
        for kind in ["any"] + hack["attacks"]:
            rows.append(("  any attack" if kind == "any" else f"  {ATTACK_LABELS.get(kind, kind)}",
                         cells(hack["rates"][kind], lambda n: hack["by_source"][n]["rates"][kind]
                               if n in hack["by_source"] else None, "rate")))
    label_width = max(len(label) for label, _ in rows) + 2
    widths = [max(20, len(c)) + 2 for c in columns]
    lines = ["compared (accuracy %, hack rate % of items; 95% intervals):",
             (" " * label_width + "".join(f"{c:<{w}}" for c, w in zip(columns, widths))).rstrip()]
    for label, row in rows:
        lines.append((f"{label:<{label_width}}" + "".join(f"{c:<{w}}" for c, w in zip(row, widths))).rstrip()
                     if row else label)
    if base and not base["items"]:
        lines.append(f"base model {base['model'].get('id')}: {base['error']}")
    return lines


def plot_accuracy(report: dict, path: str) -> None:
    """Accuracy (%) against k on a log2 axis: a line and interval band per aggregation, greedy flat."""
    from matplotlib.figure import Figure  # optional and heavy: only for --plot

    acc, ks = report["accuracy"], report["settings"]["k"]
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name in report["settings"]["aggregations"]:
        rows = acc[name]
        ax.plot(ks, [100 * r["accuracy"] for r in rows], marker="o", label=PLOT_LABELS[name])
        ax.fill_between(ks, [100 * r["interval"][0] for r in rows], [100 * r["interval"][1] for r in rows], alpha=0.2)
    greedy = acc["greedy"]
    ax.axhline(100 * greedy["accuracy"], color="gray", linestyle="--", label="greedy")
    ax.axhspan(100 * greedy["interval"][0], 100 * greedy["interval"][1], color="gray", alpha=0.1)
    if len(ks) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (judgments voted)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{report['settings']['model']['id'] or 'GRM'}: {report['items']} items, "
                 f"{report['settings']['samples']} samples each", fontsize=9)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
