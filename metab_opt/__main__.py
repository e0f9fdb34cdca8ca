from __future__ import annotations

from metab_opt.cli import main

raise SystemExit(main())
