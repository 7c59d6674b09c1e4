"""graft: a frozen Keras backbone, a new head, exports that run anywhere."""

__version__ = "0.1.0"
