"""Placeholder until the first benchmark lands."""
