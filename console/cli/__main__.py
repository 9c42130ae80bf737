"""`python -m console.cli`: what the `tpuconsole` script runs."""

import sys

from console.cli import main

sys.exit(main())
