"""Fixtures of tests/catalog: they live in catalog_kit.py, importable by name from the test modules."""

from catalog_kit import *  # noqa: F403 - fixtures are found by name
