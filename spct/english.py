"""Train the English judge: resumable stages on a pretrained base, each a line in report.jsonl.

The stages, in order (``grm train-english --out DIR`` runs those not yet done):

1. ``draft``: the teacher-free cold start (``spct.cold_start``): principles and critique
   sentences drafted by the base model for labelled training pairs, filtered, appended to
   ``drafts.jsonl`` as they come (``spct.drafting``: a rerun skips the pairs already drafted,
   and a pair whose principles or critique failed is drafted again, its failed pieces only);
2. ``sft``: LoRA fine-tuning on the assembled judgments (``spct.lora_sft``); writes the
   adapter to ``sft-adapter/``, resuming from its last saved step in ``sft/``;
3. ``rft``: rejective fine-tuning from the SFT adapter (``spct.rft``): the SFT judge samples
   judgments on training pairs it was not fine-tuned on (appended to ``rft-samples.jsonl``
   as they come); those that put the labelled answer strictly on top and whose quotes are
   all found in the answers they name are trained on (pairs where every sample was right
   are dropped as too easy); writes ``rft-adapter/``;
4. ``harden``: from the RFT adapter, its kept judgments again plus pairs that put a training
   pair's best response beside a content-free answer scored low (``spct.harden``), against
   rewarding non-answers; writes ``harden-adapter/``;
5. ``verdict``: a Bradley-Terry loss on the judge's own score line (``spct.verdict``), from
   the run's latest adapter or ``verdict.start``; writes ``verdict-adapter/``;
   ``point``: one answer a prompt, a Bradley-Terry loss on its score (``spct.pointwise``);
6. ``bt``: the scalar baseline users would otherwise train, a Bradley-Terry reward model on
   the same base (``spct.bt_rm``), with its validation accuracy. By default it is fit on the
   very pairs the judge was fine-tuned on (those with a usable draft); ``--set
   bt.pairs=all`` takes every training pair instead.

A later round can train in a new folder on the drafts of an earlier one (``drafts_from``,
``--drafts-from``): the draft stage then extends that folder's drafts.jsonl, and both rounds
use its validation.jsonl.

Every stage is bounded in time (``--stage-minutes``): it stops, saves, and leaves the rest
to the next run. The training pairs come from the train split only (``grm.eval.splits``).

Example::

    run(EnglishOptions(data=("hh.jsonl", "rmbench.jsonl"), out=Path("runs/en"), stages=("draft",)))
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import permutations
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from grm.eval.grounding import check_quotes
from grm.eval.splits import record_prompt, split_of
from grm.judge import GenerativeRewardModel
from grm.lora import is_adapter
from grm.pretrained import resolve_model
from grm.prompts import shown_response
from grm.seeds import mix_seed
from grm.templates import JudgeTemplate, load_template
from spct.bt_rm import bt_validation, pair_ids, train_bt
from spct.cold_start import draft_from_json, draft_scores, judgment_text
from spct.data import LabeledItem, load_preference_splits, make_example, read_jsonl
from spct.drafting import draft_stage, read_drafts
from spct.harden import hardening_examples
from spct.lora_sft import LoraSettings, add_lora, load_trainable, save_adapter, score_weights, train_lora
from spct.rft import Trajectory, rft_filter, sample_groups
from spct.pointwise import point_stage
from spct.verdict import verdict_stage

STAGES = ("draft", "sft", "rft", "harden", "verdict", "point", "bt")
ENGLISH_TEMPLATE = "grm-english-v1"
RFT_CHUNK = 32  # pairs per judge call while sampling for RFT (x samples rows)


@dataclass(frozen=True)
class EnglishOptions:
    data: tuple[str, ...]  # preference JSONL files; their train split is used
    out: Path
    base: str = "smollm2-135m-instruct"
    stages: tuple[str, ...] = STAGES
    items_per_source: int = 500  # training pairs drafted per file (fewer when a file has fewer)
    stage_minutes: float = 60.0
    seed: int = 0
    template: str = ENGLISH_TEMPLATE
    extra: dict = field(default_factory=dict)  # stage settings passed through (see each stage)
    drafts_from: Path | None = None  # a run folder whose drafts and validation pairs this run shares

    @property
    def shared(self) -> Path:
        """The folder of drafts.jsonl and validation.jsonl: ``drafts_from``, else ``out``.

        A later round (say, SFT again on more drafts) trains in a new ``out`` and reads, and
        extends, the first run's drafts, so both rounds are judged on the same pairs."""
        return self.drafts_from or self.out

    def __post_init__(self) -> None:
        if bad := [s for s in self.stages if s not in STAGES]:
            raise ValueError(f"stages must be among {', '.join(STAGES)}, got {bad}")
        if self.items_per_source < 1:
            raise ValueError(f"items_per_source must be >= 1, got {self.items_per_source}")
        if not self.stage_minutes > 0:
            raise ValueError(f"stage_minutes must be > 0, got {self.stage_minutes}")
        if self.drafts_from is not None and not Path(self.drafts_from).is_dir():
            raise ValueError(f"drafts_from: {self.drafts_from} is not a folder (an earlier run's --out)")


def training_items(paths: Sequence[str], per_source: int, seed: int) -> list[LabeledItem]:
    """Up to ``per_source`` train-split pairs of each file, shuffled by a seeded stream, interleaved."""
    lists = []
    for path in paths:
        items = load_preference_splits(path)["train"]
        random.Random(mix_seed("english-train-items", seed, Path(path).name)).shuffle(items)
        lists.append(items[:per_source])
    return interleave(lists)


def interleave(lists: Sequence[list]) -> list:
    """The lists' items taken one list after another (first items, then second items, ...)."""
    return [x[row] for row in range(max(map(len, lists), default=0)) for x in lists if row < len(x)]


def append_report(out: Path, entry: dict) -> None:
    """One line of report.jsonl: a stage's figures, with the time it ended."""
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}
    with open(out / "report.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def stage_settings(opts: EnglishOptions, stage: str) -> dict:
    """``--set STAGE.KEY=VALUE`` settings of one stage, as keyword arguments."""
    prefix = stage + "."
    return {key[len(prefix):]: value for key, value in opts.extra.items() if key.startswith(prefix)}


def sft_examples(tokenizer, template: JudgeTemplate, items: list[LabeledItem], rows: list[dict], seed: int,
                 orders: str = "all"):
    """Training examples from the usable drafts: every response order of every pair
    (``orders="all"``), or one order per pair drawn by the pair's seed (``"one"``: half the
    examples; the labelled answer is shown first in about half of them), or every order but
    the one ``"one"`` draws (``"other"``: for a round after a one-order round)."""
    if orders not in ("all", "one", "other"):
        raise ValueError(f'sft.orders must be "all", "one" or "other", got {orders!r}')
    examples = []
    for row in rows:
        if row["reason"]:
            continue
        labeled, draft = items[row["index"]], draft_from_json(row)
        rng = random.Random(mix_seed("english-sft", seed, row["index"]))
        scores = draft_scores(labeled.best, len(labeled.item.responses), rng)
        every = list(permutations(range(len(labeled.item.responses))))
        if orders != "all":
            drawn = rng.choice(every)
            every = [drawn] if orders == "one" else [p for p in every if p != drawn]
        for perm in every:
            text = judgment_text(draft, perm, scores, rng)
            examples.append(make_example(tokenizer, template, labeled.item, perm, text))
    return examples


def sft_stage(opts: EnglishOptions, template: JudgeTemplate, items: list[LabeledItem], log=print) -> dict:
    """LoRA SFT on the drafted judgments; writes the adapter to ``sft-adapter/`` when done.

    ``--set`` keys beside the LoRA settings: ``sft.orders`` (``sft_examples``), ``sft.start``
    (an adapter folder to go on from, its rank and layers kept, instead of a new LoRA),
    ``sft.content_free`` (that many ``spct.harden`` pairs per usable draft added) and
    ``sft.score_weight`` (the score line's tokens weigh that much in the loss)."""
    folder = opts.out / "sft-adapter"
    if folder.exists():
        return {"stage": "sft", "status": "done", "adapter": folder.name}
    extra = stage_settings(opts, "sft")
    kept = {"orders": extra.pop("orders", "all"), "start": extra.pop("start", None),
            "content_free": int(extra.pop("content_free", 0)), "score_weight": float(extra.pop("score_weight", 1))}
    if kept["start"] is not None and not is_adapter(kept["start"]):
        raise ValueError(f"sft.start: {kept['start']} is not an adapter folder (no adapter_config.json)")
    settings = LoraSettings(seed=opts.seed, **extra)
    base = resolve_model(opts.base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = read_drafts(opts.shared)
    examples = sft_examples(tokenizer, template, items, rows, opts.seed, kept["orders"])
    if not examples:
        raise ValueError(f"{opts.shared / 'drafts.jsonl'}: no usable draft to train on; run the draft stage first")
    if kept["content_free"]:
        examples += hardening_examples(tokenizer, template, items, rows, opts.seed, kept["content_free"])
    weights = score_weights(tokenizer, examples, kept["score_weight"]) if kept["score_weight"] != 1 else None
    model = (load_trainable(base, Path(kept["start"])) if kept["start"] else
             add_lora(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), settings))
    figures = train_lora(model, examples, settings, opts.out / "sft", opts.stage_minutes * 60, log, weights)
    done = figures["steps"] >= figures["planned_steps"]
    if done:
        save_adapter(model, folder, opts.base, template)
    return {"stage": "sft", "status": "done" if done else "partial", "examples": len(examples),
            "prompt_tokens_mean": sum(len(e.prompt_ids) for e in examples) / len(examples),
            "target_tokens_mean": sum(len(e.target_ids) for e in examples) / len(examples),
            "settings": {**vars(settings), **kept}, **figures}


def rft_sample(opts: EnglishOptions, items: list[LabeledItem], pool: list[int], settings: dict, deadline: float,
               log=print) -> dict:
    """Sample the SFT judge on the ``pool`` pairs not yet in rft-samples.jsonl, until ``deadline``."""
    path = opts.out / "rft-samples.jsonl"
    done = {row["index"] for row in read_jsonl(path)}
    todo = [i for i in pool if i not in done]
    began, judgments = time.monotonic(), 0
    if not todo:
        return {}
    judge = GenerativeRewardModel.load(str(opts.out / "sft-adapter"))
    with open(path, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), RFT_CHUNK):
            if time.monotonic() > deadline:
                break
            chunk = todo[start:start + RFT_CHUNK]
            groups = sample_groups(judge, [items[i] for i in chunk], k=settings["samples"],
                                   temperature=settings["temperature"], max_new_tokens=settings["max_new_tokens"],
                                   seed=mix_seed("english-rft", opts.seed, chunk[0]), batch_size=len(chunk))
            for index, group in zip(chunk, groups):
                labeled = items[index]
                shown = [shown_response(judge.template, r) for r in labeled.item.responses]
                context = " ".join(m.content for m in labeled.item.conversation)
                samples = []
                for t in group:
                    quotes = check_quotes(t.text, [shown[i] for i in t.permutation], context)
                    samples.append({"permutation": list(t.permutation), "text": t.text, "correct": t.correct,
                                    "scored": t.scores is not None, "quotes": quotes.total,
                                    "grounded": quotes.grounded})
                f.write(json.dumps({"index": index, "samples": samples}) + "\n")
            f.flush()
            judgments += sum(len(g) for g in groups)
            log(f"rft: sampled {len(done) + start + len(chunk)}/{len(pool)} pairs, "
                f"{judgments / (time.monotonic() - began):.2f} judgments/s")
    return {"judgments": judgments, "wall_s": round(time.monotonic() - began, 1)}


def rft_keep(rows: list[dict]) -> tuple[list[tuple[int, dict]], dict]:
    """The paper's rejection rule on sampled rows, plus grounding: per pair, if every sample
    ranks the labelled answer on top the pair is dropped (too easy); otherwise its samples that
    do, and that quote at least once and only what the named answers say, are kept."""
    groups, sample_of = [], {}  # sample_of: trajectory -> its sample (equal trajectories, equal samples)
    for row in rows:
        groups.append([Trajectory(row["index"], tuple(s["permutation"]), s["text"], (0,) if s["scored"] else None,
                                  s["correct"]) for s in row["samples"]])
        sample_of.update(zip(groups[-1], row["samples"]))
    kept, stats = rft_filter(groups)
    grounded = [(t.item, sample_of[t]) for t in kept if 0 < sample_of[t]["grounded"] == sample_of[t]["quotes"]]
    return grounded, {**stats, "kept": len(grounded), "dropped_ungrounded": len(kept) - len(grounded)}


def rft_stage(opts: EnglishOptions, template: JudgeTemplate, items: list[LabeledItem], log=print) -> dict:
    """Sample, filter, then LoRA-train from the SFT adapter; writes ``rft-adapter/`` when done."""
    if finished := _finished(opts, "rft", "sft"):
        return finished
    folder, sft = opts.out / "rft-adapter", opts.out / "sft-adapter"
    extra = stage_settings(opts, "rft")
    sampling = {"pairs": int(extra.pop("pairs", 320)), "samples": int(extra.pop("samples", 4)),
                "temperature": float(extra.pop("temperature", 1.0)),
                "max_new_tokens": int(extra.pop("max_new_tokens", 176))}
    settings = LoraSettings(seed=opts.seed, **{"epochs": 1.0, **extra})
    deadline = time.monotonic() + opts.stage_minutes * 60
    used = {row["index"] for row in read_drafts(opts.shared) if not row["reason"]}
    pool = [i for i in range(len(items)) if i not in used and len(items[i].item.responses) == 2][:sampling["pairs"]]
    this_run = rft_sample(opts, items, pool, sampling, deadline, log)
    wanted = set(pool)
    rows = [row for row in read_jsonl(opts.out / "rft-samples.jsonl") if row["index"] in wanted]
    entry = {"stage": "rft", "pairs": len(rows), "sampling": sampling, "this_run": this_run}
    if len(rows) < len(pool):
        return {**entry, "status": "partial"}
    kept, stats = rft_keep(rows)
    entry["filter"] = stats
    if not kept:
        return {**entry, "status": "done", "adapter": None}  # nothing passed the filter: no adapter
    base = resolve_model(opts.base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    examples = _kept_examples(tokenizer, template, items, kept)
    model = load_trainable(base, sft)
    figures = train_lora(model, examples, settings, opts.out / "rft", max(1.0, deadline - time.monotonic()), log)
    done = figures["steps"] >= figures["planned_steps"]
    if done:
        save_adapter(model, folder, opts.base, template)
    return {**entry, "status": "done" if done else "partial", "examples": len(examples),
            "settings": vars(settings), **figures}


def _finished(opts: EnglishOptions, stage: str, start: str) -> dict | None:
    """The report line of an adapter stage already done, else None (its start adapter must exist)."""
    if (opts.out / f"{stage}-adapter").exists():
        return {"stage": stage, "status": "done", "adapter": f"{stage}-adapter"}
    if not (begin := opts.out / f"{start}-adapter").exists():
        raise ValueError(f"{begin}: the {stage} stage starts from the {start.upper()} adapter; "
                         f"run the {start} stage first")
    return None


def _kept_examples(tokenizer, template: JudgeTemplate, items: list[LabeledItem], kept: list[tuple[int, dict]]):
    return [make_example(tokenizer, template, items[i].item, s["permutation"], s["text"]) for i, s in kept]


def harden_stage(opts: EnglishOptions, template: JudgeTemplate, items: list[LabeledItem], log=print) -> dict:
    """From the RFT adapter: its kept judgments again (the first ``harden.replay``; default all),
    plus ``harden.per_pair`` pairs of a usable draft's best response beside a content-free
    answer (``spct.harden``); writes ``harden-adapter/``."""
    if finished := _finished(opts, "harden", "rft"):
        return finished
    folder, start = opts.out / "harden-adapter", opts.out / "rft-adapter"
    extra = stage_settings(opts, "harden")
    per_pair, replayed = int(extra.pop("per_pair", 1)), extra.pop("replay", None)  # replay: how many kept
    settings = LoraSettings(seed=opts.seed, **{"epochs": 1.0, **extra})
    base = resolve_model(opts.base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    kept, _ = rft_keep(read_jsonl(opts.out / "rft-samples.jsonl"))
    replay = _kept_examples(tokenizer, template, items, kept[:None if replayed is None else int(replayed)])
    pairs = hardening_examples(tokenizer, template, items, read_drafts(opts.shared), opts.seed, per_pair)
    if not pairs:
        raise ValueError(f"{opts.shared / 'drafts.jsonl'}: no usable draft to build hardening pairs from")
    model = load_trainable(base, start)
    figures = train_lora(model, replay + pairs, settings, opts.out / "harden", opts.stage_minutes * 60, log)
    done = figures["steps"] >= figures["planned_steps"]
    if done:
        save_adapter(model, folder, opts.base, template)
    return {"stage": "harden", "status": "done" if done else "partial", "replayed": len(replay),
            "content_free_pairs": len(pairs), "settings": vars(settings), **figures}


def validation_records(paths: Sequence[str], per_source: int, seed: int) -> list[str]:
    """Up to ``per_source`` validation-split lines of each file (a seeded sample, each file's
    order kept), interleaved one file after another, so an evaluation cut short has seen
    every source alike."""

    lists = []
    for path in paths:
        lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines()
                 if line.strip() and split_of(record_prompt(json.loads(line))) == "validation"]
        keep = sorted(random.Random(mix_seed("english-validation", seed, Path(path).name))
                      .sample(range(len(lines)), min(per_source, len(lines))))
        lists.append([lines[i] for i in keep])
    return interleave(lists)


def write_validation(opts: EnglishOptions) -> Path:
    """``validation.jsonl`` (in ``opts.shared``): the pairs every evaluation of this run uses (written once)."""
    path = opts.shared / "validation.jsonl"
    if not path.exists():
        per_source = int(stage_settings(opts, "eval").get("per_source", 250))
        path.write_text("\n".join(validation_records(opts.data, per_source, opts.seed)) + "\n", encoding="utf-8")
    return path


def bt_stage(opts: EnglishOptions, template: JudgeTemplate, items: list[LabeledItem], log=print) -> dict:
    """The Bradley-Terry baseline on the same base and training pairs, then its validation accuracy."""
    extra = stage_settings(opts, "bt")
    which = extra.pop("pairs", "judge")
    if which == "judge":  # the pairs the judge was fine-tuned on: those with a usable draft
        items = [items[row["index"]] for row in read_drafts(opts.shared) if not row["reason"]]
        if not items:
            raise ValueError(f"{opts.shared / 'drafts.jsonl'}: no usable draft, so no judge pairs for bt.pairs=judge "
                             "(run the draft stage first, or --set bt.pairs=all)")
    elif which != "all":
        raise ValueError(f"bt.pairs must be \"judge\" or \"all\", got {which!r}")
    settings = LoraSettings(seed=opts.seed, **{"epochs": 1.0, **extra})
    base = resolve_model(opts.base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = pad
    model = add_lora(model, settings, task_type="SEQ_CLS", modules_to_save=["score"])
    pairs = [pair_ids(tokenizer, template, it) for it in items if len(it.item.responses) == 2]
    figures = train_bt(model, pairs, settings, opts.out / "bt", pad, opts.stage_minutes * 60, log)
    if figures["steps"] < figures["planned_steps"]:
        return {"stage": "bt", "status": "partial", "pairs": len(pairs), **figures}
    lines = write_validation(opts).read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return {"stage": "bt", "status": "done", "pairs": len(pairs), "pairs_from": which, **figures,
            "validation": bt_validation(model, tokenizer, template, records, pad, opts.seed)}


def run(opts: EnglishOptions, log=print) -> list[dict]:
    """Run the stages in order; returns the report lines written by this run."""
    opts.out.mkdir(parents=True, exist_ok=True)
    template = load_template(opts.template)
    items = training_items(opts.data, opts.items_per_source, opts.seed)
    write_validation(opts)  # the held-out pairs every evaluation of this run uses
    lines = []
    for stage in opts.stages:
        if stage == "draft":
            entry = draft_stage(opts.shared, opts.base, template, items, opts.seed, opts.stage_minutes * 60, log)
        elif stage == "sft":
            entry = sft_stage(opts, template, items, log)
        elif stage == "rft":
            entry = rft_stage(opts, template, items, log)
        elif stage == "harden":
            entry = harden_stage(opts, template, items, log)
        elif stage == "verdict":
            entry = verdict_stage(opts, stage_settings(opts, "verdict"), template, items, resolve_model(opts.base), log)
        elif stage == "point":
            entry = point_stage(opts, stage_settings(opts, "point"), items, resolve_model(opts.base), log)
        else:
            entry = bt_stage(opts, template, items, log)
        append_report(opts.out, entry)
        lines.append(entry)
        if entry.get("status") == "partial":
            break  # a later stage needs this one finished
    return lines
