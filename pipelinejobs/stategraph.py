"""The state machine for people: as data (``GET /state-machine``) and as a drawing (an SVG).

States are laid out in columns by their distance from CREATED; a job's path can be highlighted.
Pure functions of ``fsm.TRANSITIONS``: the read API and the web view call them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from html import escape
from typing import Any

from . import fsm


def state_machine() -> dict[str, Any]:
    """``fsm.TRANSITIONS`` as data: each event's source states and target (null: the state stays)."""
    return {
        "initial": fsm.State.CREATED.value,
        "states": [s.value for s in fsm.State],
        "events": [
            {
                "name": event,
                "from": sorted(s.value for s in sources),
                "to": target.value if target is not None else None,
                "admin_only": event in fsm.ADMIN_EVENTS,
            }
            for event, (sources, target) in fsm.TRANSITIONS.items()
        ],
    }


def _layers() -> dict[str, int]:
    """Each state's column: its distance from CREATED along state-changing events (reset aside)."""
    depth = {fsm.State.CREATED.value: 0}
    frontier = [fsm.State.CREATED.value]
    while frontier:
        following = []
        for state in frontier:
            for event, (sources, target) in fsm.TRANSITIONS.items():
                if event == "reset" or target is None or state not in {s.value for s in sources}:
                    continue
                if target.value not in depth:
                    depth[target.value] = depth[state] + 1
                    following.append(target.value)
        frontier = following
    for state in fsm.State:
        depth.setdefault(state.value, max(depth.values()) + 1)
    return depth


def state_machine_svg(path: Sequence[str] = ()) -> str:
    """The state graph as a standalone SVG: states in columns by distance from CREATED.

    Edges carry ``data-event``/``data-from``/``data-to`` and states ``data-state`` so a
    page can style them; ``path`` (states a job went through, in order) is highlighted.
    ``reset`` (allowed in every state) is drawn once, from an "any state" box.
    """
    layers = _layers()
    columns: dict[int, list[str]] = {}
    for member in fsm.State:
        columns.setdefault(layers[member.value], []).append(member.value)
    box_w, box_h, gap_x, gap_y, margin = 120, 34, 90, 40, 30
    any_state = "any state"
    spots: dict[str, tuple[float, float]] = {}
    for column, states in columns.items():
        for row, state in enumerate(states):
            spots[state] = (margin + column * (box_w + gap_x), margin + 30 + row * (box_h + gap_y))
    tallest = max(len(s) for s in columns.values())
    spots[any_state] = (margin + (layers["RESET"] - 1) * (box_w + gap_x), margin + 30 + tallest * (box_h + gap_y))
    width = margin * 2 + (max(columns) + 1) * (box_w + gap_x)
    height = margin * 2 + 30 + (tallest + 1) * (box_h + gap_y)
    visited = set(path)
    steps = set(itertools.pairwise(path))
    edges: dict[tuple[str, str], list[str]] = {}
    for event, (sources, goal) in fsm.TRANSITIONS.items():
        if goal is None:
            continue
        if event == "reset":
            edges.setdefault((any_state, goal.value), []).append(event)
            continue
        for source in sorted(s.value for s in sources):
            edges.setdefault((source, goal.value), []).append(event)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
        ' role="img" aria-labelledby="fsm-title" font-family="sans-serif" font-size="12">',
        '<title id="fsm-title">PipelineJob state machine</title>',
        "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='7' markerHeight='7'"
        " orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' fill='context-stroke'/></marker></defs>",
        "<style>.edge{fill:none;stroke:#667;stroke-width:1.2}.edge.walked{stroke:#c40;stroke-width:2.5}"
        ".state rect{fill:#f4f6fa;stroke:#334;stroke-width:1.2}.state.visited rect{fill:#fde2d0;stroke:#c40}"
        ".label{fill:#334}</style>",
    ]
    for (source, target), names in edges.items():
        x1, y1 = spots[source]
        x2, y2 = spots[target]
        walked = " walked" if (source, target) in steps else ""
        label = escape(", ".join(names))
        common = f'class="edge{walked}" data-event="{label}" data-from="{escape(source)}" data-to="{target}"'
        if source == target:  # a loop above the box
            cx, cy = x1 + box_w / 2, y1
            d = f"M{cx - 15},{cy} C{cx - 30},{cy - 35} {cx + 30},{cy - 35} {cx + 15},{cy}"
            out.append(f'<path {common} d="{d}" marker-end="url(#arrow)"/>')
            out.append(f'<text class="label" x="{cx}" y="{cy - 30}" text-anchor="middle">{label}</text>')
            continue
        forward = x2 > x1
        sx, sy = (x1 + box_w, y1 + box_h / 2) if forward else (x1 + box_w / 2, y1 + (box_h if y2 > y1 else 0))
        ex, ey = (x2, y2 + box_h / 2) if forward else (x2 + box_w / 2, y2 + (0 if y2 > y1 else box_h))
        if x2 == x1 and y2 == y1:
            continue
        mx, my = (sx + ex) / 2, (sy + ey) / 2
        bend = 18 if forward else -40
        d = f"M{sx:.0f},{sy:.0f} Q{mx:.0f},{my + bend:.0f} {ex:.0f},{ey:.0f}"
        out.append(f'<path {common} d="{d}" marker-end="url(#arrow)"/>')
        out.append(f'<text class="label" x="{mx:.0f}" y="{my + bend / 2 - 3:.0f}" text-anchor="middle">{label}</text>')
    for state, (x, y) in spots.items():
        seen = " visited" if state in visited else ""
        out.append(
            f'<g class="state{seen}" data-state="{escape(state)}"><rect x="{x}" y="{y}" width="{box_w}"'
            f' height="{box_h}" rx="6"/><text x="{x + box_w / 2}" y="{y + box_h / 2 + 4}"'
            f' text-anchor="middle">{escape(state)}</text></g>'
        )
    out.append("</svg>")
    return "\n".join(out)
