"""circuitd: automated circuit discovery. This module imports no torch (the API relies on it)."""

__version__ = "0.1.0"
