"""The read side: runs read back from an MLflow store (:mod:`.read`), aggregated into ranked
rows with Pareto fronts (:mod:`.rows`), rendered for the terminal, Markdown, CSV and HTML
(:mod:`.render`, :mod:`.html`), and the ``sparsebench leaderboard`` command line (:mod:`.cli`)."""
