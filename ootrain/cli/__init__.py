"""The ``ootrain`` command line (Typer): one module per command group."""
