"""Bundled tempest-like suite for the simulated lab."""
