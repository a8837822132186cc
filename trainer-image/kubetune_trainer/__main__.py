"""`python -m kubetune_trainer SUBCOMMAND ...` (see `kubetune_trainer.cli`)."""

import sys

from kubetune_trainer.cli import main

sys.exit(main())
