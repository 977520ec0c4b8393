"""Self-Principled Critique Tuning (SPCT) for the GRM itself (Liu et al. 2025, arXiv 2504.02495).

``grm spct`` (``pipeline``) trains a GRM from nothing or from any causal LM:

- ``tasks``: verifiable judging tasks with exact ground truth; ``teacher``: correct
  evidence-first judgments and the rejection rule; ``data``: labelled items (tasks or a
  JSONL preference file) and token examples;
- ``tokenizer``: the SentencePiece tokenizer; ``model``: the starting model;
- ``sft`` (cold start, RFT fine-tuning), ``rft`` (rejective sampling and filter), ``rl``
  (GRPO on the +1/-1 rule reward), ``meta_rm_train`` (the meta RM), ``stages`` (how the
  pipeline calls them), ``stage_eval`` (greedy checks), ``rl_grid`` and ``card_figures``
  (the model card's experiments).
"""
