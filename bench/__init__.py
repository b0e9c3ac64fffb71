"""Benchmarks of arena-pref: where time and memory go, each measured side by side with the seed's way.

`python -m bench.run` (`make bench`) runs every CPU benchmark, each in its own process, and ends with
one JSON line per benchmark; `python -m bench.gpu_throughput` (`make bench-gpu`) needs CUDA.
Results (every repeat, machine description) land in bench/results/ (git-ignored).
"""
