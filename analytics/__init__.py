"""gpuledger.analytics"""
