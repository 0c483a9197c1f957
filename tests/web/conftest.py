"""Fixtures of tests/web: they live in web_kit.py, importable by name from the test modules."""

from web_kit import *  # noqa: F403 - fixtures are found by name
