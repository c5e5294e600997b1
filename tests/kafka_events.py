"""Deterministic claim events for Kafka tests: upserts, redeliveries, corrections, deletes, bad records."""

from __future__ import annotations

import random

from schemas import envelope, idno


def claim_events(n: int, seed: int = 7) -> tuple[list[tuple[bytes, bytes]], dict]:
    rnd = random.Random(seed)
    out: list[tuple[bytes, bytes]] = []
    exp = {"redelivered": 0, "corrections": 0, "deletes": 0, "bad": 0}

    def env(eid: str, op: str, payload: dict, day: int) -> bytes:
        return envelope.encode(envelope.wrap(payload, event_id=eid, source="medical_insurance", feed="claim", op=op,
                                             occurred_at=f"2026-10-{1 + day % 28:02d}T08:00:00+08:00",
                                             schema_version=1))

    for i in range(n):
        s17 = f"430103{1950 + i % 50}{1 + i % 12:02d}{1 + i % 28:02d}{i % 1000:03d}"
        pid = s17 + idno.check_char(s17)
        p = {"claim_id": f"CL{i:07d}", "id_no": pid, "settle_date": "2026-09-15", "hospital_name": "湘雅医院",
             "inpatient": i % 3 == 0, "diagnosis_code": "I10", "total_amount": "1000.00", "fund_paid": "700.00",
             "out_of_pocket": "300.00"}
        key = p["claim_id"].encode()
        v = env(f"e{i}", "upsert", p, 0)
        out.append((key, v))
        r = rnd.random()
        if r < 0.03:
            out.append((key, v))
            exp["redelivered"] += 1
        elif r < 0.06:
            out.append((key, env(f"e{i}c", "upsert", {**p, "out_of_pocket": "350.00", "total_amount": "1050.00"}, 3)))
            exp["corrections"] += 1
        elif r < 0.08:
            out.append((key, env(f"e{i}d", "delete", {"claim_id": p["claim_id"]}, 5)))
            exp["deletes"] += 1
        elif r < 0.09:
            out.append((key, v[: len(v) // 2]))
            exp["bad"] += 1
    exp["messages"] = len(out)
    exp["clean_rows"] = n - exp["deletes"]
    return out, exp
