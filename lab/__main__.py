"""`python -m lab ...`: see cli.py."""

from .cli import main

raise SystemExit(main())
