"""The "Try it" page: a form that scores a typed conversation through the running service.

The form posts back to ``/inspect/try``; the conversation goes to the service through
its own gRPC client (``services.client.RewardClient``, with ``return_judgments``), so the
service's validation, cache, batching and limits apply, and the result is drawn by the
one-input view under the form, which keeps what was typed. A bad field gets 400 and a
message naming it; a refusal by the service shows its status and message.

    form = TryForm("127.0.0.1:50051")
    status, html = form.submit(b"query=Name+a+prime.&response=7&response=9&k=4", caller="127.0.0.1:4000")
"""

from __future__ import annotations

import math
from urllib.parse import parse_qs

import grpc

import grm.defaults as defaults
from services.client import CALL_METADATA, RewardClient
from services.inspector.html import esc
from services.inspector.input_view import InputView, render_input
from services.inspector.recorder import CALLER_METADATA
from grm.types import ScoreInput

RESPONSE_BOXES = 4  # empty boxes are left out
MAX_FIELDS = 64
NUMBERS = {"k": (int, 4), "temperature": (float, defaults.TEMPERATURE), "max_new_tokens": (int, 256), "seed": (int, 0)}
INT_RANGES = {"k": (1, 2**31 - 1), "max_new_tokens": (1, 2**31 - 1), "seed": (0, 2**63 - 1)}  # the proto's int32/int64
STATUS_FOR_GRPC = {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
                   grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 504}


class FormError(ValueError):
    """A form field is wrong; the message names it."""


class TryForm:
    def __init__(self, target: str | None = None, timeout_s: float = 300.0, client: RewardClient | None = None):
        """Scores through ``client`` when given (its owner closes it), else a client of its own for ``target``."""
        self._owned = client is None
        self.client = RewardClient(target, timeout_s=timeout_s) if client is None else client

    def close(self) -> None:
        if self._owned:
            self.client.close()

    def render(self, values: dict | None = None, error: str = "") -> str:
        v = values or {}
        responses = list(v.get("response", []))
        responses += [""] * max(RESPONSE_BOXES - len(responses), 0)
        boxes = "".join(f'<label>Response {i + 1}<textarea name="response" rows="3">{esc(r)}</textarea></label>'
                        for i, r in enumerate(responses))
        numbers = "".join(f'<label>{name}<input name="{name}" value="{esc(_first(v, name, default))}"></label>'
                          for name, (_, default) in NUMBERS.items())
        aggregation = _first(v, "aggregation", "voting")
        options = "".join(f'<option value="{a}"{" selected" if a == aggregation else ""}>{a}</option>'
                          for a in ("voting", "meta_voting"))
        return (f'{f"<p class=error role=alert>{esc(error)}</p>" if error else ""}'
                f'<form method="post" action="/inspect/try" class="try">'
                f'<label>System message (optional)<textarea name="system" rows="2">{esc(_first(v, "system", ""))}'
                f'</textarea></label><label>User query<textarea name="query" rows="3" required>'
                f'{esc(_first(v, "query", ""))}</textarea></label>{boxes}'
                f'<details><summary>Principles and reference (optional)</summary><label>Principles'
                f'<textarea name="principles" rows="3">{esc(_first(v, "principles", ""))}</textarea></label>'
                f'<label>Reference answer<textarea name="reference" rows="2">{esc(_first(v, "reference", ""))}'
                f'</textarea></label></details><div class="numbers">{numbers}<label>aggregation'
                f'<select name="aggregation">{options}</select></label></div>'
                f'<button type="submit">Score</button></form>')

    def submit(self, body: bytes, caller: str, authorization: str | None = None) -> tuple[int, str]:
        """(HTTP status, page body) for one posted form; ``authorization`` (the browser's bearer
        token, when the port asks for one) goes on to the service with the call."""
        try:
            values = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
        except (UnicodeDecodeError, ValueError) as e:
            return 400, self.render(error=f"form: not a valid form body ({e})")
        try:
            item, options = parse_form(values)
        except FormError as e:
            return 400, self.render(values, str(e))
        metadata = ((CALLER_METADATA, _ascii(f"inspector try-it from {caller}")),)
        token = CALL_METADATA.set(metadata + ((("authorization", authorization),) if authorization else ()))
        try:
            reply = self.client.score(item.conversation, item.responses, principles=item.principles,
                                      reference=item.reference, return_judgments=True, **options)
        except grpc.RpcError as e:
            return STATUS_FOR_GRPC.get(e.code(), 502), self.render(values, f"{e.code().name}: {e.details()}")
        finally:
            CALL_METADATA.reset(token)
        details = [("cache hit", "yes" if reply.from_cache else "no"), ("latency", f"{reply.latency_ms:.1f} ms")]
        view = InputView(title="Try it", item=item, result=reply.result, details=details)
        return 200, self.render(values) + '<section class="result"><h2>Result</h2>' + render_input(view) + "</section>"


def parse_form(values: dict[str, list[str]]) -> tuple[ScoreInput, dict]:
    """The input and scoring options of a posted form; FormError names a bad field."""
    query = _first(values, "query", "")
    if not query.strip():
        raise FormError("query: type the user's message")
    responses = [r for r in values.get("response", []) if r.strip()]
    if not responses:
        raise FormError("response: type at least one response")
    system = _first(values, "system", "")
    conversation = ([{"role": "system", "content": system}] if system.strip() else []) + \
        [{"role": "user", "content": query}]
    options = {}
    for name, (kind, default) in NUMBERS.items():
        raw = _first(values, name, "").strip()
        try:
            options[name] = kind(raw) if raw else default
        except ValueError:
            raise FormError(f"{name}: must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
        low, high = INT_RANGES.get(name, (-math.inf, math.inf))
        if not low <= options[name] <= high:  # the service's own limits are narrower; these must fit the message
            raise FormError(f"{name}: must be in {low}..{high}, got {raw}")
    aggregation = _first(values, "aggregation", "voting")
    if aggregation not in ("voting", "meta_voting"):
        raise FormError(f"aggregation: must be voting or meta_voting, got {aggregation!r}")
    options["aggregation"] = aggregation
    return ScoreInput(conversation, responses, _first(values, "principles", "") or None,
                      _first(values, "reference", "") or None), options


def _first(values: dict, name: str, default):
    got = values.get(name)
    return got[0] if got else default


def _ascii(text: str) -> str:
    """Metadata values must be printable ASCII."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:200]
