"""Self-Principled Critique Tuning (SPCT) for the GRM itself.

``tasks`` generates verifiable judging tasks with exact ground truth, ``teacher`` writes
correct judgments for them (the cold-start data) and holds the rejection rule that both
rejective fine-tuning and the rule-based online RL reward use.
"""
