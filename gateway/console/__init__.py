"""The console: a live web view of routing, pools, incidents and spend, and key
management, served by the gateway itself at `/console`.

- `settings.py`: the `console:` config section.
- `sessions.py`: logins (the admin key or a console user's key) → server-side sessions
  in the store, the cookie; `guard.py`: the checks every console request passes (a
  session, its role, and for changes its CSRF token and origin).
- `recorder.py`: the request path's only cost: while someone watches, each settled
  request added to per-deployment, per-team and per-key sums, and a few a second kept
  for the sample of decisions, made from them in the background.
- `snapshot.py`: this process's numbers (scoreboard, breakers, failover counters, pool
  telemetry, the recorder's sums); `merge.py`: every process's snapshots → one frame.
- `live.py`: each process publishes its snapshot into the store every second while a
  console is open; the process serving a console merges them and streams frames (SSE).
- `spend.py`: spend, budgets and rate-limit usage per team and key, from the store.
- `http.py`: the routes; `static/`: the page (plain ES modules, vendored uPlot).

Nothing here is imported by the request path except `recorder.py`'s hook, through
`Telemetry` (gateway/telemetry/__init__.py).
"""
