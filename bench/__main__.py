"""`python -m bench`; see bench/cli.py.

The import stays under the guard: spawned child processes re-import the main
module, and they must not pay for torch and simsyft just to run a target.
"""

if __name__ == "__main__":
    import sys

    from bench.cli import main

    sys.exit(main())
