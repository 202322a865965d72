"""Report: the paper's tables, figures and claims from ``results/summary/runs.csv``.

- :mod:`mae.report.summary` — ``mae summarize``: every run × evaluation → runs.csv (+ metrics.json,
  loss_curves.csv); helpers to read it (base run, table membership, means over seeds).
- :mod:`mae.report.paper` — the paper's numbers (``paper_results.csv``, read-only) and the map between our
  knobs and the paper's setting labels.
- :mod:`mae.report.tables` — ``mae tables``: Tables 1a–f, 2–6 as CSV/Markdown/LaTeX, ours beside the paper's.
- :mod:`mae.report.figures` — ``mae figures``: Figs. 5/7/9, mask sampling, reconstructions, loss curves.
- :mod:`mae.report.evidence` — the summary as cells with the two-level noise model (seeds, then val images)
  behind every interval of the tables, figures and claims (docs/statistics.md).
- :mod:`mae.report.claims` — ``mae claims``: does each of the paper's claims hold on our numbers?
- :mod:`mae.report.simulate` — synthetic studies with a known truth, to check the claims' rules under a null.

Submodules are imported on use (``from mae.report import tables``) so that importing the package stays light.
"""
