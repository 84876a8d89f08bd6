"""Command-line interface: thin layers over the Python API."""
