"""Synthetic infrared meibography with known anatomy, deformations and dropout (demos and tests)."""
