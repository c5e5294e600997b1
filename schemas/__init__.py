"""Layer 1, contracts: the feeds' contracts, the output columns, the Kafka envelope, the policy model,
ID rules and masking, the normaliser SQL and the error classes. Imports nothing of the hub."""
