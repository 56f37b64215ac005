"""hamdam: reproducible training of small dialogue models that keep learning."""

__version__ = "0.1.0"
