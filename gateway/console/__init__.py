"""The console: a live web view of routing, pools, incidents and spend, and key
management, served by the gateway itself at `/console`.

- `settings.py`: the `console:` config section.
- `sessions.py`: logins (the admin key or a console user's key) → server-side sessions
  in the store, the cookie; `guard.py`: the checks every console request passes (a
  session, its role, and for changes its CSRF token and origin).
- `recorder.py`: the request path's only cost: settled requests appended to a ring
  while someone watches; drained in the background into per-deployment and per-team
  sums and a sample of decisions.
- `snapshot.py`: this process's numbers (scoreboard, breakers, failover counters, pool
  telemetry, the recorder's sums); `merge.py`: every process's snapshots → one frame.
- `live.py`: each process publishes its snapshot into the store every second while a
  console is open; the process serving a console merges them and streams frames (SSE).
- `spend.py`: spend, budgets and rate-limit usage per team and key, from the store.
- `http.py`: the routes; `static/`: the page (plain ES modules, vendored uPlot).

Nothing here is imported by the request path except `recorder.py`'s hook, through
`Telemetry` (gateway/telemetry/__init__.py).
"""
