"""Image sets: Parquet shards and their manifest, the sets made here (simulate, ingest, MNIST),
and reading them (Ray Data streams for training, whole sets in memory for evaluation)."""
