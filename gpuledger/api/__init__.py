"""gpuledger.api: the showback service (FastAPI).

- ``app``: ``create_app`` and the page;
- ``routes_showback`` (showback, drill-down), ``routes_efficiency``,
  ``routes_fleet``, ``routes_series`` (Grafana), ``exports`` (finance files:
  both chargeback routes, the reconciliation report);
- ``auth`` (bearer tokens, roles, tenant scope), ``tokens`` (hashed token
  store), ``reader`` (read-only opens, the version-keyed cache), ``params``
  (the query parameters routes share: declarations, parsing, limits, the
  default period), ``views`` (ledger rows to answers), ``models`` (response
  shapes), ``errors`` (the one error shape and the registry of error codes);
- ``static/``: the showback page (plain HTML + JS + SVG, no build step).
"""
