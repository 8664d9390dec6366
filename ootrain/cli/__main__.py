"""``python -m ootrain.cli``: the ``ootrain`` command."""

from ootrain.cli import app

__all__: list[str] = []

app()
