"""Where the team's shared data lives: `../shared` beside the checkout (as on developer
machines and in CI), or MIRRORD_SHARED_DIR."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MIRRORD_SHARED_DIR", ROOT.parent / "shared"))
UPSTREAM = SHARED / "upstream"

if not (UPSTREAM / "mirrord-schema.json").exists():
    raise RuntimeError(f"upstream test data not found at {UPSTREAM}: set MIRRORD_SHARED_DIR")
