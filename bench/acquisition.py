"""Acquisition benchmark (the same as `asvp-fast bench`); see asvp_fast/benchmarks/acquisition.py."""

from asvp_fast.benchmarks.acquisition import main

if __name__ == "__main__":
    raise SystemExit(main())
