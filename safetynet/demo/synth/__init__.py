"""The synthetic district generator: a realistic 长沙市天心区 with planted warning cases and dirty deliveries.

    from safetynet.demo.synth import generate, emit
    d = generate(persons=20_000, seed=1)   # truth: d.table(feed_id), d.planted, d.as_of
    em = emit(d)                           # em.events, em.files, em.expected, em.clean_rows

Modules: `district` (region tree, vocabularies), `generate` (vectorised background population;
a feed without hand-written generation is drawn from its contract), `plant` (planted / near-miss
households per warning rule), `truth` (the `District` and its contract-typed tables), `emit` (Kafka
events, department files, dirt and the exact expected counts).
"""

from safetynet.demo.synth.emit import Emission, Expected, emit
from safetynet.demo.synth.generate import generate
from safetynet.demo.synth.truth import District

__all__ = ["District", "Emission", "Expected", "emit", "generate"]
