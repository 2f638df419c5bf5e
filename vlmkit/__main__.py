"""`python -m vlmkit ...` runs the `vlmkit` command line."""

from vlmkit.cli import main

raise SystemExit(main())
