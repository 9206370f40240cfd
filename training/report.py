"""HTML reports of discovery and re-validation: Jinja2 templates with inline SVG charts.

Charts are plain SVG built here (no JavaScript, no CDN: the reports must open offline, in a
mail attachment or a CI artifact). Every chart is an ``<svg class="chart" data-chart=...>`` so
tests can find it in the rendered DOM.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

TEMPLATES = Path(__file__).parent / "templates"
CONVERTER_COLOUR = "#1b7f5f"
NON_CONVERTER_COLOUR = "#9aa5b1"
ACTIVITY_COLOUR = "#c2410c"


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda x: "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"
    env.filters["num"] = _num
    return env


def _num(x, digits: int = 2) -> str:
    if x is None:
        return "–"
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(xf):
        return "–"
    if math.isinf(xf):
        return "∞"
    if xf != 0 and abs(xf) < 10 ** -digits:
        return f"{xf:.1e}"
    return f"{xf:,.{digits}f}"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


# --------------------------------------------------------------------------------------------
# SVG charts
# --------------------------------------------------------------------------------------------

def rate_bars_svg(rows: pd.DataFrame, *, width: int = 760, chart_id: str = "rates") -> str:
    """Converter vs non-converter rate bars with 95% Wilson intervals, one pair per row.

    ``rows`` needs ``label, converter_rate(_low/_high), non_converter_rate(_low/_high)``.
    """
    label_w, bar_h, gap = 300, 12, 14
    plot_w = width - label_w - 60
    height = 30 + len(rows) * (2 * bar_h + gap) + 20
    out = [f'<svg class="chart" data-chart="{chart_id}" xmlns="http://www.w3.org/2000/svg" '
           f'width="{width}" height="{height}" role="img" aria-label="converter and non-converter rates">']
    out.append(f'<rect x="{label_w}" y="6" width="10" height="10" fill="{CONVERTER_COLOUR}"/>'
               f'<text x="{label_w + 14}" y="15" font-size="11">converters</text>'
               f'<rect x="{label_w + 100}" y="6" width="10" height="10" fill="{NON_CONVERTER_COLOUR}"/>'
               f'<text x="{label_w + 114}" y="15" font-size="11">non-converters (95% Wilson interval)</text>')
    y = 30
    for _, r in rows.iterrows():
        label = str(r["label"])
        short = label if len(label) <= 48 else label[:46] + "…"
        out.append(f'<text x="{label_w - 6}" y="{y + bar_h + 4}" font-size="11" text-anchor="end">'
                   f'<title>{_e(label)}</title>{_e(short)}</text>')
        for k, (col, colour) in enumerate((("converter_rate", CONVERTER_COLOUR),
                                           ("non_converter_rate", NON_CONVERTER_COLOUR))):
            yy = y + k * (bar_h + 1)
            v = float(r[col]) if pd.notna(r[col]) else 0.0
            lo, hi = float(r[f"{col}_low"]), float(r[f"{col}_high"])
            out.append(f'<rect class="bar {col}" x="{label_w}" y="{yy}" width="{v * plot_w:.1f}" '
                       f'height="{bar_h}" fill="{colour}"><title>{col.replace("_", " ")} {v:.1%} '
                       f'[{lo:.1%}, {hi:.1%}]</title></rect>')
            cy = yy + bar_h / 2
            out.append(f'<line class="interval" x1="{label_w + lo * plot_w:.1f}" x2="{label_w + hi * plot_w:.1f}" '
                       f'y1="{cy}" y2="{cy}" stroke="#111" stroke-width="1.2"/>')
            for xv in (lo, hi):
                out.append(f'<line x1="{label_w + xv * plot_w:.1f}" x2="{label_w + xv * plot_w:.1f}" '
                           f'y1="{cy - 3}" y2="{cy + 3}" stroke="#111"/>')
            out.append(f'<text x="{label_w + max(v, hi) * plot_w + 4:.1f}" y="{yy + bar_h - 2}" '
                       f'font-size="10">{v:.0%}</text>')
        y += 2 * bar_h + gap
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        x = label_w + t * plot_w
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="26" y2="{height - 16}" stroke="#ddd"/>'
                   f'<text x="{x:.1f}" y="{height - 4}" font-size="10" text-anchor="middle">{t:.0%}</text>')
    out.append("</svg>")
    return "".join(out)


def _lift_colour(lift: float) -> str:
    """Diverging colour on log2(lift): grey at 1, green above, red below (saturates at 8x)."""
    if lift is None or not np.isfinite(lift) or lift <= 0:
        return "#1b7f5f" if lift is not None and np.isinf(lift) else "#eeeeee"
    z = max(-1.0, min(1.0, math.log2(lift) / 3))
    if z >= 0:
        r, g, b = (int(245 - z * (245 - c)) for c in (27, 127, 95))
    else:
        r, g, b = (int(245 + z * (245 - c)) for c in (194, 65, 12))
    return f"rgb({r},{g},{b})"


def lift_heatmap_svg(grid: pd.DataFrame, title: str, *, chart_id: str = "heatmap") -> str:
    """A heat map of lift: rows "at least N times", columns "within D days" (``grid`` is N x D)."""
    cell_w, cell_h, left, top = 70, 24, 120, 40
    width = left + cell_w * len(grid.columns) + 10
    height = top + cell_h * len(grid.index) + 10
    out = [f'<svg class="chart heatmap" data-chart="{chart_id}" xmlns="http://www.w3.org/2000/svg" '
           f'width="{width}" height="{height}" role="img" aria-label="{_e(title)}">',
           f'<text x="4" y="14" font-size="12" font-weight="bold">{_e(title)}</text>']
    for j, col in enumerate(grid.columns):
        out.append(f'<text x="{left + j * cell_w + cell_w / 2}" y="{top - 6}" font-size="11" '
                   f'text-anchor="middle">{_e(col)}</text>')
    for i, idx in enumerate(grid.index):
        y = top + i * cell_h
        out.append(f'<text x="{left - 6}" y="{y + cell_h / 2 + 4}" font-size="11" text-anchor="end">{_e(idx)}</text>')
        for j, col in enumerate(grid.columns):
            v = grid.loc[idx, col]
            v = float(v) if pd.notna(v) else float("nan")
            txt = "" if math.isnan(v) else _num(v)
            out.append(f'<rect class="cell" x="{left + j * cell_w}" y="{y}" width="{cell_w - 2}" '
                       f'height="{cell_h - 2}" fill="{_lift_colour(v)}"><title>{_e(idx)}, {_e(col)}: '
                       f'lift {txt or "not tested"}</title></rect>'
                       f'<text x="{left + j * cell_w + cell_w / 2}" y="{y + cell_h / 2 + 4}" font-size="11" '
                       f'text-anchor="middle">{txt}</text>')
    out.append("</svg>")
    return "".join(out)


def lift_bars_svg(rows: pd.DataFrame, *, chart_id: str = "activity-trap", width: int = 760) -> str:
    """Horizontal lift bars (log scale), raw activity in orange beside milestones in green."""
    label_w, bar_h, gap = 300, 14, 6
    plot_w = width - label_w - 60
    lifts = rows["lift"].replace([np.inf], np.nan).astype(float)
    max_lift = max(2.0, float(np.nanmax(lifts)) if lifts.notna().any() else 2.0)
    scale = math.log2(max_lift * 1.1)
    height = 20 + len(rows) * (bar_h + gap) + 20
    out = [f'<svg class="chart" data-chart="{chart_id}" xmlns="http://www.w3.org/2000/svg" '
           f'width="{width}" height="{height}" role="img" aria-label="lift of raw activity and milestones">']
    y = 10
    for _, r in rows.iterrows():
        lift = float(r["lift"]) if pd.notna(r["lift"]) else 1.0
        shown = max_lift * 1.1 if np.isinf(lift) else lift
        w = max(0.0, math.log2(max(shown, 1.0)) / scale * plot_w)
        colour = ACTIVITY_COLOUR if r.get("is_activity", False) else CONVERTER_COLOUR
        label = str(r["label"])
        short = label if len(label) <= 48 else label[:46] + "…"
        kind = "activity" if r.get("is_activity", False) else "milestone"
        out.append(f'<text x="{label_w - 6}" y="{y + bar_h - 3}" font-size="11" text-anchor="end">'
                   f'<title>{_e(label)}</title>{_e(short)}</text>'
                   f'<rect class="bar {kind}" x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                   f'fill="{colour}"><title>lift {_num(lift)}</title></rect>'
                   f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 3}" font-size="10">{_num(lift)}×</text>')
        y += bar_h + gap
    out.append(f'<text x="{label_w}" y="{height - 4}" font-size="10">lift (log scale; 1× = no difference)</text>')
    out.append("</svg>")
    return "".join(out)


def lift_lines_svg(table: pd.DataFrame, *, threshold: float, chart_id: str = "lift-by-period",
                   width: int = 760, height: int = 280) -> str:
    """Lift per period, one line per milestone (log scale), with the alert threshold dashed."""
    periods = list(dict.fromkeys(table["period"].astype(str)))
    names = list(dict.fromkeys(table["milestone"]))
    left, right, top, bottom = 50, 200, 16, 30
    pw, ph = width - left - right, height - top - bottom
    vals = table["lift"].replace([np.inf], np.nan).astype(float)
    hi = max(threshold * 1.5, float(np.nanmax(vals)) if vals.notna().any() else 2.0)
    lo = min(0.5, float(np.nanmin(vals[vals > 0])) if (vals > 0).any() else 0.5)

    def yv(v):
        return top + ph - (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo)) * ph

    def xv(i):
        return left + (i + 0.5) * pw / max(1, len(periods))

    palette = ["#1b7f5f", "#2563eb", "#c2410c", "#7c3aed", "#0891b2", "#b45309", "#be123c", "#4d7c0f",
               "#475569", "#db2777"]
    out = [f'<svg class="chart" data-chart="{chart_id}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" role="img" aria-label="lift by period">']
    for v in (0.5, 1, 2, 4, 8, 16):
        if lo <= v <= hi:
            out.append(f'<line x1="{left}" x2="{left + pw}" y1="{yv(v):.1f}" y2="{yv(v):.1f}" stroke="#eee"/>'
                       f'<text x="{left - 4}" y="{yv(v) + 4:.1f}" font-size="10" text-anchor="end">{v:g}×</text>')
    out.append(f'<line class="threshold" x1="{left}" x2="{left + pw}" y1="{yv(threshold):.1f}" '
               f'y2="{yv(threshold):.1f}" stroke="#c2410c" stroke-dasharray="5,4"/>')
    for i, p in enumerate(periods):
        out.append(f'<text x="{xv(i):.1f}" y="{height - 10}" font-size="10" text-anchor="middle">{_e(p)}</text>')
    for k, name in enumerate(names):
        sub = table[table["milestone"] == name]
        pts = []
        for _, r in sub.iterrows():
            v = r["lift"]
            if pd.notna(v) and np.isfinite(v) and v > 0:
                pts.append((xv(periods.index(str(r["period"]))), yv(min(max(float(v), lo), hi))))
        colour = palette[k % len(palette)]
        if len(pts) > 1:
            out.append(f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" points="'
                       + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + f'"><title>{_e(name)}</title></polyline>')
        for x, y in pts:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')
        ly = top + 12 + k * 14
        out.append(f'<rect x="{left + pw + 10}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{left + pw + 24}" y="{ly + 1}" font-size="10">{_e(name[:28])}</text>')
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Discovery report
# --------------------------------------------------------------------------------------------

def _heatmaps(disc) -> list[str]:
    """One lift heat map (threshold x window) per recommended milestone's event (at its min_users)."""
    cand = disc.candidates
    out = []
    for _, m in cand[cand["recommended"]].sort_values("rank").iterrows():
        same = cand[(cand["event"] == m["event"]) & (cand["kind"] == m["kind"])
                    & (cand["min_users"] == m["min_users"])]
        if m["kind"] == "property":
            same = same[(same["property"] == m["property"]) & (same["value"] == m["value"])]
        windows = disc.summary.get("windows", [7, 14, 30, None])
        counts = disc.summary.get("min_counts", [1, 2, 3, 5, 10])
        cols = [f"{w} days" if w is not None else "any time" for w in windows]
        grid = pd.DataFrame(np.nan, index=[f"≥ {n}×" for n in counts], columns=cols)
        for _, r in same.iterrows():
            col = f"{int(r['within_days'])} days" if pd.notna(r["within_days"]) else "any time"
            grid.loc[f"≥ {int(r['min_count'])}×", col] = r["lift"]
        title = m["event"] + (f" ({m['property']} = {m['value']})" if m["kind"] == "property" else "")
        if m["min_users"] > 1:
            title += f", by ≥ {int(m['min_users'])} users"
        out.append(lift_heatmap_svg(grid, title, chart_id=f"heatmap-{m['name']}"))
    return out


def _activity_rows(disc) -> pd.DataFrame:
    """Best candidate of each raw-activity event (and active days) beside the recommended milestones."""
    cand = disc.candidates
    act = cand[cand["is_activity"]]
    best_act = (act.sort_values("lift", ascending=False).groupby(["event", "kind"], sort=False).head(1)
                if len(act) else act)
    # The honest comparison: the simplest "did it at all" count of each activity event.
    simple = act[(act["min_count"] == act.groupby(["event", "kind"])["min_count"].transform("min"))
                 & act["within_days"].isna() & (act["min_users"] == 1)]
    rec = cand[cand["recommended"]].sort_values("rank")
    rows = pd.concat([rec, best_act, simple]).drop_duplicates("name")
    return rows.sort_values("lift", ascending=False)


def _warning_sign_rows(disc, top: int = 15) -> pd.DataFrame:
    """The clearest warning sign of each event (and property value), most negative phi first,
    plus every rule written to the milestone file (column ``written``), which is always shown."""
    cand = disc.candidates
    warn = cand[cand["warning_sign"]]
    if warn.empty:
        return warn.assign(written=pd.Series(dtype=bool))
    keys = [warn["event"], warn["property"].fillna(""), warn["value"].fillna("")]
    best = warn.sort_values(["phi", "lift"]).groupby(keys, sort=False).head(1).sort_values("phi").head(top)
    written = warn["name"].isin([w.name for w in disc.spec.warning_signs])
    rows = pd.concat([warn[written], best]).drop_duplicates("name").sort_values("phi", kind="stable")
    return rows.assign(written=rows["name"].isin(warn.loc[written, "name"]))


def discovery_summary_lines(disc) -> list[str]:
    """What discovery found, in a few plain lines for a terminal (``pql discover``, ``pql demo``):
    the cohort, how many candidates qualified and why some were left out, the recommended
    milestones and the warning signs written to the milestone file."""
    s = disc.summary
    sel = s["selection"]
    lines = [f"cohort: {s['S']:,} converters, {s['F']:,} non-converters; "
             f"{s['candidates_tested']:,} candidates tested, {sel['qualified']:,} qualified "
             f"({sel['qualified_events']} events), {sel['recommended']} recommended"]
    if sel["qualified"] > sel["recommended"]:
        lines.append(f"  not recommended although qualified: {sel['one_rule_per_event']} one rule per event, "
                     f"{sel['event_best_rule_not_eligible']} event's best rule not qualified, {sel['redundant']} "
                     f"redundant, {sel['list_full']} list full (column 'selection' in candidates.csv)")
    lines += [f"  [{m.category}] {m.name}: {m.label}" for m in disc.spec.milestones]
    if s["warning_signs"]:
        lines.append(f"warning signs (lift <= {s['warning_lift']}, not milestones): {s['warning_signs']} candidates "
                     f"on {', '.join(s['warning_sign_events'])} — see report.html and column 'warning_sign'")
    lines += [f"  [warning sign] {w.name}: {w.label} (in the milestone file's warning_signs:, lowers the score)"
              for w in disc.spec.warning_signs]
    return lines


def render_discovery_report(disc) -> str:
    """The discovery report as one self-contained HTML page."""
    from training.discover import SELECTION_REASONS

    cand = disc.candidates
    rec = cand[cand["recommended"]].sort_values("rank")
    seq = disc.sequences
    seq_show = seq[seq.get("tested", pd.Series(True, index=seq.index))].head(25) if len(seq) else seq
    act_rows = _activity_rows(disc)
    charts = {
        "rates": rate_bars_svg(rec) if len(rec) else "",
        "heatmaps": _heatmaps(disc),
        "activity": lift_bars_svg(act_rows) if len(act_rows) else "",
    }
    by_cat = rec.groupby("category").size().to_dict() if len(rec) else {}
    top = cand[~cand["recommended"] & ~cand["warning_sign"]].head(40)
    warn_rows = _warning_sign_rows(disc)
    return _env().get_template("discovery_report.html.j2").render(
        title="Milestone discovery", generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        summary=disc.summary, warnings=disc.warnings, recommended=rec.to_dict("records"), by_cat=by_cat,
        sequences=seq_show.to_dict("records") if len(seq_show) else [], activity=act_rows.to_dict("records"),
        others=top.to_dict("records"), charts=charts, spec_yaml=disc.spec.to_yaml(),
        warning_signs=warn_rows.to_dict("records"), reasons=SELECTION_REASONS,
        selection=disc.summary.get("selection", {}), start_label=disc.summary.get("start_label", "the account's start"),
        suggestions=disc.summary.get("raw_activity_suggestions", []),
        activity_events=disc.spec.settings.activity_events,
        n_seq_beating=int(seq["beats_members"].sum()) if len(seq) else 0)


# --------------------------------------------------------------------------------------------
# Re-validation report
# --------------------------------------------------------------------------------------------

def render_revalidation_report(reval) -> str:
    """The re-validation report (lift per period, flags) as one self-contained HTML page."""
    table = reval.table
    chart = lift_lines_svg(table, threshold=reval.settings["lift_threshold"]) if len(table) else ""
    pivot = (table.pivot_table(index="milestone", columns="period", values="lift", aggfunc="first", sort=False)
             if len(table) else pd.DataFrame())
    return _env().get_template("revalidation_report.html.j2").render(
        title="Milestone re-validation", generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        settings=reval.settings, flags=reval.flags.to_dict("records"), table=table.to_dict("records"),
        pivot=pivot, chart=chart, warnings=reval.warnings, new_events=reval.new_events.to_dict("records"))
