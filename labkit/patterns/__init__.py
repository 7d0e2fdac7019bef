"""Runnable building blocks of the four parallelism patterns.

Worker functions live in these modules (not in notebooks) so processes started with spawn or
forkserver can import them. One module per pattern: pipeline, ensemble, sharding, data_parallel; pool (the process pool of 05).
"""
