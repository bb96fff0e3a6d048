"""Fixtures that write tiny real TFRecord shards (owned by the shard step)."""
