"""The measurement core: the session and its one lifecycle (pre-flight, baseline, warmup,
windows, metrics), statistics and emissions. Runs in plain Python, without pytest."""
