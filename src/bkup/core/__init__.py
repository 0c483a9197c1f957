"""bkup.core."""
