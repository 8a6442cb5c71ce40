"""`python -m flowc.cli ...` = the `flowc` console script (handy without an install)."""

import sys

from flowc.cli.main import main

sys.exit(main())
