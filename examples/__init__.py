"""The examples, runnable as `python examples/<name>.py` or `python -m examples.<name>` from the root."""
