"""Safety and privacy of the companion: crisis detection, output guard, disclosure, PII scrubbing."""
