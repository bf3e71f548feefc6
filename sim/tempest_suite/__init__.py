"""A small tempest-shaped test suite the simulated devstack node runs for real (with stestr)."""
