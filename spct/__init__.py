"""Self-Principled Critique Tuning (SPCT) for the GRM itself (Liu et al. 2025, arXiv 2504.02495).

The layer above ``policy``: it trains the judge as a policy, with the trainer's GRPO maths
and SFT loop, on the verifiable tasks of ``grm.tasks``. ``grm spct`` runs ``pipeline``:

- ``config``: the run's options (``SPCTOptions``) and budgets; ``teacher``: correct
  evidence-first judgments and the rejection rule; ``data``: labelled items (tasks or a
  JSONL preference file) and token examples; ``tokenizer``: the SentencePiece tokenizer;
- ``rft`` (rejective sampling and filter), ``rl`` (GRPO on the +1/-1 rule reward),
  ``meta_rm_train`` (the meta RM), ``stages`` (how the pipeline calls them),
  ``stage_eval`` (greedy checks);
- experiments as plain functions: ``rl_grid``, ``meta_study`` and ``card_figures`` (the
  model card's), run from ``scripts/rl_grid.py``, ``scripts/meta_study.py`` and
  ``scripts/card_figures.py``.
"""
