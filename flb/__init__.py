"""FLB core: config, types, errors, seeding, data/, and by concern privacy/, audit/, model/, adapters/, split/, run/.

Imports nothing heavy at module load and none of client/, server/ or chain/.
"""
