"""Pipelines that reproduce each seed paper's headline experiment at CPU scale."""
