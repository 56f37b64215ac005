"""Reading, normalizing and encoding dialogue data."""
