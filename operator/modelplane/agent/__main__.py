"""``python -m modelplane.agent``."""

import sys

from modelplane.agent.cli import main

sys.exit(main())
