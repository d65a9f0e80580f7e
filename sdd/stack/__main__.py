"""``python -m sdd.stack zombie-automation``: the team stack's init script creates Prefect's zombie-flow
automation with it (uses ``$PREFECT_API_URL``)."""

import os
import sys

from sdd.stack.api import ZOMBIE_AUTOMATION, ensure_zombie_automation

if __name__ == "__main__":  # python -m sdd.stack zombie-automation  (uses $PREFECT_API_URL)
    if sys.argv[1:] != ["zombie-automation"] or not os.environ.get("PREFECT_API_URL"):
        sys.exit("usage: PREFECT_API_URL=http://host:4200/api python -m sdd.stack zombie-automation")
    created = ensure_zombie_automation(os.environ["PREFECT_API_URL"])
    print(f"zombie automation {'created' if created else 'already there'}: {ZOMBIE_AUTOMATION}")
