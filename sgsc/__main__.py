"""`python -m sgsc ...` is the command-line interface (see sgsc.cli)."""

from sgsc.cli import main

raise SystemExit(main())
