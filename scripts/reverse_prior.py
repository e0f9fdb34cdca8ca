"""Write a deliberately wrong prior: every value of a prior file negated (the best trial becomes
the worst). docs/transfer.md measures what it costs a study (`--prior` with this file).

    python scripts/reverse_prior.py configs/priors/rank50_family.json /tmp/reversed.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from metab_opt.prior import write_prior


def reverse(src: Path, out: Path) -> None:
    content = json.loads(src.read_text())
    for study in content["studies"]:
        study["name"] += "_reversed"
        for t in study["trials"]:
            if t["value"] is not None:
                t["value"] = -t["value"]
            t["intermediate"] = [[s, -v] for s, v in t["intermediate"]]
    write_prior(content, out)


if __name__ == "__main__":
    reverse(Path(sys.argv[1]), Path(sys.argv[2]))
