#!/usr/bin/env python3
"""Fails when a value of the chart is not described in its README.

usage: values_documented.py values.yaml README.md

Every leaf of values.yaml (a key with a scalar, a list or an empty map; `resources` counts
as one leaf) must appear in the README as `dotted.path` in backquotes. values.yaml is the
chart's own, simple YAML (maps by indentation, no lists of maps), so indentation is enough
to read it without a YAML library.
"""

import re
import sys

LEAF_MAPS = {"resources"}


def leaves(path):
    with open(path) as f:
        lines = [l.rstrip("\n") for l in f]
    entries = []  # (indent, key, has_inline_value)
    for l in lines:
        if not l.strip() or l.lstrip().startswith("#") or l.lstrip().startswith("-"):
            continue
        m = re.match(r"^( *)([A-Za-z_][A-Za-z0-9_]*):(.*)$", l)
        if not m:
            continue
        value = m.group(3).split(" #")[0].strip()
        entries.append((len(m.group(1)), m.group(2), value != ""))
    out, stack = [], []
    for i, (indent, key, inline) in enumerate(entries):
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        if any(k in LEAF_MAPS for _, k in stack):
            continue
        nested = not inline and i + 1 < len(entries) and entries[i + 1][0] > indent
        if not nested or key in LEAF_MAPS:
            out.append(dotted)
        if nested:
            stack.append((indent, key))
    return out


def main():
    values, readme = sys.argv[1], sys.argv[2]
    with open(readme) as f:
        text = f.read()
    paths = leaves(values)
    missing = [p for p in paths if f"`{p}`" not in text]
    for p in missing:
        print(f"FAIL: value {p} is not described in {readme}")
    print(f"{len(paths)} values, {len(missing)} undocumented")
    sys.exit(1 if missing or not paths else 0)


if __name__ == "__main__":
    main()
