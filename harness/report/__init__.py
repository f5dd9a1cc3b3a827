"""Documents from typed rows: HTML, Markdown and PNG reports, exports, history plots."""
