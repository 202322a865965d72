"""Report: the paper's tables, figures and claims from ``results/summary/runs.csv``.

- :mod:`mae.report.summary` — ``mae summarize``: every run × evaluation → runs.csv (+ metrics.json,
  loss_curves.csv, replicates.npz).
- :mod:`mae.report.runs_csv` — runs.csv's columns and dtypes, reading it back, and the rows of a setting (base
  run, table membership, means over seeds).
- :mod:`mae.report.replicates` — ``replicates.npz``: the bootstrap replicates of every row's metrics.
- :mod:`mae.report.paper` — the paper's numbers (``paper_results.csv``, read-only) and the map between our
  knobs and the paper's setting labels.
- :mod:`mae.report.tables` — ``mae tables``: Tables 1a–f, 2–6 as CSV/Markdown/LaTeX, ours beside the paper's.
- :mod:`mae.report.baseline_tables` — Tables 3–6: MAE beside scratch and supervised initialisations.
- :mod:`mae.report.table_render` — a table as Markdown/LaTeX, and the sentences every caption shares.
- :mod:`mae.report.figures` — ``mae figures``: Figs. 5/7/9, mask sampling, reconstructions, loss curves.
- :mod:`mae.report.evidence` — the summary as cells with the two-level noise model (seeds, then val images)
  behind every interval of the tables, figures and claims (docs/statistics.md).
- :mod:`mae.report.claims` — ``mae claims``: does each of the paper's claims hold on our numbers?
- :mod:`mae.report.verdicts` — what a claim function returns and how its verdict is decided (the rules).
- :mod:`mae.report.claims_render` — claims.csv and claims.md.
- :mod:`mae.report.simulate` — synthetic studies with a known truth, to check the claims' rules under a null.

Submodules are imported on use (``from mae.report import tables``) so that importing the package stays light.
"""
