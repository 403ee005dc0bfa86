"""Scoring trained models: segmentation and registration metrics, evaluation loops, comparisons
of experiments, prediction on new images, and pictures of the results."""
