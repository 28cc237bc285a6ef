"""`python -m grainchain`: the same as the `grainchain` command."""

import sys

from grainchain.cli import main

if __name__ == "__main__":
    sys.exit(main())
