"""Training commands: ``python -m generation.train clipgen ...`` (see generation/train/clipgen.py)."""
