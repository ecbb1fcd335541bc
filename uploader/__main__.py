"""``python -m uploader`` starts the service, like ``bin/serve``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
