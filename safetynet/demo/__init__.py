"""Demo-only code, outside the runtime layers: the synthetic district, the departments' side
(publishing events, dropping files) and the embedded Kafka-protocol broker. No runtime module imports it."""
