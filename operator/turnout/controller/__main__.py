"""``python -m turnout.controller``."""

from turnout.controller.app import main

raise SystemExit(main())
