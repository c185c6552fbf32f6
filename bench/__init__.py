"""The benchmark of the cashout server against a bare Tornado + motor baseline (see
``bench/README.md``), in modules by job; ``bench/run.py`` is the entry point."""
