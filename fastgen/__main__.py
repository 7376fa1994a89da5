"""``python -m fastgen ...``: the fastgen command line (see :mod:`fastgen.cli`)."""
from .cli import main

raise SystemExit(main())
