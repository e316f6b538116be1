"""Fault-injection tests (RELIABILITY.md §1, D1-D3): kill a component mid-load, then check."""
