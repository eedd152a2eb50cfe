"""``python -m turnout.controller``."""

from turnout.controller.run import main

raise SystemExit(main())
