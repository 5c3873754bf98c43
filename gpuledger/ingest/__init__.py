"""gpuledger.ingest"""
