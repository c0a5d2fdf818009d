"""fedsim: a federated-learning simulation engine (virtual clock, pluggable strategies and executors)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
