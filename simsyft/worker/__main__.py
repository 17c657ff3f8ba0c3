"""``python -m simsyft.worker '<WorkerLaunch JSON>'``: one worker process (worker/main.py)."""

import sys

from .main import main

sys.exit(main())
