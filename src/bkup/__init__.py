"""bkup: centrally managed, deduplicating, continuous backup."""

__version__ = "0.1.0"
