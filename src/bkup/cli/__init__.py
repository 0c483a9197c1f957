"""bkup.cli."""
