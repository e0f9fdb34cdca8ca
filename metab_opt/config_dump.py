"""A whole config written back as YAML (a trial's ``config.yaml``, ``metab-opt best``'s file)."""

from __future__ import annotations

import yaml

from metab_opt.config import Config

__all__ = ["dump_config"]


def dump_config(cfg: Config, *, header: str = "") -> str:
    """The whole config as YAML that :func:`load_config` reads back to the same config: every
    key of every section (defaults written out), one flow-style line per search knob.
    ``header`` lines are written first, each as a ``#`` comment."""
    body = cfg.to_dict()
    search = body.pop("search")
    knobs = search.pop("knobs", {})
    dump = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    parts = [f"# {line}".rstrip() for line in header.splitlines()]
    parts.append(yaml.dump(body, Dumper=dump, sort_keys=False).rstrip())
    parts.append("search:")
    if search:
        parts.append(yaml.dump(search, Dumper=dump, sort_keys=False, indent=2).rstrip()
                     .replace("\n", "\n  ").join(("  ", "")))
    parts.append("  knobs:")
    width = max((len(str(n)) for n in knobs), default=0) + 1
    for name, spec in knobs.items():
        flow = yaml.dump(spec, Dumper=dump, default_flow_style=True, sort_keys=False,
                         width=10_000).strip()
        parts.append(f"    {f'{name}:':<{width}} {flow}")
    return "\n".join(parts) + "\n"
