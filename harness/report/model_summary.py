"""The report's per-model answer, for a run whose scenario has a [model] table (`attnbench run
--model`): the attention time of one model step (a prefill, decode, training or serving step) as the
sum over layer types of that type's time × its layer count, and per token (step time / the tokens the
step processes), with the best implementation per layer type, each implementation's own total, and
a stacked bar figure of where the time goes.

Each grid of such a scenario stands for one layer type, at one shape; a grid an edit left with
several shapes is listed per shape, and no total is summed over it (which shape would count?).
"""

from __future__ import annotations

from harness.report.figures import new_figure, png_bytes
from harness.report.render import Figure, Section, Table
from harness.results.rows import Row
from harness.results.units import fmt_time_s


def model_section(rows: list[Row], info: dict, baseline: str, styles: dict | None = None) -> Section | None:
    from harness.case import case_shape

    scenario = info.get("scenario") if isinstance(info.get("scenario"), dict) else {}
    model = scenario.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("layers"), dict):
        return None
    layers = {str(k): int(v) for k, v in model["layers"].items() if isinstance(v, int) and v > 0}
    step, tokens = str(model.get("step", "step")), int(model.get("tokens") or 1)
    name, source = str(model.get("name", "?")), str(model.get("source") or "")
    sec = Section(f"Model: {model.get('name', '?')}, attention per {step} step")
    sec.paragraphs.append(
        f"{name}{f' ({source})' if source and source != name else ''}: one {step} step at context "
        f"{model.get('context', '?')}, batch {model.get('batch', '?')}, {tokens} token(s) per step. Each layer "
        f"type's time per layer (median) × its layer count, summed over the layer types: "
        + ", ".join(f"{g} × {n}" for g, n in layers.items()) + ".")
    # grid -> shape -> impl -> median seconds (OK cases only)
    times: dict[str, dict[str, dict[str, float]]] = {g: {} for g in layers}
    marks: dict[tuple[str, str], str] = {}
    for r in rows:
        if r.grid in times and r.ok:
            shape = case_shape(r.case)
            times[r.grid].setdefault(shape, {})[r.impl] = r.m.median_s
            marks[(r.grid, r.impl)] = r.mark
    per_type = []
    for g, n in layers.items():
        shapes = times[g] or {"(no case ran OK)": {}}
        for shape, by_impl in shapes.items():
            best = min(by_impl, key=by_impl.get) if by_impl else None
            base = by_impl.get(baseline)
            per_type.append([g, str(n), shape, best or "-",
                             fmt_time_s(by_impl[best]) + marks.get((g, best), "") if best else "-",
                             fmt_time_s(by_impl[best] * n) if best else "-",
                             fmt_time_s(base) if base else "-", fmt_time_s(base * n) if base else "-"])
    sec.tables.append(Table(f"Per layer type: the best implementation, and {baseline}",
                            ["layer type (grid)", "layers", "case", "best", "per layer", "× layers",
                             f"{baseline} per layer", f"{baseline} × layers"], per_type, numeric=False))
    single = {g: next(iter(s.values())) for g, s in times.items() if len(s) == 1}
    if len(single) != len(layers):
        missing = [g for g in layers if g not in single]
        sec.paragraphs.append(f"No total per step: grid(s) {', '.join(missing)} have no OK case or several shapes "
                              f"(an edited scenario); the table lists each shape.")
        return sec
    best_total = sum(min(t.values()) * layers[g] for g, t in single.items())
    picks = ", ".join(f"{g}: {min(t, key=t.get)}" for g, t in single.items())
    sec.paragraphs.append(f"Attention per {step} step with the best implementation per layer type ({picks}): "
                          f"{fmt_time_s(best_total)}; per token: {fmt_time_s(best_total / tokens)} (the step's time / its "
                          f"{tokens} token(s)).")
    impls = list(dict.fromkeys(i for t in single.values() for i in t))
    ranked = []
    for impl in impls:
        mark = "".join(sorted({marks.get((g, impl), "") for g in single}))
        if all(impl in t for t in single.values()):
            total = sum(t[impl] * layers[g] for g, t in single.items())
            ranked.append((total, [impl + mark, fmt_time_s(total), fmt_time_s(total / tokens),
                                   f"{total / best_total:.2f}×"]))
        else:
            ran = [g for g, t in single.items() if impl in t]
            ranked.append((float("inf"), [impl + mark, "-", "-", f"ran only {', '.join(ran)}"]))
    totals = [r for _, r in sorted(ranked, key=lambda x: x[0])]
    sec.tables.append(Table(f"One implementation for every layer: attention per {step} step",
                            ["impl", "per step", "per token", "vs best per type"], totals,
                            note="a time marked ! was contended, ~ noisy (see the summary)"))
    contended = {i for (g, i), mark in marks.items() if g in single and "!" in mark}
    sec.figures.append(_stacked_bars(single, layers, impls, step, str(model.get("name", "model")), contended))
    return sec


def _stacked_bars(single: dict, layers: dict, impls: list[str], step: str, name: str,
                  contended: set[str] = frozenset()) -> Figure:
    """One bar per implementation that ran every layer type, its segments the layer types; a bar
    with a contended time is hatched."""
    from matplotlib import colormaps

    complete = sorted((i for i in impls if all(i in t for t in single.values())),
                      key=lambda i: sum(t[i] * layers[g] for g, t in single.items()))  # fastest on top
    fig, ax = new_figure((7.0, 0.6 + 0.45 * max(len(complete), 1) + 1.2))
    cmap = colormaps["tab10"]
    longest = max((sum(t[i] * layers[g] for g, t in single.items()) for i in complete), default=1.0)
    unit, scale = next((u, f) for u, f in (("s", 1.0), ("ms", 1e3), ("µs", 1e6)) if longest * f >= 1 or u == "µs")
    left = [0.0] * len(complete)
    for k, (g, t) in enumerate(single.items()):
        widths = [t[i] * layers[g] * scale for i in complete]
        bars = ax.barh(complete, widths, left=left, color=cmap(k % 10))
        for bar, impl in zip(bars, complete):
            if impl in contended:
                bar.set_hatch("//")
                bar.set_alpha(0.6)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlabel(f"attention time per {step} step ({unit})" + ("; hatched: contended" if contended else ""))
    ax.set_title(f"{name}: attention per {step} step, by layer type")
    ax.invert_yaxis()
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=cmap(k % 10), label=f"{g} × {layers[g]}") for k, g in enumerate(single)],
              loc="best", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return Figure("00-model-step.png", png_bytes(fig), f"{name}: attention per {step} step, by implementation "
                                                      f"and layer type")
