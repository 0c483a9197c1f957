"""Fixtures of tests/e2e: they live in e2e_kit.py, importable by name from the test modules."""

from e2e_kit import *  # noqa: F403 - fixtures are found by name
