"""bkup.catalog."""
