"""bkup.agent."""
