"""``python -m w2e``: the w2e command line."""
import sys

from .cli import main

sys.exit(main())
