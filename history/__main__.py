"""`python -m history ...`: the same as `studio-history ...`."""
import sys

from history.cli import main

sys.exit(main())
