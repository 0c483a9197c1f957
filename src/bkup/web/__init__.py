"""bkup.web."""
