"""`python -m bench`: the core benchmark (bench/core_bench.py); see bench/README.md."""
from bench.core_bench import main

main()
