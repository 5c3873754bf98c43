"""gpuledger.agent"""
