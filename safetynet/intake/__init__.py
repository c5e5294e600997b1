"""Layer 4, intake: ingest the connectors' batches into raw/ and quarantine/, clean them, judge feed health; region names."""
