"""Importers of public meibography datasets into this project's folder layout."""
