"""Tests of sparsebench.leaderboard."""
