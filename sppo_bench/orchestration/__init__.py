"""Orchestration: running many training runs (the multi-seed suite runner)."""
