"""``python -m sparsebench.leaderboard``."""

from sparsebench.leaderboard.cli import main

raise SystemExit(main())
