"""``python -m writeback [options]``: the same as ``flashsale worker`` (settings from FLASHSALE_*)."""

from __future__ import annotations

import sys

from flashsale.cli import main

if __name__ == "__main__":
    main(["worker", *sys.argv[1:]], prog_name="python -m writeback")
