"""Code the tests share. Test modules import from here, never from each other or from conftest.

- ``system``: ``free_port``, ``wait_until``, ``need_binary`` and the rule for a
  missing system tool (skip with the reason; fail under ``CI=true``).
- ``kafka``: the tansu broker (``TansuBroker``, ``need_tansu``) and the tests'
  consumer-group timing; the fixtures on top of it are in ``tests/conftest.py``.
- ``live_server``: ``serving(app)``, a FastAPI app under uvicorn on a loopback port.
- ``factories``: valid wire messages (``make_message``, ``make_stream``).
- ``wire_frames``: encoded messages taken apart and put back, hypothesis strategies for their cells.
- ``ingest_runs``: ingest against the broker, and snapshots that compare runs.
- ``ledger_inputs``: one-node messages from compact GPU specs, and their ledger.
- ``chargeback_rows``, ``api_ledger``: hand-made ledger rows for the chargeback and API tests.
- ``demo_data``: the small seeded simulator fleet through the real pipeline into a DuckDB file.
- ``nvml_replay``: pynvml answered from a recorded JSON fixture (tests/agent/fixtures/nvml/).
"""
