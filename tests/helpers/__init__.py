"""Helpers shared by the test folders (import as ``from helpers.run_if import RunIf``)."""
