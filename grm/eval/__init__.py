"""Offline evaluation of the judge (what ``grm eval`` runs), beside the judge core.

One module per part, imported by its own path (this package re-exports nothing):

- ``records``: labelled preference data (JSONL in common formats, or synthetic tasks) in,
  ``EvalItem``s and ``Skipped`` lines out; ``splits``: train and validation by prompt;
- ``statistics``: accuracy@k for voting and MetaRM voting with bootstrap intervals, the
  meta RM's separation, the "longer response wins" baseline;
- ``run``: ``evaluate`` scores the items with a scorer and builds the ``grm-eval/1``
  report; ``journal``: its per-item results, appended, so a rerun resumes;
- ``attacks``: content-free responses and the hack rate; ``grounding``: do a critique's
  quotes appear in the answer it talks about;
- ``report``: the report as a terminal table or a plot, and the judgments as JSONL.

``run`` sits on top of the other modules here; nothing in the judge core imports this
package.
"""
