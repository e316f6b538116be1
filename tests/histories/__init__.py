"""Committed workflow histories for the determinism (replay) test; ``record.py`` makes them."""
