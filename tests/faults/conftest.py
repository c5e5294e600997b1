"""The fault suite's fixtures: one district, delivered once on the suite's own broker."""

from __future__ import annotations

import pytest

from safetynet.demo.broker import EmbeddedBroker
from tests.faults.harness import PERSONS, SEED, Rig


@pytest.fixture(scope="session")
def fault_district():
    from safetynet.demo.synth import generate
    from safetynet.demo.synth.emit import emit

    d = generate(persons=PERSONS, seed=SEED)
    return d, emit(d)


@pytest.fixture(scope="session")
def rig(fault_district, tmp_path_factory):
    """The district's events on a broker of the suite's own (default topic names), published once."""
    from connectors.kafka_producer import ensure_topics, publish
    from schemas.registry import get

    d, em = fault_district
    with EmbeddedBroker() as b:
        ensure_topics(b.bootstrap, [get(f).topic for f in em.events])
        for fid, msgs in em.events.items():
            publish(b.bootstrap, get(fid).topic, msgs)
        yield Rig(d, em, b.bootstrap, tmp_path_factory.mktemp("faults"))
