"""Figures on matplotlib's object API with an explicit Agg canvas: created inside functions (never
at import) and without switching the process-wide pyplot backend, so a report renders on a machine
with no display and leaves a notebook's own backend alone."""

from __future__ import annotations

import io

FIGSIZE_IN = (7.0, 4.5)
DPI = 110


def new_figure(size_in: tuple[float, float] = FIGSIZE_IN):
    """(figure, axes) on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size_in, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def preload() -> None:
    """Import matplotlib and render one small figure with text (the font cache, the text engine),
    about 0.4 s on a 2-core VM that the report's first figure would otherwise pay: `attnbench run`
    does it while its measurement worker starts, before anything is measured."""
    fig, ax = new_figure((1.0, 1.0))
    ax.set_title("preload")
    png_bytes(fig)


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})  # no version: stable bytes
    return buf.getvalue()
