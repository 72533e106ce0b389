"""Replays of a week of CI jobs through the pool's real control code, on a virtual clock.

`gitlab-machine-driver pool replay` runs them on the admin's own jobs (a CSV)
or the built-in week; bench/replay.py searches and prints the figures of
docs/pool.md. `trace` reads and writes traces, `week` draws the built-in
week, `simulate` replays one, `compare` searches each policy's cheapest
setting reaching a hit rate.
"""
