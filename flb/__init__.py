"""FLB core: config, types, errors, digests, data, modeling, run directories.

Imports nothing heavy at module load and none of client/, server/ or chain/.
"""
