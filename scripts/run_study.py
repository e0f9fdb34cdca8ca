#!/usr/bin/env python3
"""Run or resume a metab_opt study: the same as `metab-opt study`.

With no options it runs the default study (configs/rank50.yaml, SQLite under studies/rank50/).
`python scripts/run_study.py --help` lists the options.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metab_opt.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["study", *sys.argv[1:]]))
