"""Benchmarks of arena-pref: where time and memory go, each measured side by side with the seed's way.

`python -m bench.run` (`make bench`) runs every CPU benchmark, each in its own process, and ends with
one JSON line per benchmark; `python -m bench.gpu_throughput` (`make bench-gpu`) needs CUDA.
Results (every repeat, machine description) land in bench/results/ (git-ignored).
"""

from types import MappingProxyType

from arena_pref.environment import PRODUCT

# The benchmarks' models are built locally or shipped in packages: no Hub for them (the product never sets it).
OFFLINE = MappingProxyType({"HF_HUB_OFFLINE": "1"})
BENCH_ENVIRONMENT = (*PRODUCT, OFFLINE)
