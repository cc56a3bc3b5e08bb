"""Looking inside models and runs: the layer table, plots, report.html, and runs side by side."""
