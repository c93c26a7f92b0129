"""queuectl's benchmark: one module per measurement, driven by bench/run.py."""
