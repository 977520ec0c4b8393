"""The inspector's routes: a request (method, path, query, form body) in, a ``Reply`` out.

Framework-free and synchronous, so the HTTP endpoint (services/http_reward.py) runs it on
its worker threads behind its own connection limits and timeouts, and tests can call it
directly. Routes, all under ``/inspect``:

    GET  /inspect                        what is available
    GET  /inspect/recent                 the recorded requests, newest first
    GET  /inspect/recent/<id>            one recorded input
    GET  /inspect/try  POST /inspect/try  score a typed conversation through the service
    GET  /inspect/eval                   the evaluation reports; /inspect/eval/<n> one of them
    GET  /inspect/eval/<n>/item/<i>      one judged item of report n
    GET  /inspect/run                    the training runs; /inspect/run/<n> one, <n>.json its data
    GET  /inspect/static/<file>          the page script, the style sheet, uPlot

With tokens, a caller sees only the records its own token made, unless its token's name
is among ``admins``.

    app = Inspector(recorder=RecentRequests(1000), target="127.0.0.1:50051")
    reply = app.respond("GET", "/inspect/recent")
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.inspector.html import CSP, esc, fmt, page, table
from services.inspector.input_view import InputView, render_input
from services.inspector.recorder import RecentRequests, Record
from services.inspector.report_pages import eval_page, run_page
from services.inspector.sources import EvalSource, RunSource
from services.inspector.try_form import TryForm
from services.security import TokenFile

PREFIX = "/inspect"
STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
MAX_FORM_BYTES = 4 * 2**20  # a typed conversation; the service's own limits apply after this
RECENT_SHOWN = 200
FAVICON = "/favicon.ico"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: dict = field(default_factory=dict)


def html_reply(status: int, document: str) -> Reply:
    return Reply(status, document.encode("utf-8"), headers={"Content-Security-Policy": CSP,
                                                          "X-Content-Type-Options": "nosniff",
                                                          "Referrer-Policy": "same-origin",
                                                          "Cache-Control": "no-store"})


def not_found(what: str) -> Reply:
    return html_reply(404, page("Not found", f"<p>{esc(what)}</p>"))


class Inspector:
    """The pages for a recorder, a service to score through, and saved files (each optional)."""

    def __init__(self, recorder: RecentRequests | None = None, target: str | None = None,
                 reports: list[EvalSource] = (), runs: list[RunSource] = (), tokens: TokenFile | None = None,
                 admins: tuple[str, ...] = ()):
        self.recorder, self.reports, self.runs = recorder, list(reports), list(runs)
        self.tokens, self.admins = tokens, frozenset(admins)
        self.try_form = TryForm(target) if target else None
        self._routes = [
            (re.compile(r"/?"), self._home), (re.compile(r"/recent"), self._recent),
            (re.compile(r"/recent/(\d+)"), self._recorded), (re.compile(r"/try"), self._try),
            (re.compile(r"/eval"), self._eval_list), (re.compile(r"/eval/(\d+)"), self._eval),
            (re.compile(r"/eval/(\d+)/item/(\d+)"), self._eval_item), (re.compile(r"/run"), self._run_list),
            (re.compile(r"/run/(\d+)"), self._run), (re.compile(r"/run/(\d+)\.json"), self._run_json),
            (re.compile(r"/static/([\w.-]+)"), self._static)]

    @staticmethod
    def owns(path: str) -> bool:
        return path in (PREFIX, FAVICON) or path.startswith(PREFIX + "/")

    def close(self) -> None:
        if self.try_form is not None:
            self.try_form.close()

    def score_through(self, client) -> None:
        """Let "Try it" use ``client`` (the HTTP endpoint's, with its TLS settings) unless a target was given."""
        if self.try_form is None:
            self.try_form = TryForm(client=client)

    def respond(self, method: str, path: str, form: bytes = b"", caller: str = "",
                authorization: str | None = None) -> Reply:
        """The reply to one request; ``form`` is a POST body, ``caller`` who sent it (for the record),
        ``authorization`` the request's bearer token, passed on when "Try it" scores."""
        if path == FAVICON:  # browsers ask for it; there is none
            return Reply(204, b"", "image/x-icon")
        for pattern, handler in self._routes:
            match = pattern.fullmatch(path[len(PREFIX):])
            if match:
                if method == "POST" and handler == self._try:
                    return self._try_post(form, caller, authorization)
                if method not in ("GET", "HEAD"):
                    return html_reply(405, page("Method not allowed", f"<p>method: {esc(method)} is not "
                                                                       "served here; use GET</p>"))
                args = [int(g) if g.isdigit() else g for g in match.groups()]
                if handler in (self._recent, self._recorded):
                    args.append(self._viewer(authorization))
                return handler(*args)
        return not_found(f"path: no inspector page at {path}")

    def _home(self) -> Reply:
        recording = (f"on, the last {self.recorder.config.capacity} inputs ({len(self.recorder)} kept now)"
                     if self.recorder is not None else "off (grm serve --record N turns it on)")
        body = (f"<p>Recording of scored inputs: {esc(recording)}.</p><ul class=links>"
                f'<li><a href="{PREFIX}/recent">Recent requests</a></li>'
                f'<li><a href="{PREFIX}/try">Try it</a>{"" if self.try_form else " (no service to score through)"}</li>'
                f'<li><a href="{PREFIX}/eval">Evaluation reports</a> ({len(self.reports)})</li>'
                f'<li><a href="{PREFIX}/run">Training runs</a> ({len(self.runs)})</li></ul>')
        return html_reply(200, page("GRM inspector", body, "home"))

    def _viewer(self, authorization: str | None):
        """Which records a request may see: a test on a ``Record``."""
        if self.tokens is None:
            return lambda record: True
        name = self.tokens.identify(authorization)
        return lambda record: name is not None and (name in self.admins or record.owner == name)

    def _recent(self, visible) -> Reply:
        if self.recorder is None:
            body = "<p class=note>Recording is off. Start the service with <code>grm serve --record N</code> " \
                   "to keep the last N scored inputs (they are users' data, so it is off by default).</p>"
            return html_reply(200, page("Recent requests", body, "recent"))
        records = [r for r in self.recorder.latest() if visible(r)][:RECENT_SHOWN]
        rows = [[f'<a class="record-link" href="{PREFIX}/recent/{r.id}">#{r.id}</a>',
                 esc(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.time))), esc(r.caller), esc(r.method),
                 " / ".join(fmt(v) for v in r.rewards), " / ".join(fmt(v) for v in r.spread),
                 f"{r.num_valid} / {r.num_invalid}", "yes" if r.from_cache else "no"] for r in records]
        body = (f"<p>The last {len(self.recorder)} scored inputs are kept (at most "
                f"{self.recorder.config.capacity}); the newest {len(records)} are listed.</p>"
                + table(["", "time", "caller", "call", "reward per response", "spread", "valid / invalid",
                         "cache hit"], rows, "recent"))
        return html_reply(200, page("Recent requests", body, "recent"))

    def _recorded(self, record_id: int, visible) -> Reply:
        record = self.recorder.get(record_id) if self.recorder is not None else None
        if record is None or not visible(record):
            return not_found(f"request {record_id}: not recorded, or no longer among the last "
                             f"{self.recorder.config.capacity if self.recorder else 0}")
        return html_reply(200, page(f"Request #{record.id}", render_input(record_view(record)), "recent"))

    def _try(self) -> Reply:
        if self.try_form is None:
            return html_reply(200, page("Try it", "<p class=note>No reward service to score through: "
                                                  "start grm inspect with --target.</p>", "try"))
        return html_reply(200, page("Try it", self.try_form.render(), "try"))

    def _try_post(self, form: bytes, caller: str, authorization: str | None) -> Reply:
        if self.try_form is None:
            return html_reply(404, page("Try it", "<p>no reward service to score through</p>", "try"))
        status, body = self.try_form.submit(form, caller, authorization)
        return html_reply(status, page("Try it", body, "try"))

    def _eval_list(self) -> Reply:
        rows = [[f'<a href="{PREFIX}/eval/{i}">{esc(s.name)}</a>', esc(s.report.get("settings", {}).get("data")),
                 esc(s.report.get("items")), str(len(s.items))] for i, s in enumerate(self.reports)]
        body = table(["report", "data", "items", "judged items loaded"], rows) if rows else \
            "<p class=note>No reports. <code>grm inspect report.json judgments.jsonl</code> shows one.</p>"
        return html_reply(200, page("Evaluation reports", body, "eval"))

    def _eval(self, index: int) -> Reply:
        if index >= len(self.reports):
            return not_found(f"report {index}: there are {len(self.reports)}")
        return html_reply(200, page(f"Evaluation: {self.reports[index].name}", eval_page(self.reports[index], index),
                                    "eval", charts=True))

    def _eval_item(self, index: int, item: int) -> Reply:
        if index >= len(self.reports) or item >= len(self.reports[index].items):
            return not_found(f"report {index} item {item}: no such item")
        view = self.reports[index].item_view(item)
        return html_reply(200, page(view.title, render_input(view), "eval"))

    def _run_list(self) -> Reply:
        rows = [[f'<a href="{PREFIX}/run/{i}">{esc(r.name)}</a>', esc(r.path)] for i, r in enumerate(self.runs)]
        body = table(["run", "metrics file"], rows) if rows else \
            "<p class=note>No runs. <code>grm inspect --metrics runs/grpo/metrics.jsonl</code> shows one.</p>"
        return html_reply(200, page("Training runs", body, "run"))

    def _run(self, index: int) -> Reply:
        if index >= len(self.runs):
            return not_found(f"run {index}: there are {len(self.runs)}")
        return html_reply(200, page(f"Training run: {self.runs[index].name}", run_page(self.runs[index], index),
                                    "run", charts=True))

    def _run_json(self, index: int) -> Reply:
        if index >= len(self.runs):
            return Reply(404, b'{"error": "run: no such run"}', "application/json")
        return Reply(200, json.dumps(self.runs[index].series(), allow_nan=False).encode(), "application/json",
                     {"Cache-Control": "no-store"})

    def _static(self, name: str) -> Reply:
        path = STATIC_DIR / name
        kind = STATIC_TYPES.get(path.suffix)
        if kind is None or not path.is_file():
            return not_found(f"static file {name}: none")
        return Reply(200, path.read_bytes(), kind, {"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})


def record_view(record: Record) -> InputView:
    result = record.result()
    details = [("time", esc(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.time)))),
               ("caller", esc(record.caller)), ("call", esc(record.method)),
               ("cache hit", "yes" if record.from_cache else "no"), ("latency", f"{record.latency_ms:.1f} ms")]
    note = "" if result.judgments or record.num_samples == 0 else \
        "The judgments of this input were not available when it was recorded; only the rewards are shown."
    return InputView(title=f"Request #{record.id}", item=record.input(), result=result, details=details, note=note)
