"""Judge prompt templates, kept as data (JSON files) with a version string.

A template holds the text pieces of the judgment prompt; ``grm.prompts`` assembles
them in the order of the paper's default template (DeepSeek-GRM, App. G)::

    <instruction>              self-principled: write criteria, analyse, score 1..10
                               (or <instruction_with_principles> when the user gives them)
    <context_header>           #### Conversation Context ####
    User: ... / Assistant: ...
    <reference_header>         only when a reference answer is given
    <responses_header>         #### Responses to be Scored ####
    [The Begin of Response 1] ... [The End of Response 1]   (one fence per response)
    <output_format>            Specific Criteria: / Analysis: / Scores: \\boxed{s1, s2}

Placeholders are written ``{{name}}`` and filled in a single pass, so text put into a
placeholder is never read as a placeholder itself. ``version`` names the exact text:
store it next to a checkpoint so the same template can be loaded to serve it.

Example::

    t = load_template("grm-default-v2")          # built in, == DEFAULT_TEMPLATE
    t = load_template("path/to/my-template.json")  # same fields as grm/templates/*.json
    available_templates()  # ['grm-compact-v1', 'grm-default-v1', 'grm-default-v2', ...]

Everything a template puts before the conversation is the same for every input
(``grm-default-v2`` says the number of responses only in its closing output format), so
an engine with a prefix cache computes that part once for all inputs. ``grm-default-v1``
named the number in its first sentence, and ``grm-compact-v1`` still does: the bundled GRM
was trained on that text, and a checkpoint is served with the text it learned.

A template with ``pointwise`` set (``grm-english-point-v1``) shows one response per prompt;
the judge then renders one prompt per response and merges their judgments (``grm.pointwise``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Mapping

from grm.parsing import ANALYSIS_HEADER, CRITERIA_HEADER, SCORES_HEADER

TEMPLATE_DIR = Path(__file__).with_name("templates")
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# Fences and headers must hold one of these so that ``grm.prompts`` can defang copies of
# them found in untrusted text by swapping these characters (see prompts.DEFANG).
MARKER_CHARS = "[]<>{}#"
DEFAULT_ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}

# field -> (required placeholders, allowed placeholders)
_PLACEHOLDERS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "instruction": (frozenset({"seed_criteria"}), frozenset({"seed_criteria", "n"})),
    "instruction_with_principles": (frozenset({"principles"}), frozenset({"principles", "n"})),
    "context_header": (frozenset(), frozenset()),
    "reference_header": (frozenset(), frozenset()),
    "responses_header": (frozenset(), frozenset()),
    "response_begin": (frozenset({"i"}), frozenset({"i"})),
    "response_end": (frozenset({"i"}), frozenset({"i"})),
    "output_format": (frozenset({"boxed_example"}), frozenset({"boxed_example", "n"})),
}


@dataclass(frozen=True)
class JudgeTemplate:
    """The text of a judgment prompt. See the module docstring for the layout."""

    name: str  # family, e.g. "grm-default"
    version: str  # exact text id, e.g. "grm-default-v1"; what load_template() takes
    instruction: str  # self-principled task; {{seed_criteria}} required, {{n}} allowed
    instruction_with_principles: str  # user-given criteria; {{principles}} required, {{n}} allowed
    seed_criteria: tuple[str, ...]  # example criteria, rendered as a numbered list
    context_header: str  # e.g. "#### Conversation Context ####"
    reference_header: str  # shown before a reference answer, when one is given
    responses_header: str  # e.g. "#### Responses to be Scored ####"
    response_begin: str  # e.g. "[The Begin of Response {{i}}]", i = shown position, 1-based
    response_end: str  # e.g. "[The End of Response {{i}}]"
    output_format: str  # asks for the three parts; {{boxed_example}} required, {{n}} allowed
    # role -> label in the rendered turns; left out of the hash (a dict is unhashable)
    role_labels: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ROLE_LABELS), hash=False)
    description: str = ""
    # Input caps in characters (None: no cap). A small judge reads short inputs best, and
    # the caps live in the template so that training, evaluation and serving cut alike:
    # the conversation keeps its last characters (a long dialogue is cut from the left),
    # each response its first ones; a cut is marked with an ellipsis.
    max_conversation_chars: int | None = None
    max_response_chars: int | None = None
    # Pointwise: the judge reads one response per prompt, so a request with N responses is
    # N prompts, each judged on its own, and the verdict compares their scores
    # (``grm.judge``). A judge that never sees two responses together cannot favour a position.
    pointwise: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.pointwise, bool):
            raise ValueError(f"JudgeTemplate.pointwise must be true or false, got {self.pointwise!r}")
        for name in ("max_conversation_chars", "max_response_chars"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 16):
                raise ValueError(f"JudgeTemplate.{name} must be an integer >= 16 or null, got {value!r}")
        for name in ("name", "version"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"JudgeTemplate.{name} must be a non-empty string, got {value!r}")
        if isinstance(self.seed_criteria, str):
            raise ValueError("JudgeTemplate.seed_criteria must be a list of strings, got one string")
        object.__setattr__(self, "seed_criteria", tuple(self.seed_criteria))
        if not self.seed_criteria or not all(isinstance(c, str) and c.strip() for c in self.seed_criteria):
            raise ValueError("JudgeTemplate.seed_criteria must be a non-empty list of non-empty strings")
        for name, (required, allowed) in _PLACEHOLDERS.items():
            _check_placeholders(name, getattr(self, name), required, allowed)
        for name in ("context_header", "reference_header", "responses_header"):
            _check_marker(name, getattr(self, name))
        for name in ("response_begin", "response_end"):
            _check_marker(name, getattr(self, name).split("{{i}}")[0])
        for header in (CRITERIA_HEADER, ANALYSIS_HEADER, SCORES_HEADER):
            # The parser reads these exact headers; a template asking for others would
            # produce judgments that never parse.
            if header not in self.output_format:
                raise ValueError(f"JudgeTemplate.output_format must ask for {header!r}")
        labels = {**DEFAULT_ROLE_LABELS, **dict(self.role_labels)}
        if set(labels) != set(DEFAULT_ROLE_LABELS):
            raise ValueError(f"JudgeTemplate.role_labels keys must be among {sorted(DEFAULT_ROLE_LABELS)}, "
                             f"got {sorted(self.role_labels)}")
        if not all(isinstance(v, str) and v.strip() for v in labels.values()):
            raise ValueError(f"JudgeTemplate.role_labels values must be non-empty strings, got {labels}")
        # A plain dict (not a read-only proxy) so that dataclasses.asdict and json work.
        object.__setattr__(self, "role_labels", labels)

    def to_dict(self) -> dict:
        """JSON-ready fields; ``load_template`` reads them back into an equal template."""
        return {f.name: getattr(self, f.name) for f in fields(self)} | {
            "seed_criteria": list(self.seed_criteria), "role_labels": dict(self.role_labels)}


def _check_placeholders(name: str, text: str, required: frozenset[str], allowed: frozenset[str]) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"JudgeTemplate.{name} must be a non-empty string, got {text!r}")
    found = set(PLACEHOLDER.findall(text))
    if missing := required - found:
        raise ValueError(f"JudgeTemplate.{name} must contain the placeholder(s) "
                         f"{', '.join('{{' + p + '}}' for p in sorted(missing))}")
    if unknown := found - allowed:
        raise ValueError(f"JudgeTemplate.{name} has unknown placeholder(s) "
                         f"{', '.join('{{' + p + '}}' for p in sorted(unknown))}; "
                         f"allowed: {sorted(allowed) or 'none'}")


def _check_marker(name: str, text: str) -> None:
    if not any(c in MARKER_CHARS for c in text):
        raise ValueError(f"JudgeTemplate.{name} must contain one of {MARKER_CHARS!r} before any "
                         f"placeholder (so copies of it in untrusted text can be defanged), got {text!r}")


def fill(text: str, **values: object) -> str:
    """Replace ``{{name}}`` placeholders in one pass (values are never re-scanned)."""
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def template_from_dict(data: Mapping, source: str = "template") -> JudgeTemplate:
    """Build a template from a JSON-like mapping; errors name the missing or unknown field."""
    known = {f.name: f for f in fields(JudgeTemplate)}
    if unknown := sorted(set(data) - set(known)):
        raise ValueError(f"{source}: unknown field(s) {unknown}; known: {sorted(known)}")
    optional = {"role_labels", "description", "max_conversation_chars", "max_response_chars", "pointwise"}
    if missing := [name for name in known if name not in data and name not in optional]:
        raise ValueError(f"{source}: missing field(s) {missing}")
    try:
        return JudgeTemplate(**data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from e


def _read_json(path: Path) -> JudgeTemplate:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return template_from_dict(data, str(path))


@lru_cache(maxsize=None)
def _builtins() -> dict[str, JudgeTemplate]:
    templates = [_read_json(p) for p in sorted(TEMPLATE_DIR.glob("*.json"))]
    return {t.version: t for t in templates}


def available_templates() -> list[str]:
    """Versions of the built-in templates, each a valid argument to ``load_template``."""
    return sorted(_builtins())


def load_template(name_or_path: str | Path) -> JudgeTemplate:
    """A built-in template by version (``"grm-default-v2"``), or a JSON file with the same fields."""
    key = str(name_or_path)
    if key in _builtins():
        return _builtins()[key]
    path = Path(key)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"template file {path} does not exist")
        return _read_json(path)
    raise ValueError(f"unknown template {key!r}: not a built-in ({', '.join(available_templates())}) "
                     f"and not a .json file")


DEFAULT_TEMPLATE: JudgeTemplate = load_template("grm-default-v2")
