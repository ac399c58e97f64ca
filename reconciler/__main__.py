"""`python -m reconciler` runs the `azp-reconciler` command."""

import sys

from reconciler.cli import main

sys.exit(main())
