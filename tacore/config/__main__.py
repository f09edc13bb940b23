"""``python -m tacore.config --markdown``: the README's configuration reference."""

import sys

from tacore.config.reference import main

if __name__ == "__main__":
    sys.exit(main())
