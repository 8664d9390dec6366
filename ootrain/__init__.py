"""ootrain: a streaming out-of-core optimal-transport training engine."""

__version__ = "0.1.0"
