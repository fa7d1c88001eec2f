"""The package version, in a module of its own: :mod:`flashkit.telemetry` stamps it on every
resource without importing the package root (which imports the client)."""

__version__ = "0.1.0"
