"""The ``graft`` command (``graft.cli:main``). Heavy modules are imported inside each
command, so ``graft --help``, ``graft predict`` and ``graft serve`` never load TensorFlow."""

from graft.cli.app import cli, main

__all__ = ["cli", "main"]
