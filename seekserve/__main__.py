"""`python -m seekserve` runs the CLI."""

from seekserve.cli import main

raise SystemExit(main())
