"""The quality benchmark (``make bench-quality``): plan, runs, held-out evaluation, statistics, report."""
