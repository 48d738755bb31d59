"""ConvScope runtime: datasets, trainer, runs on disk, export and the `python -m lab` CLI."""
