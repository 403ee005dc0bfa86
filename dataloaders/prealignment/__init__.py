"""Intra-patient affine pre-alignment: estimation of one pair, and the per-dataset cache."""
