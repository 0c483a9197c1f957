"""Fixtures of tests/security live in security_kit.py (importable by name from the test modules)."""
