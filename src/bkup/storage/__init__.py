"""bkup.storage."""
