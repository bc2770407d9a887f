"""``python -m imgrep`` and ``python imgrep.pyz``."""

import sys

from imgrep.cli import main

sys.exit(main())
