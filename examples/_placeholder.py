"""Placeholder until the first example lands."""
