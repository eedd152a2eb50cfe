"""`python -m modelplane` runs the `modelplane` command."""

from modelplane.cli import main

raise SystemExit(main())
