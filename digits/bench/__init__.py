"""Benchmarks: backends (runtimes), the one timer, the sweep, and its reports."""
