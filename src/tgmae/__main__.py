"""`python -m tgmae`: the `tgmae` command line (`tgmae.cli`)."""

import sys

from tgmae.cli import main

sys.exit(main())
