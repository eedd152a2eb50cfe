"""``python -m turnout.agent``."""

import sys

from turnout.agent.cli import main

sys.exit(main())
