"""Fixtures that ingest and split tiny real PCam data (owned by the data step)."""
