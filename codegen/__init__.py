"""Generates grainchain's typed surface from the capability spec. Run `python -m codegen` (or `--check`)."""
