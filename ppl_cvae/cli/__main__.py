"""Run :func:`ppl_cvae.cli.main` when the package is run as a module.

``python -m ppl_cvae.cli ...`` and ``torchrun ... -m ppl_cvae.cli fit ...`` start here.
"""

import sys

from ppl_cvae.cli import main

if __name__ == "__main__":  # not when a tool imports every module (Sphinx's walk_packages)
    sys.exit(main())
