"""Clinical measures from gland and eyelid masks: glands and their shape, the lid margin, dropout
and its grades, per-image measures, and their agreement with true masks or clinicians."""
