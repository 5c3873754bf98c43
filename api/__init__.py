"""gpuledger.api"""
