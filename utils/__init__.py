"""Shared utilities: data tools, losses, metrics and training helpers."""
