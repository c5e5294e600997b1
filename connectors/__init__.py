"""Layer 3, connectors: Kafka topics (read and write), file drops, formats and encodings, header
mappings, profiling; one module per feed."""
