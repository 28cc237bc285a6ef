"""Generated from the capability spec by `python -m codegen`; do not edit."""
