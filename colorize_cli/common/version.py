"""The package's version: recorded in every output, bundle and checkpoint."""

__version__ = "0.2.0"
