"""Parts of scripts/bench: measuring commands (measure.py) and reporting the results (report.py)."""
