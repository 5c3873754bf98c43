"""gpuledger.api: the showback service (FastAPI).

- ``app``: ``create_app``, the page and the chargeback CSV route;
- ``routes_showback`` (showback, drill-down), ``routes_efficiency``,
  ``routes_fleet``, ``routes_series`` (Grafana), ``exports`` (finance files);
- ``auth`` (bearer tokens, roles, tenant scope), ``tokens`` (hashed token
  store), ``reader`` (read-only opens, the version-keyed cache), ``params``
  (periods, filters, pages, limits), ``views`` (ledger rows to answers),
  ``models`` (response shapes), ``errors`` (the one error shape);
- ``static/``: the showback page (plain HTML + JS + SVG, no build step).
"""
