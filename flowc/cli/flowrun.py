"""`python -m flowc.cli_flowrun` = the `flowrun` console script (handy without an install)."""

import sys

from flowc.cli import flowrun_main

if __name__ == "__main__":
    sys.exit(flowrun_main())
