"""The fleet simulator: the one fake in the project (a GPU fleet with ground truth).

It implements the agent's backend Protocols (``gpuledger.agent.backend``) so the
real agent code runs on it, and knows what really happened, so attribution
accuracy is measured rather than assumed.

Import rule: the simulator modules import only ``gpuledger.agent.backend``,
``gpuledger.errors`` and their own package; production code never imports
``gpuledger.sim`` (only the CLI/demo wiring does). ``accuracy`` is the one
harness on top: it runs the real pipeline on a simulated fleet and compares
the ledger with the truth, so it also imports the stages it drives.

- ``fleetsim``  ``FleetSim`` (the fleet), ``NodeSim`` (a node's backend and
  workload source), ``demo_fleet``
- ``gpu``       one simulated GPU: time-slicing physics, driver sample buffers,
  energy counter, MIG
- ``spec``      fleet/node/GPU/pod specifications and driver quirks
- ``fleets``    the demo fleet's spec; ``scenarios`` the accuracy scenarios
- ``traces``    the public trace slice in ``data/`` (see data/PROVENANCE.md)
- ``accuracy``  the pipeline against the truth (benchmark, demo, tests)
"""
