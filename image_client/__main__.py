"""``python -m image_client``, which ``bin/upload`` runs."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
