"""Evaluating MiniMind-V: exact-match accuracy of generated answers (exact_match.py). This package imports
nothing by itself."""
