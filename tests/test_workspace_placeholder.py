"""Workspace-wide tests."""
