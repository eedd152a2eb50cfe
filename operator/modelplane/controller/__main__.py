"""``python -m modelplane.controller``."""

from modelplane.controller.app import main

raise SystemExit(main())
