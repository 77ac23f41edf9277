"""Retrains the zstd dictionary shipped in the package (python/bluewren/data/chat.dict).

    python tools/train_dictionary.py [--out PATH] [--samples N]

The corpus and the training live in ``bluewren.node.compression`` (seeded, so a retrain
gives the same samples); this script only runs them.
"""

import sys

from bluewren.node.compression import main

if __name__ == "__main__":
    sys.exit(main())
