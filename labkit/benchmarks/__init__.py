"""One module per ``labkit bench`` benchmark, each with ``run(fast: bool) -> labkit.bench.Result``."""
