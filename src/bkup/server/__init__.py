"""bkup.server."""
