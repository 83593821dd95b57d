"""``python -m ppl_cvae.cli`` (and ``torchrun ... -m ppl_cvae.cli``): run :func:`ppl_cvae.cli.main`."""

import sys

from ppl_cvae.cli import main

if __name__ == "__main__":  # not when a tool imports every module (Sphinx's walk_packages)
    sys.exit(main())
