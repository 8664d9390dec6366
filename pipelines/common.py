"""Helpers shared by the pipelines (they live in the library: pipelines import only it)."""

from __future__ import annotations

from ootrain.threads import one_thread

__all__ = ["one_thread"]
