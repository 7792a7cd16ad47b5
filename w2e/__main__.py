"""``python -m w2e``: the w2e command line."""
import sys

from w2e.cli import main

sys.exit(main())
