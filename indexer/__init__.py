"""The offline indexer: data readers and writers, the shard runner, merge and manifest."""
