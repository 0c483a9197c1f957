"""Fixtures of tests/ops: they live in ops_kit.py, importable by name from the test modules."""

from ops_kit import *  # noqa: F403 - fixtures are found by name
