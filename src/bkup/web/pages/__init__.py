"""The page controllers of the admin UI, one module per area; each handler parses input, calls services, renders."""
