"""`python -m netlang.cli ...`: the same as the `netlang` command."""

import sys

from netlang.cli import main

sys.exit(main())
