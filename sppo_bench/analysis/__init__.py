"""Aggregation, statistics and figures over finished runs."""
