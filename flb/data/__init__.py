"""Data: the generated default tasks, loading and normalising any source, partitioning."""
