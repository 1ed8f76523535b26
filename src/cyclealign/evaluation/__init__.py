"""The CycleAlign paper's evaluation protocol: reward scores, pairwise judging, ranking accuracy.

Reports come as JSON, Markdown tables and a PNG of the training metrics (``report.py``).
"""
