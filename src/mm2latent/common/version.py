"""The package version (also in pyproject.toml), where every layer may read it."""

__version__ = "0.1.0"
