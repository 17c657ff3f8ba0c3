"""`python -m simsyft` runs the CLI (simsyft/cli.py)."""

import sys

from .cli import main

sys.exit(main())
