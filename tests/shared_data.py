"""Where the team's shared data lives: `../shared` beside the checkout (as on developer
machines and in CI), or MIRRORD_SHARED_DIR.

Without it (a fresh clone on its own), the tests that read upstream mirrord's config corpus
and schema skip, saying where they looked: a module that reads the data as it loads skips
itself (`if not AVAILABLE: pytest.skip(MISSING_REASON, allow_module_level=True)`, before
reading it), a single test takes the `needs_upstream` marker.
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MIRRORD_SHARED_DIR", ROOT.parent / "shared"))
UPSTREAM = SHARED / "upstream"
AVAILABLE = (UPSTREAM / "mirrord-schema.json").exists()
MISSING_REASON = (
    f"upstream test data not found at {UPSTREAM} (expected mirrord-schema.json and configs/ "
    "there): put the team's shared/ beside the checkout or set MIRRORD_SHARED_DIR"
)

needs_upstream = pytest.mark.skipif(not AVAILABLE, reason=MISSING_REASON)
