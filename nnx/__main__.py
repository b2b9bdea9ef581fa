"""``python -m nnx train ...``: the command line of :mod:`nnx.cli`."""

from .cli import main

raise SystemExit(main())
