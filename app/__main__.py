"""``python -m app ...`` is the ``narrative`` command."""

import sys

from app.cli import main

sys.exit(main())
