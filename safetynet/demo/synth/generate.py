"""Generate a synthetic district: households, people and every department's facts — vectorised.

`generate(persons, seed)` builds the *background* population with numpy (no Python loop over
people or households), then appends the planted households of `safetynet.demo.synth.plant`, whose
facts are written by hand against the policy thresholds. A registered feed with no hand-written
generation gets background records drawn from its contract's field kinds (`generic_facts`). The
result is a `District` of frames (code/index arrays); `District.table(feed_id)` turns one into the
contract-typed Arrow table that `clean/` must equal.

How the background keeps the rules' planted/near-miss sets meaningful:

* every household gets an economic level: *poor* (per-capita income < 0.9 × 低保 standard),
  *near* (between the standard and `low_income_multiple` × standard, with a margin), *normal*
  or *rich* (per-capita income ≥ 1400 — wages or pensions are topped up to guarantee it);
* only poor/near households are put on the roster (低保/特困 resp. 低保边缘/低收入/刚性支出困难,
  some 低保 in 渐退期 or 停保), so a background recipient's per-capita income is below the
  high-income multiple whatever income definition a rule uses (wages, pensions, payments);
* households with an active case (在保/渐退期) get no vehicle, at most one residence (share 1,
  the applicant) and no death, move-out or unemployment registration; every case lists only
  living members; nobody is on two active cases. So the reverse rules (deceased_recipient,
  recipient_vehicle, recipient_property, recipient_high_income, duplicate_enrolment) fire on the
  background essentially never; forward rules fire on a realistic few percent.
"""

from __future__ import annotations

import numpy as np

from safetynet.demo.synth import district as dist
from safetynet.demo.synth import ids as idmod
from safetynet.demo.synth.model import (
    AS_OF,
    AS_OF_DAY,
    CAT,
    CST,
    ENROLMENT_MONTH,
    MONTH_START,
    MONTHS,
    NEAR,
    NODATE,
    NORMAL,
    PAYMENT_MONTHS,
    PENSION_MONTHS,
    POOR,
    PST,
    REL,
    RICH,
    Frame,
    age_at,
    day,
    fconcat,
    first_per_group,
    flen,
    load_policy,
    rank_in_group,
    ymd_days,
)
from schemas.contract import Contract, Field
from schemas.registry import contracts

# ---- household templates --------------------------------------------------------------------
# (weight, head age range, slots, P(head is male)); slot letters: H head, S spouse, C child,
# P father, Q mother, R parent (either), G grandchild, B sibling, O other (child-in-law)
TEMPLATES: tuple[tuple[float, tuple[int, int], str, float], ...] = (
    (0.09, (20, 40), "H", 0.55), (0.09, (60, 92), "H", 0.4), (0.05, (40, 59), "H", 0.55),
    (0.11, (22, 59), "HS", 0.8), (0.10, (60, 88), "HS", 0.8), (0.05, (28, 55), "HC", 0.35),
    (0.20, (26, 55), "HSC", 0.8), (0.11, (30, 52), "HSCC", 0.8), (0.06, (30, 52), "HSCR", 0.8),
    (0.04, (30, 50), "HSCPQ", 0.8), (0.03, (32, 50), "HSCCPQ", 0.8), (0.04, (55, 80), "HSCG", 0.8),
    (0.02, (58, 80), "HSCOGG", 0.8), (0.01, (25, 60), "HB", 0.6),
)
_MODES = "HSCPQRGBO"
_MODE_REL = {"H": "户主", "S": "配偶", "C": "子女", "P": "父母", "Q": "父母", "R": "父母", "G": "孙子女",
             "B": "兄弟姐妹", "O": "其他"}
MIN_WAGE = 2100.0  # yuan; the usual minimum contribution base


def rng_for(seed: int, part: str) -> np.random.Generator:
    """An independent stream per part, so changing one part never shifts another."""
    return np.random.default_rng(np.random.SeedSequence([seed, *part.encode()]))


# ---- households and people --------------------------------------------------------------------
def make_households(n_persons: int, rng: np.random.Generator) -> tuple[Frame, Frame]:
    """Background households and their people (attributes only; IDs and names come later)."""
    tree = dist.region_tree()
    T = len(TEMPLATES)
    w = np.array([t[0] for t in TEMPLATES])
    w = w / w.sum()
    tsize = np.array([len(t[2]) for t in TEMPLATES])
    est = int(n_persons / 2.6) + 16
    while True:
        t = rng.choice(T, size=est, p=w)
        cs = np.cumsum(tsize[t])
        if cs[-1] >= n_persons:
            break
        est *= 2
    H = int(np.searchsorted(cs, n_persons)) + 1
    t = t[:H]
    sizes = tsize[t].copy()
    sizes[-1] -= int(cs[H - 1] - n_persons)
    slots = np.full((T, 6), -1, np.int64)
    for i, tp in enumerate(TEMPLATES):
        slots[i, : len(tp[2])] = [_MODES.index(c) for c in tp[2]]
    hh = np.repeat(np.arange(H), sizes)
    first = np.repeat(np.cumsum(sizes) - sizes, sizes)
    slot = np.arange(n_persons) - first
    mode = slots[t[hh], slot]
    M = {c: mode == _MODES.index(c) for c in _MODES}

    lo = np.array([tp[1][0] for tp in TEMPLATES])[t]
    hi = np.array([tp[1][1] for tp in TEMPLATES])[t]
    head_age = rng.integers(lo, hi + 1)
    head_male = rng.random(H) < np.array([tp[3] for tp in TEMPLATES])[t]
    n = n_persons
    ha = head_age[hh]
    age = ha.copy()
    spouse_gap = np.rint(rng.normal(np.where(head_male[hh], -2.0, 2.0), 3.0)).astype(np.int64)
    age = np.where(M["S"], np.clip(ha + spouse_gap, 18, 99), age)
    child = ha - rng.integers(22, 37, n)
    age = np.where(M["C"] | M["O"], np.where(child < 0, rng.integers(0, 4, n), child), age)
    age = np.where(M["O"], np.maximum(age, 20), age)
    age = np.where(M["P"] | M["Q"] | M["R"], np.minimum(ha + rng.integers(22, 35, n), 99), age)
    grand = ha - rng.integers(46, 63, n)
    age = np.where(M["G"], np.where(grand < 0, rng.integers(0, 4, n), grand), age)
    age = np.where(M["B"], np.clip(ha + rng.integers(-8, 9, n), 18, 95), age)
    male = rng.random(n) < 0.51
    male = np.where(M["H"], head_male[hh], male)
    male = np.where(M["S"], ~head_male[hh], male)
    male = np.where(M["P"], True, np.where(M["Q"], False, male))
    rel = np.zeros(n, np.int8)
    for c in _MODES:
        rel[M[c]] = REL[_MODE_REL[c]]

    region = rng.choice(len(tree.code), size=H, p=tree.weight / tree.weight.sum())
    village = tree.village[region]
    rural_h = np.where(village, rng.random(H) < 0.9, rng.random(H) < 0.04)
    rural = rural_h[hh] ^ ((~M["H"]) & (rng.random(n) < 0.03))
    single_old = t == 1
    p_poor = np.where(rural_h, 0.05, 0.025) * np.where(single_old, 1.8, 1.0)
    p_near = np.where(rural_h, 0.045, 0.025)
    u = rng.random(H)
    level = np.where(u < p_poor, POOR, np.where(u < p_poor + p_near, NEAR, np.where(u > 0.90, RICH, NORMAL)))
    households: Frame = {
        "region": region.astype(np.int16), "rural": rural_h, "level": level.astype(np.int8),
        "road": rng.integers(0, len(dist.ROADS), H).astype(np.int16),
        "num": np.where(village, rng.integers(1, 16, H), rng.integers(1, 400, H)).astype(np.int16),
        "bld": np.where(village, rng.integers(1, 121, H), rng.integers(1, 31, H)).astype(np.int16),
        "room": (rng.integers(1, 29, H) * 100 + rng.integers(1, 7, H)).astype(np.int16),
        "planted": np.zeros(H, bool),
    }
    people: Frame = {
        "hh": hh.astype(np.int32), "rel": rel, "male": male, "birth": birth_from_age(age, rng),
        "rural": rural, "status": np.zeros(n, np.int8), "sdate": np.full(n, NODATE, np.int64),
        "planted": np.zeros(n, bool),
    }
    people["age"] = age_at(people["birth"])
    # deaths (elderly, not heads, households off the roster), move-outs, cancellations
    lvl = level[hh]
    nonhead = rel != REL["户主"]
    u = rng.random(n)
    dead = nonhead & (people["age"] >= 65) & (lvl >= NORMAL) & (u < 0.035)
    moved = nonhead & ~dead & (people["age"] >= 18) & (people["age"] <= 50) & (lvl >= NORMAL) & (u > 0.994)
    cancelled = nonhead & ~dead & ~moved & (lvl >= NORMAL) & (u > 0.4985) & (u < 0.4995)
    people["status"][dead] = PST["死亡"]
    people["status"][moved] = PST["迁出"]
    people["status"][cancelled] = PST["注销"]
    people["sdate"][dead] = AS_OF_DAY - rng.integers(1, 731, int(dead.sum()))
    people["sdate"][moved] = AS_OF_DAY - rng.integers(1, 1096, int(moved.sum()))
    people["sdate"][cancelled] = AS_OF_DAY - rng.integers(30, 2000, int(cancelled.sum()))
    return households, people


def birth_from_age(age: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Birth dates (days) giving exactly `age` on the snapshot date, all before it (facts run up to
    the day before, so nobody is born on the snapshot date itself)."""
    y = AS_OF.year - np.asarray(age, np.int64)
    born = ymd_days(y, np.full(len(y), AS_OF.month), np.full(len(y), AS_OF.day)) - rng.integers(0, 365, len(y))
    return np.minimum(born, AS_OF_DAY - 1)


def assign_identity(people: Frame, households: Frame, rng: np.random.Generator) -> np.ndarray:
    """Region prefix of birth, ID number and name parts for everyone (in place); returns the IDs."""
    tree = dist.region_tree()
    n = flen(people)
    street = tree.street[households["region"][people["hh"]]]
    transferred = np.isin(street, [i for i, s in enumerate(dist.STREETS) if s[0] in dist.TRANSFERRED_STREETS])
    by, _, _ = idmod.days_to_ymd(people["birth"])
    u = rng.random(n)
    local = np.where(by >= 1995, u < 0.88, u < 0.6)
    prefix = np.where(local, idmod.P_LOCAL, rng.choice(idmod.P_ELSEWHERE, size=n, p=idmod.P_ELSEWHERE_W))
    prefix = np.where(transferred & (by < 2015) & (rng.random(n) < 0.7), idmod.P_CHANGSHA_COUNTY, prefix)
    ids, prefix = idmod.assign_resident_ids(people["birth"], people["male"], prefix, rng)
    people["prefix"] = prefix.astype(np.int16)
    # names: children and grandchildren mostly carry the head's surname when the head is a man
    sw = np.array([w for _, w in dist.SURNAMES], float)
    sur = rng.choice(len(sw), size=n, p=sw / sw.sum())
    head = first_per_group(people["rel"] == REL["户主"], people["hh"], flen(households))
    head_p = head[people["hh"]]
    inherit = (np.isin(people["rel"], [REL["子女"], REL["孙子女"], REL["兄弟姐妹"]]) & (head_p >= 0)
               & people["male"][np.maximum(head_p, 0)] & (rng.random(n) < 0.85))
    sur = np.where(inherit, sur[np.maximum(head_p, 0)], sur)
    nm, nf = len(dist.GIVEN_MALE), len(dist.GIVEN_FEMALE)
    g1 = np.where(people["male"], rng.integers(0, nm, n), nm + rng.integers(0, nf, n))
    g2 = np.where(people["male"], rng.integers(0, nm, n), nm + rng.integers(0, nf, n))
    g2 = np.where(rng.random(n) < 0.3, -1, g2)
    people["sur"], people["g1"], people["g2"] = sur.astype(np.int16), g1.astype(np.int16), g2.astype(np.int16)
    return ids


# ---- employers -----------------------------------------------------------------------------
def make_employers(n: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """`n` employer names (distinct) and unified social credit codes (distinct, valid check chars)."""
    names = list(dist.EMPLOYER_PUBLIC)
    stems, trades = dist.EMPLOYER_STEMS, dist.EMPLOYER_TRADES
    combos = [(c, a, b, t) for c in ("湖南", "长沙", "长沙市天心区") for a in range(len(stems)) for b in range(len(stems))
              if a != b for t in range(len(trades))]
    pick = rng.permutation(len(combos))[: max(0, n - len(names))]
    names += [f"{combos[i][0]}{stems[combos[i][1]]}{stems[combos[i][2]]}{trades[combos[i][3]]}有限公司" for i in pick]
    alpha = "0123456789ABCDEFGHJKLMNPQRTUWXY"
    codes: list[str] = []
    seen: set[str] = set()
    regs = ("430103", "430100", "430105", "430111", "430102", "430104")
    while len(codes) < len(names):
        i = len(codes)
        kind = "11" if i < 3 else "12" if i < len(dist.EMPLOYER_PUBLIC) else "91"
        body = "".join(alpha[j] for j in rng.integers(0, 31, 8)) if kind == "91" else f"{rng.integers(0, 10**8):08d}"
        c = dist.credit_code(kind + regs[int(rng.integers(0, len(regs)))], body)
        if c not in seen:
            seen.add(c)
            codes.append(c)
    return names, codes


# ---- background facts ---------------------------------------------------------------------
def background_facts(people: Frame, households: Frame, n_employers: int, policy: dict, seed: int) -> dict[str, Frame]:
    """Every department's facts for the background (non-planted) people, as frames."""
    std = policy["standards"]
    dibao = float(std["urban_dibao"])
    n, H = flen(people), flen(households)
    hh = people["hh"].astype(np.int64)
    bg = ~people["planted"]
    bgh = ~households["planted"]
    age = people["age"]
    male = people["male"]
    alive = people["status"] == PST["正常"]
    dead = people["status"] == PST["死亡"]
    rural = people["rural"]
    level = households["level"].astype(np.int64)
    lvl = level[hh]
    low = (lvl <= NEAR)
    size = np.bincount(hh, weights=alive & bg, minlength=H)
    r = rng_for(seed, "economy")

    # --- pensions (amount per month, yuan) and scheme
    early = bg & alive & ~male & (age >= 50) & (age <= 59) & ~rural & ~low & (r.random(n) < 0.5)
    pens = bg & (early | (age >= 60)) & (alive | (dead & (people["sdate"] > MONTH_START[PENSION_MONTHS[0]])))
    scheme = np.full(n, -1, np.int64)
    amount = np.zeros(n)
    u = r.random(n)
    urban_p = pens & ~rural & ~low
    scheme[urban_p] = np.where(u[urban_p] < 0.75, 0, np.where(u[urban_p] < 0.83, 2, 1))
    scheme[pens & (rural | low)] = 1
    amount = np.where(scheme == 0, r.uniform(2200, 4800, n), amount)
    amount = np.where(scheme == 2, r.uniform(4800, 8800, n), amount)
    landless = r.random(n) < 0.6
    amount = np.where(scheme == 1, np.where(rural & ~low & landless, r.uniform(900, 1500, n), r.uniform(150, 400, n)),
                      amount)
    amount = np.where(pens & low, r.uniform(150, 300, n), amount)
    amount = np.round(amount, 0) + np.where(r.random(n) < 0.3, np.round(r.uniform(0, 1, n), 2), 0)

    # --- employment decision and base wage
    wa = bg & alive & (age >= 18) & (age <= 59) & ~early
    rate = np.select([age <= 22, age <= 49, age <= 59], [0.25, np.where(male, 0.86, 0.76), np.where(male, 0.72, 0.45)], 0.0)
    emp = wa & ~low & (r.random(n) < rate)
    wage = np.exp(r.normal(np.log(6200.0), 0.45, n)) * np.where(lvl == RICH, 2.2, 1.0)
    wage = np.clip(wage, MIN_WAGE, 60000.0)
    ins = np.where(r.random(n) < 0.7, 0, np.where(r.random(n) < 0.8, 1, 3)).astype(np.int8)

    # --- poor / near households: at most one earner, incomes below the lines by construction
    cand = first_per_group(wa, hh, H)
    pens_h = np.bincount(hh, weights=np.where(pens & alive, amount, 0.0), minlength=H)
    pc_target = np.where(level == POOR, r.uniform(0.45, 0.88, H) * dibao, r.uniform(900, 1190, H))
    earner_h = (level <= NEAR) & bgh & (cand >= 0) & ((level == NEAR) | (r.random(H) < 0.55))
    need = pc_target * np.maximum(size, 1) - pens_h
    earner_h &= need >= 600
    ep = cand[earner_h]
    emp[ep] = True
    wage[ep] = np.round(need[earner_h], 0)
    ins[ep] = 2

    # --- normal / rich households: per-capita income at least 1400
    floor = 1400.0
    inc_h = np.bincount(hh, weights=np.where(emp, wage, 0) + np.where(pens & alive, amount, 0), minlength=H)
    wage_h = np.bincount(hh, weights=np.where(emp, wage, 0), minlength=H)
    short = (level >= NORMAL) & bgh & (inc_h < floor * size)
    gap = floor * size - inc_h
    with_earner = short & (wage_h > 0)
    f = np.ones(H)
    f[with_earner] = (wage_h[with_earner] + gap[with_earner]) / wage_h[with_earner] * r.uniform(1.05, 1.5, int(with_earner.sum()))
    wage = np.where(emp & (level[hh] >= NORMAL), wage * f[hh], wage)
    no_earner = short & (wage_h == 0) & (cand >= 0)
    ep = cand[no_earner]
    emp[ep] = True
    wage[ep] = np.maximum(MIN_WAGE, (floor * size[no_earner] - inc_h[no_earner]) * r.uniform(1.05, 1.5, len(ep)))
    still = short & (wage_h == 0) & (cand < 0)
    n_p = np.bincount(hh, weights=pens & alive, minlength=H)
    add = np.where(still & (n_p > 0), gap / np.maximum(n_p, 1) * 1.2, 0.0)
    amount = np.where(pens & alive, amount + add[hh], amount)
    wage = np.where(r.random(n) < 0.8, np.round(wage, 0), np.round(wage, 2))
    amount = np.round(amount, 2)

    # --- monthly income per household (for cases, checks, incomes on the roster)
    inc_h = np.bincount(hh, weights=np.where(emp, wage, 0) + np.where(pens & alive, amount, 0), minlength=H)
    pc_income = inc_h / np.maximum(size, 1)

    facts: dict[str, Frame] = {}
    facts["disabled_persons_federation.disability"] = _disability(people, households, seed)
    disabled = np.zeros(n, bool)
    disabled[facts["disabled_persons_federation.disability"]["person"]] = True
    cases, members, payments, checks = _cases(people, households, size, pc_income, disabled, policy, seed)
    facts["civil_affairs.assistance_case"] = cases
    facts["civil_affairs.case_member"] = members
    facts["civil_affairs.assistance_payment"] = payments
    facts["civil_affairs.income_check"] = checks
    active = np.zeros(H, bool)
    act_case = np.isin(cases["status"], [CST["在保"], CST["渐退期"]])
    active[cases["hh"][act_case]] = True

    facts["human_resources.employment"], ended = _employment(emp, wage, ins, level, hh, n_employers, seed)
    facts["human_resources.pension"] = _pension(pens, scheme, amount, people)
    facts["human_resources.unemployment"] = _unemployment(people, emp, ended, active[hh], seed)
    facts["medical_insurance.claim"] = _claims(people, seed)
    facts["medical_insurance.enrollment"] = _enrolment(people, emp, ended, scheme, seed)
    facts["public_security.vehicle"] = _vehicles(people, households, active, seed)
    facts["housing.property"] = _property(people, households, active, cases, seed)
    facts["housing.housing_aid"] = _housing_aid(people, households, seed)
    facts["housing.dangerous_house"] = _dangerous(households, seed)
    return facts


def _employment(emp, wage, ins, level, hh, n_employers, seed) -> tuple[Frame, np.ndarray]:
    """Spans of months per employed person (job loss, new job, change of employer) → monthly rows."""
    r = rng_for(seed, "employment")
    n = len(emp)
    p = np.flatnonzero(emp)
    m0 = np.zeros(len(p), np.int64)
    m1 = np.full(len(p), 11, np.int64)
    dyn = level[hh[p]] >= NORMAL
    u = r.random(len(p))
    loss = dyn & (u < 0.04)
    new = dyn & (u >= 0.04) & (u < 0.07)
    change = dyn & (u >= 0.07) & (u < 0.09)
    m1[loss] = r.integers(2, 11, int(loss.sum()))
    m0[new] = r.integers(1, 12, int(new.sum()))
    k = r.integers(2, 11, len(p))
    ew = 1.0 / (np.arange(n_employers) + 6.0)
    ew /= ew.sum()
    e1 = r.choice(n_employers, size=len(p), p=ew)
    e2 = r.choice(n_employers, size=len(p), p=ew)
    e2 = np.where(e2 == e1, (e2 + 1) % n_employers, e2)
    w1 = wage[p]
    w2 = np.round(w1 * r.uniform(0.9, 1.3, len(p)), 0)
    # span table: first spans (maybe cut at k for changers), then the second spans of changers
    s_person = np.r_[p, p[change]]
    s_m0 = np.r_[m0, k[change]]
    s_m1 = np.r_[np.where(change, k - 1, m1), m1[change]]
    s_emp = np.r_[e1, e2[change]]
    s_wage = np.r_[w1, w2[change]]
    s_ins = np.r_[ins[p], ins[p][change]]
    lens = s_m1 - s_m0 + 1
    rows = np.repeat(np.arange(len(s_person)), lens)
    month = s_m0[rows] + (np.arange(len(rows)) - np.repeat(np.cumsum(lens) - lens, lens))
    ended = np.zeros(n, np.int64) - 1  # last month of a job that ended (job loss), else -1
    ended[p[loss]] = m1[loss]
    f = {"person": s_person[rows].astype(np.int32), "month": month.astype(np.int8), "employer": s_emp[rows].astype(np.int32),
         "wage": np.rint(s_wage[rows] * 100).astype(np.int64), "ins": s_ins[rows].astype(np.int8)}
    return f, ended


def _pension(pens, scheme, amount, people) -> Frame:
    p = np.flatnonzero(pens)
    months = np.array(list(PENSION_MONTHS))
    pp = np.repeat(p, len(months))
    mm = np.tile(months, len(p))
    sd = people["sdate"][pp]
    paid = (people["status"][pp] == PST["正常"]) | ((people["status"][pp] == PST["死亡"]) & (MONTH_START[mm] < sd))
    pp, mm = pp[paid], mm[paid]
    return {"person": pp.astype(np.int32), "month": mm.astype(np.int8),
            "amount": np.rint(amount[pp] * 100).astype(np.int64), "scheme": scheme[pp].astype(np.int8)}


def _unemployment(people, emp, ended, active_case, seed) -> Frame:
    r = rng_for(seed, "unemployment")
    n = flen(people)
    alive = people["status"] == PST["正常"]
    age = people["age"]
    bg = ~people["planted"]
    # job losers: half register after their last contribution month
    lost = np.flatnonzero((ended >= 0) & (r.random(n) < 0.55) & ~active_case)
    reg1 = MONTH_START[ended[lost] + 1] + r.integers(0, 25, len(lost))
    st1 = np.where(r.random(len(lost)) < 0.6, 1, 0)  # 领取中 / 登记
    ben1 = np.where(st1 == 1, np.rint(r.uniform(1500, 1900, len(lost)) / 10) * 1000, -1)
    sd1 = np.where(st1 == 1, reg1 + r.integers(5, 20, len(lost)), reg1)
    sd1 = np.minimum(sd1, AS_OF_DAY - 1)
    # currently employed people with an old registration that ended in re-employment
    old = np.flatnonzero(bg & emp & (ended < 0) & (r.random(n) < 0.015) & ~active_case)
    reg2 = day("2023-01-01") + r.integers(0, 880, len(old))
    sd2 = np.minimum(reg2 + r.integers(30, 300, len(old)), MONTH_START[0] - 1)
    ben2 = np.where(r.random(len(old)) < 0.5, np.rint(r.uniform(1400, 1800, len(old)) / 10) * 1000, -1)
    # cancelled registrations of people without a job
    can = np.flatnonzero(bg & alive & ~emp & (age >= 18) & (age <= 59) & (r.random(n) < 0.004) & ~active_case)
    reg3 = day("2022-01-01") + r.integers(0, 1200, len(can))
    sd3 = reg3 + r.integers(60, 400, len(can))
    return {"person": np.r_[lost, old, can].astype(np.int32), "reg": np.r_[reg1, reg2, reg3].astype(np.int64),
            "benefit": np.r_[ben1, ben2, np.full(len(can), -1)].astype(np.int64),
            "status": np.r_[st1, np.full(len(old), 2), np.full(len(can), 3)].astype(np.int8),
            "sdate": np.r_[sd1, sd2, sd3].astype(np.int64)}


def _claims(people, seed) -> Frame:
    from safetynet.demo.synth.district import DIAGNOSES, HOSPITALS

    r = rng_for(seed, "claims")
    n = flen(people)
    age = people["age"]
    ok = (people["status"] == PST["正常"]) & ~people["planted"]
    lam = np.select([age < 18, age < 45, age < 60], [0.35, 0.45, 0.8], 1.6) * ok
    k = r.poisson(lam)
    person = np.repeat(np.arange(n), k)
    m = len(person)
    old = age[person] >= 60
    wy = np.array([d[6] for d in DIAGNOSES])
    wo = np.array([d[7] for d in DIAGNOSES])
    dx = np.where(old, r.choice(len(wo), m, p=wo / wo.sum()), r.choice(len(wy), m, p=wy / wy.sum()))
    pin = np.array([d[3] for d in DIAGNOSES])[dx]
    inp = r.random(m) < pin
    mean = np.where(inp, np.array([d[5] for d in DIAGNOSES])[dx], np.array([d[4] for d in DIAGNOSES])[dx])
    total = np.round(np.clip(mean * np.exp(r.normal(-0.08, 0.4, m)), 20, 400000), 2)
    share = np.where(inp, r.uniform(0.55, 0.85, m), r.uniform(0.3, 0.7, m))
    fund = np.round(total * share, 2)
    date = day("2025-08-01") + r.integers(0, AS_OF_DAY - day("2025-08-01"), m)
    date = np.maximum(date, people["birth"][person])  # an infant's claims start at birth
    serious_dx = np.array([d[2] for d in DIAGNOSES])[dx]
    u = r.random(m)
    flag = np.where(serious_dx, np.where(u < 0.85, 1, -1), np.where(u < 0.8, 0, -1))
    flag = np.where(np.array([d[0] for d in DIAGNOSES])[dx] == "K74.6", np.where(u < 0.7, 1, 0), flag)
    hosp_w = np.r_[np.full(12, 3.0), np.full(len(HOSPITALS) - 12, 1.0)]
    hosp = np.where(inp, r.choice(12, m), r.choice(len(HOSPITALS), m, p=hosp_w / hosp_w.sum()))
    tc, fc = np.rint(total * 100).astype(np.int64), np.rint(fund * 100).astype(np.int64)
    return {"person": person.astype(np.int32), "date": date.astype(np.int64), "hosp": hosp.astype(np.int16),
            "inp": inp, "dx": dx.astype(np.int16), "total": tc, "fund": fc, "oop": tc - fc, "serious": flag.astype(np.int8)}


def _enrolment(people, emp, ended, scheme, seed) -> Frame:
    r = rng_for(seed, "enrolment")
    alive = (people["status"] == PST["正常"]) & ~people["planted"]
    p = np.flatnonzero(alive)
    employee = (emp & (ended < 0)) | np.isin(scheme, [0, 2])
    u = r.random(len(p))
    return {"person": p.astype(np.int32), "scheme": np.where(employee[p], 0, 1).astype(np.int8),
            "status": np.where(u < 0.965, 0, np.where(u < 0.99, 1, 2)).astype(np.int8),
            "month": np.full(len(p), ENROLMENT_MONTH, np.int8)}


def _disability(people, households, seed) -> Frame:
    r = rng_for(seed, "disability")
    n = flen(people)
    lvl = households["level"][people["hh"]]
    ok = (people["status"] == PST["正常"]) & ~people["planted"]
    p_dis = np.where(lvl <= NEAR, 0.09, 0.02) * np.where(people["age"] >= 60, 1.8, 1.0)
    p = np.flatnonzero(ok & (r.random(n) < p_dis))
    m = len(p)
    grade = r.choice(4, m, p=[0.1, 0.22, 0.3, 0.38]) + 1
    cat = r.choice(7, m, p=[0.12, 0.14, 0.03, 0.4, 0.1, 0.13, 0.08])
    subs = np.where(lvl[p] <= NEAR, 1, 0) + np.where(grade <= 2, 2, 0)
    issued = day("2008-01-01") + r.integers(0, AS_OF_DAY - 30 - day("2008-01-01"), m)
    return {"person": p.astype(np.int32), "cat": cat.astype(np.int8), "grade": grade.astype(np.int8),
            "issued": issued.astype(np.int64), "subs": subs.astype(np.int8)}


def _cases(people, households, size, pc_income, disabled, policy, seed) -> tuple[Frame, Frame, Frame, Frame]:
    """Roster cases of poor/near households, temporary-assistance awards, payments and means tests."""
    r = rng_for(seed, "cases")
    std = policy["standards"]
    dibao = float(std["urban_dibao"])
    tekun = round(dibao * float(std["tekun_multiple"]), 2)
    H = flen(households)
    hh = people["hh"].astype(np.int64)
    level = households["level"]
    bgh = ~households["planted"]
    head = first_per_group(people["rel"] == REL["户主"], hh, H)
    single = size == 1
    head_age = np.where(head >= 0, people["age"][np.maximum(head, 0)], 0)
    u = r.random(H)
    cat = np.full(H, -1, np.int64)
    status = np.full(H, CST["在保"], np.int64)
    poor = bgh & (level == POOR) & (u < 0.83)
    cat[poor] = np.where(single[poor] & ((head_age[poor] >= 60) | disabled[np.maximum(head[poor], 0)]), CAT["特困"], CAT["低保"])
    near = bgh & (level == NEAR)
    v = r.random(H)
    c_near = np.select([v < 0.38, v < 0.66, v < 0.74, v < 0.84, v < 0.90],
                       [CAT["低保边缘"], CAT["低收入"], CAT["刚性支出困难"], CAT["低保"], CAT["低保"]], -1)
    s_near = np.select([v < 0.74, v < 0.84, v < 0.90], [np.where(r.random(H) < 0.9, CST["在保"], CST["停保"]),
                                                        CST["渐退期"], CST["停保"]], CST["在保"])
    cat[near] = c_near[near]
    status[near] = s_near[near]
    has = (cat >= 0) & (head >= 0)
    ch = np.flatnonzero(has)
    m = len(ch)
    cat_c, st_c = cat[ch], status[ch]
    start = AS_OF_DAY - np.where(st_c == CST["在保"], r.integers(30, 2600, m), r.integers(400, 2600, m))
    end = np.full(m, NODATE, np.int64)
    end = np.where(st_c == CST["渐退期"], AS_OF_DAY + r.integers(1, 240, m), end)
    stop = AS_OF_DAY - r.integers(1, 700, m)
    end = np.where(st_c == CST["停保"], np.maximum(stop, start + 180), end)
    end = np.where((st_c == CST["停保"]) & (end >= AS_OF_DAY), AS_OF_DAY - 1, end)
    sz = size[ch]
    amt = np.zeros(m)
    amt = np.where(cat_c == CAT["低保"], np.maximum(100.0, np.round((dibao - pc_income[ch]) * sz, 0)), amt)
    amt = np.where((cat_c == CAT["低保"]) & (st_c == CST["渐退期"]), np.round(r.uniform(100, 300, m), 0), amt)
    amt = np.where(cat_c == CAT["特困"], tekun, amt)
    amt = np.where(cat_c == CAT["刚性支出困难"], np.round(r.uniform(100, 200, m), -1), amt)
    # temporary assistance: one-off awards (start = end, 停保 once paid)
    t_p = np.where(level <= NEAR, 0.15, 0.006) * bgh * (head >= 0)
    t_n = np.where(r.random(H) < t_p, np.where(r.random(H) < 0.15, 2, 1), 0)
    th = np.repeat(np.arange(H), t_n)
    tm = len(th)
    t_start = AS_OF_DAY - r.integers(1, 730, tm)
    cases = {
        "hh": np.r_[ch, th].astype(np.int32), "applicant": np.r_[head[ch], head[th]].astype(np.int32),
        "cat": np.r_[cat_c, np.full(tm, CAT["临时救助"])].astype(np.int8),
        "status": np.r_[st_c, np.full(tm, CST["停保"])].astype(np.int8),
        "start": np.r_[start, t_start].astype(np.int64), "end": np.r_[end, t_start].astype(np.int64),
        "amount": np.rint(np.r_[amt, np.round(r.uniform(800, 5000, tm), -2)] * 100).astype(np.int64),
    }
    nc = flen(cases)
    # members: living members of the household (特困: the applicant alone), in household order
    alive = people["status"] == PST["正常"]
    members = household_members(cases, people, alive)
    # payments: months of the payment window the case was active in (temporary aid: its month)
    months = np.array(list(PAYMENT_MONTHS))
    cc = np.repeat(np.arange(nc), len(months))
    mm = np.tile(months, nc)
    act = (cases["start"][cc] < MONTH_START[mm + 1]) & ((cases["end"][cc] == NODATE) | (cases["end"][cc] >= MONTH_START[mm]))
    act &= cases["amount"][cc] > 0
    payments = {"case": cc[act].astype(np.int32), "month": mm[act].astype(np.int8), "amount": cases["amount"][cc[act]]}
    # means tests: at the start (recent cases), an annual re-check (active), a failing one (stopped)
    reg = np.flatnonzero(cases["cat"] != CAT["临时救助"])
    first = reg[cases["start"][reg] >= AS_OF_DAY - 3 * 365]
    active_c = reg[np.isin(cases["status"][reg], [CST["在保"], CST["渐退期"]]) & (cases["start"][reg] < AS_OF_DAY - 200)]
    stopped = reg[cases["status"][reg] == CST["停保"]]
    c_case = np.r_[first, active_c, stopped]
    recheck = np.maximum(cases["start"][active_c] + 30, AS_OF_DAY - r.integers(10, 330, len(active_c)))
    c_day = np.r_[cases["start"][first], recheck,
                  np.maximum(cases["end"][stopped] - r.integers(5, 30, len(stopped)), cases["start"][stopped] + 1)]
    inc = pc_income[cases["hh"][c_case]] * r.uniform(0.92, 1.04, len(c_case))
    n1 = len(first) + len(active_c)
    inc[n1:] = inc[n1:] * r.uniform(1.3, 1.8, len(stopped)) + 300
    poor_c = level[cases["hh"][c_case]] == POOR
    assets = np.where(poor_c, r.uniform(0, 20000, len(c_case)), r.uniform(5000, 40000, len(c_case)))
    ts = c_day * 86400 + r.integers(9 * 3600, 17 * 3600, len(c_case)) - 8 * 3600
    checks = {"case": c_case.astype(np.int32), "ts": ts.astype(np.int64), "income": np.rint(inc * 100).astype(np.int64),
              "assets": np.rint(assets * 100).astype(np.int64),
              "result": np.r_[np.zeros(n1), np.ones(len(stopped))].astype(np.int8)}
    return cases, members, payments, checks


def household_members(cases: Frame, people: Frame, alive: np.ndarray) -> Frame:
    """Members of each case: the household's living members, the applicant first (特困: alone)."""
    hh = people["hh"].astype(np.int64)
    H = int(hh.max()) + 1 if len(hh) else 0
    starts = np.searchsorted(hh, np.arange(H))
    ends = np.searchsorted(hh, np.arange(H), side="right")
    ch = cases["hh"].astype(np.int64)
    solo = cases["cat"] == CAT["特困"]
    lens = np.where(solo, 1, ends[ch] - starts[ch])
    case = np.repeat(np.arange(len(ch)), lens)
    pos = np.arange(len(case)) - np.repeat(np.cumsum(lens) - lens, lens)
    person = np.where(np.repeat(solo, lens), np.repeat(cases["applicant"], lens), np.repeat(starts[ch], lens) + pos)
    keep = alive[person]
    case, person = case[keep], person[keep]
    rel = people["rel"][person]
    return {"case": case.astype(np.int32), "person": person.astype(np.int32), "rel": rel.astype(np.int8),
            "ord": rank_in_case(case)}


def rank_in_case(case: np.ndarray) -> np.ndarray:
    return rank_in_group(np.asarray(case, np.int64)).astype(np.int16)


def _vehicles(people, households, active, seed) -> Frame:
    """Cars and motorcycles of households off the active roster (owner: head, sometimes the spouse)."""
    r = rng_for(seed, "vehicles")
    H = flen(households)
    hh = people["hh"].astype(np.int64)
    alive = people["status"] == PST["正常"]
    adult = alive & (people["age"] >= 18) & (people["age"] <= 75)
    head = first_per_group(adult & (people["rel"] == REL["户主"]), hh, H)
    spouse = first_per_group(adult & (people["rel"] == REL["配偶"]), hh, H)
    level = households["level"]
    rural = households["rural"]
    p_car = np.where(rural, 0.45, np.where(level == RICH, 0.7, np.where(level == NORMAL, 0.38, 0.08)))
    ok = ~households["planted"] & ~active & (head >= 0)
    k = np.where(ok & (r.random(H) < p_car), np.where(r.random(H) < 0.1, 2, 1), 0)
    vh = np.repeat(np.arange(H), k)
    second = np.r_[False, vh[1:] == vh[:-1]]
    owner = np.where((second | (r.random(len(vh)) < 0.25)) & (spouse[vh] >= 0), spouse[vh], head[vh])
    m = len(vh)
    u = r.random(m)
    from safetynet.demo.synth.model import VEHICLE_TYPES as VT

    urban_t = np.select([u < 0.9, u < 0.95, u < 0.97], [VT.index("小型汽车"), VT.index("二轮摩托车"), VT.index("营运客车")],
                        VT.index("中型汽车"))
    rural_t = np.select([u < 0.45, u < 0.70, u < 0.82, u < 0.92, u < 0.95],
                        [VT.index("小型汽车"), VT.index("二轮摩托车"), VT.index("三轮汽车"), VT.index("低速货车"),
                         VT.index("中型汽车")], VT.index("营运货车"))
    vtype = np.where(rural[vh], rural_t, urban_t)
    reg = day("2006-01-01") + r.integers(0, AS_OF_DAY - 7 - day("2006-01-01"), m)
    return {"plate": np.arange(m, dtype=np.int64), "person": owner.astype(np.int32), "vtype": vtype.astype(np.int8),
            "reg": reg.astype(np.int64), "status": (r.random(m) < 0.06).astype(np.int8)}


def _property(people, households, active, cases, seed) -> Frame:
    """Property titles: homes (co-owned by couples), second units, sold units, outside owners.

    `in_old`/`old_status` describe the older snapshot (2026-10-15): units registered after it are
    missing there, units sold after it were still 现势 there.
    """
    r = rng_for(seed, "property")
    tree = dist.region_tree()
    H = flen(households)
    hh = people["hh"].astype(np.int64)
    alive = people["status"] == PST["正常"]
    adult = alive & (people["age"] >= 20)
    head = first_per_group(adult & (people["rel"] == REL["户主"]), hh, H)
    spouse = first_per_group(adult & (people["rel"] == REL["配偶"]), hh, H)
    level = households["level"]
    rural = households["rural"]
    bgh = ~households["planted"]
    p_home = np.where(active, 0.2, np.where(rural, 0.15, np.where(level == RICH, 0.9, 0.66)))
    home = bgh & (head >= 0) & (r.random(H) < p_home)
    co = home & ~active & (spouse >= 0) & (r.random(H) < 0.5)
    second = home & ~active & ~rural & (r.random(H) < np.where(level == RICH, 0.4, 0.12))
    sold = home & ~active & (r.random(H) < 0.03)
    rows: list[Frame] = []
    pid = 0

    def add(hs, owner, share, usage, same_addr, status, r_lo="1998-01-01"):
        nonlocal pid
        m = len(hs)
        reg_day = day(r_lo) + r.integers(0, day("2026-10-10") - day(r_lo), m)
        region = np.where(same_addr, households["region"][hs], r.integers(0, len(tree.code), m))
        vill = tree.village[region]
        area = np.where(usage == 0, np.where(vill, r.uniform(120, 300, m), r.uniform(50, 160, m)), r.uniform(20, 260, m))
        f = {"pid": np.arange(pid, pid + m, dtype=np.int64), "person": owner.astype(np.int32),
             "outside": np.full(m, -1, np.int32), "share": np.asarray(share, np.int64) * np.ones(m, np.int64),
             "usage": np.asarray(usage, np.int8) * np.ones(m, np.int8), "area": np.rint(area * 100).astype(np.int64) * 100,
             "region": region.astype(np.int16),
             "road": np.where(same_addr, households["road"][hs], r.integers(0, len(dist.ROADS), m)).astype(np.int16),
             "num": np.where(same_addr, households["num"][hs], r.integers(1, 400, m)).astype(np.int16),
             "bld": np.where(same_addr, households["bld"][hs], r.integers(1, 31, m)).astype(np.int16),
             "room": np.where(same_addr, households["room"][hs],
                              r.integers(1, 29, m) * 100 + r.integers(1, 7, m)).astype(np.int16),
             "reg": reg_day.astype(np.int64), "status": np.asarray(status, np.int8) * np.ones(m, np.int8),
             "in_old": np.ones(m, bool), "old_status": np.asarray(status, np.int8) * np.ones(m, np.int8)}
        pid += m
        rows.append(f)
        return f

    h1 = np.flatnonzero(home & ~co)
    add(h1, head[h1], 10000, 0, np.ones(len(h1), bool), 0)
    h2 = np.flatnonzero(co)
    f = add(h2, head[h2], 5000, 0, np.ones(len(h2), bool), 0)
    f2 = {k: v.copy() for k, v in f.items()}
    f2["person"] = spouse[h2].astype(np.int32)
    rows.append(f2)
    h3 = np.flatnonzero(second)
    u3 = r.random(len(h3))
    add(h3, head[h3], 10000, np.select([u3 < 0.6, u3 < 0.85], [0, 1], 2), np.zeros(len(h3), bool), 0, "2005-01-01")
    h4 = np.flatnonzero(sold)
    add(h4, head[h4], 10000, 0, np.zeros(len(h4), bool), 2, "1998-01-01")
    out = fconcat(rows)
    # a few current units of people off the roster were sold after the older snapshot: the seller's
    # row turns 已转移 and an outside buyer's row appears (registered after 2026-10-15)
    cur = (out["status"] == 0) & ~active[hh[out["person"]]] & (out["share"] == 10000)
    sold_late = cur & (r.random(flen(out)) < 0.006)
    out["status"][sold_late] = 2
    out["sold_late"] = sold_late
    # some units were registered after the older snapshot (all owners of the unit)
    late = r.random(pid) < 0.004
    new_late = late[out["pid"]] & ~sold_late
    late_reg = day("2026-10-16") + r.integers(0, 14, pid)
    out["reg"][new_late] = late_reg[out["pid"][new_late]]
    out["in_old"][new_late] = False
    # units owned by people outside the register (share 1), and the buyers of the late sales
    m = int(0.04 * flen(out)) + 1
    buyers = {k: v[sold_late].copy() for k, v in out.items()}
    nb = flen(buyers)
    buyers["status"][:] = 0
    buyers["old_status"][:] = 0
    buyers["in_old"][:] = False
    buyers["reg"] = day("2026-10-16") + r.integers(0, 14, nb)
    region = r.integers(0, len(tree.code), m)
    u = r.random(m)
    usage = np.select([u < 0.7, u < 0.9], [0, 1], 2)
    others = {"pid": np.arange(pid, pid + m, dtype=np.int64), "person": np.full(m, -1, np.int32),
              "outside": np.zeros(m, np.int32), "share": np.full(m, 10000, np.int64), "usage": usage.astype(np.int8),
              "area": np.rint(r.uniform(30, 200, m) * 100).astype(np.int64) * 100, "region": region.astype(np.int16),
              "road": r.integers(0, len(dist.ROADS), m).astype(np.int16), "num": r.integers(1, 400, m).astype(np.int16),
              "bld": r.integers(1, 31, m).astype(np.int16),
              "room": (r.integers(1, 29, m) * 100 + r.integers(1, 7, m)).astype(np.int16),
              "reg": (day("2000-01-01") + r.integers(0, day("2026-10-10") - day("2000-01-01"), m)).astype(np.int64),
              "status": np.zeros(m, np.int8), "in_old": np.ones(m, bool), "old_status": np.zeros(m, np.int8),
              "sold_late": np.zeros(m, bool)}
    buyers["person"][:] = -1
    buyers["sold_late"][:] = False
    ext = fconcat([buyers, others])
    ext["outside"] = np.arange(flen(ext), dtype=np.int32)
    return fconcat([out, ext])


def _housing_aid(people, households, seed) -> Frame:
    r = rng_for(seed, "housing_aid")
    H = flen(households)
    hh = people["hh"].astype(np.int64)
    head = first_per_group((people["rel"] == REL["户主"]) & (people["status"] == PST["正常"]), hh, H)
    level = households["level"]
    p = np.where(households["rural"], 0.0, np.where(level <= NEAR, 0.4, 0.008))
    h = np.flatnonzero(~households["planted"] & (head >= 0) & (r.random(H) < p))
    m = len(h)
    atype = (r.random(m) < 0.45).astype(np.int8)
    amount = np.where(atype == 0, r.uniform(200, 600, m), r.uniform(300, 900, m))
    amount = np.where(r.random(m) < 0.7, np.round(amount, -1), np.round(amount, 2))
    start = AS_OF_DAY - r.integers(30, 3000, m)
    u = r.random(m)
    expired = np.minimum(start + r.integers(200, 1000, m), AS_OF_DAY - 1)
    end = np.where(u < 0.65, NODATE, np.where(u < 0.85, start + 3 * 365, expired))
    end = np.where((u >= 0.65) & (u < 0.85) & (end <= AS_OF_DAY), AS_OF_DAY + r.integers(30, 700, m), end)
    return {"person": head[h].astype(np.int32), "atype": atype, "amount": np.rint(amount * 100).astype(np.int64),
            "start": start.astype(np.int64), "end": end.astype(np.int64)}


def _dangerous(households, seed) -> Frame:
    r = rng_for(seed, "dangerous_house")
    tree = dist.region_tree()
    H = flen(households)
    vill = tree.village[households["region"]]
    h = np.flatnonzero(~households["planted"] & vill & households["rural"] & (r.random(H) < 0.35))
    m = len(h)
    rating = r.choice(4, m, p=[0.45, 0.33, 0.15, 0.07])
    assessed = day("2019-01-01") + r.integers(0, day("2026-10-20") - day("2019-01-01"), m)
    renov = (rating >= 2) & (r.random(m) < 0.55)
    return {"hh": h.astype(np.int32), "rating": rating.astype(np.int8), "date": assessed.astype(np.int64), "renov": renov}


# ---- feeds without hand-written generation -----------------------------------------------------
NULL = np.iinfo(np.int64).min  # a missing optional value in a generic frame
GENERIC_RATE = {"person": 0.03, "household_no": 0.05, "case_no": 0.5}  # share of background units with records


def generic_unit(c: Contract) -> str:
    """What a generic feed's records are about: the first key (then other) field that names a person
    (`id_no`), a household (`household_no`) or an assistance case (`case_no`); else households."""
    for f in sorted(c.fields, key=lambda f: f.name not in c.key):
        if f.kind == "id_no":
            return "person"
        if f.name in ("household_no", "case_no"):
            return f.name
    return "household_no"


def generic_people(people: Frame) -> np.ndarray:
    """Who a generated record may name: living background people born before the 12-month window
    (so no record, event or member list predates anyone's birth)."""
    return (people["status"] == PST["正常"]) & ~people["planted"] & (people["birth"] < MONTH_START[0])


def generic_facts(c: Contract, people: Frame, households: Frame, cases: Frame, n_employers: int, seed: int) -> Frame:
    """Background records of a feed that has no hand-written generation, drawn from its contract alone.

    A few % of the background units (`generic_unit`: persons, households or cases, whose person, head
    or applicant is one of `generic_people`) get one or two records. The frame holds one integer code
    per field (`NULL`: missing): id_no, name → person; household_no, address, members (those of
    `generic_people`) → household; case_no → case; region_code → the household's region;
    urban_rural → the household's (0 城镇, 1 农村);
    credit_code → employer; other strings → a serial; date → day and datetime → second in the 12-month
    window; month → index into `MONTHS`; money / decimal / int → cents / 1e-4 units / value within the
    field's `min`–`max`; bool → 0/1; enum / text_list → index into the field's values. Optional fields
    outside the key are missing in a tenth of the records (identifiers never); rows repeating a key are
    dropped, so the key is unique. The stream is the feed's own (`rng_for(seed, feed_id)`).
    """
    r = rng_for(seed, c.feed_id)
    H = flen(households)
    hh_p = people["hh"].astype(np.int64)
    ok = generic_people(people)
    living = np.flatnonzero(ok)
    unit = generic_unit(c)
    case = np.flatnonzero(ok[cases["applicant"]])  # cases of the background
    if unit == "person":
        person = living
        hh = hh_p[person]
    elif unit == "case_no":
        hh, person = cases["hh"][case].astype(np.int64), cases["applicant"][case].astype(np.int64)
    else:
        head = first_per_group(ok & (people["rel"] == REL["户主"]), hh_p, H)
        hh = np.flatnonzero(head >= 0)
        person = head[hh]
    take = np.flatnonzero(r.random(len(hh)) < GENERIC_RATE[unit])
    take = np.repeat(take, np.where(r.random(len(take)) < 0.3, 2, 1))
    n = len(take)
    hh, person = hh[take], person[take]
    case = case[take] if unit == "case_no" else r.choice(case, n)  # a case_no field elsewhere: any case
    first_id = next((f.name for f in c.fields if f.kind == "id_no"), None)
    lo_s, hi_s = int(MONTH_START[0]) * 86400 - 8 * 3600, AS_OF_DAY * 86400 - 8 * 3600

    def span(f: Field, scale: int, width: float) -> np.ndarray:  # values in [min, max] (or a default width)
        lo = f.min if f.min is not None else 0.0
        hi = f.max if f.max is not None else max(lo, 0.0) + width
        return r.integers(int(np.ceil(lo * scale)), int(np.floor(hi * scale)) + 1, n)

    out: Frame = {}
    for f in c.fields:
        k = f.kind
        if k == "id_no" or f.name == "name":
            v = person if f.name in (first_id, "name") else r.choice(living, n)
        elif f.name in ("household_no", "address") or k == "members":
            v = hh
        elif f.name == "case_no":
            v = case
        elif k == "region_code":
            v = households["region"][hh]
        elif k == "urban_rural":
            v = households["rural"][hh]
        elif k == "credit_code":
            v = r.integers(0, n_employers, n)
        elif k == "string":
            v = np.arange(n)
        elif k == "date":
            v = r.integers(MONTH_START[0], AS_OF_DAY, n)
        elif k == "datetime":
            v = r.integers(lo_s, hi_s, n)
        elif k == "month":
            v = r.integers(0, len(MONTHS), n)
        elif k in ("money", "decimal", "int"):
            v = span(f, {"money": 100, "decimal": 10_000, "int": 1}[k], {"money": 20_000, "decimal": 1_000, "int": 100}[k])
        elif k == "bool":
            v = r.integers(0, 2, n)
        elif k in ("enum", "text_list"):  # a contract lists the usual value first: halving weights
            w = 0.5 ** np.arange(max(len(f.values), 1))
            v = r.choice(len(w), n, p=w / w.sum())
        else:
            raise ValueError(f"{c.feed_id}.{f.name}: no generic generation for kind {k!r}")
        v = np.asarray(v, np.int64)
        if not f.required and f.name not in c.key and k not in ("id_no", "region_code", "credit_code", "members"):
            v = np.where(r.random(n) < 0.1, NULL, v)
        out[f.name] = v
    _, first = np.unique(np.stack([out[k] for k in c.key], axis=1), axis=0, return_index=True)
    keep = np.sort(first)
    return {name: v[keep] for name, v in out.items()}


# ---- the whole district ----------------------------------------------------------------------
def generate(persons: int, seed: int, counties: tuple[str, ...] = ()):
    """A synthetic district of exactly `persons` people (background + planted), deterministic for `seed`.

    `counties` (e.g. `("430103", "430104")`): a city of several counties — the same people, with the
    district's streets split into one block per county (`District.counties`); households, and so
    everything keyed by them, never span counties. Empty: the one district 430103."""
    from safetynet.demo.synth import plant
    from safetynet.demo.synth.truth import District

    policy = load_policy()
    hhs = plant.specs(policy)
    n_plant = plant.person_count(hhs)
    n_bg = int(persons) - n_plant
    if n_bg < 500:
        raise ValueError(f"persons must be at least {n_plant + 500} (the planted households alone have {n_plant})")
    households, people = make_households(n_bg, rng_for(seed, "households"))
    base_hh = flen(households)
    ph, pp = plant.people_frames(hhs, base_hh, rng_for(seed, "plant"))
    households, people = fconcat([households, ph]), fconcat([people, pp])
    ids = assign_identity(people, households, rng_for(seed, "identity"))
    n_emp = min(50_000, max(80, persons // 50))
    employers = make_employers(n_emp, rng_for(seed, "employers"))
    facts = background_facts(people, households, n_emp, policy, seed)
    prop = facts["housing.property"]
    offsets = {"case": flen(facts["civil_affairs.assistance_case"]), "plate": flen(facts["public_security.vehicle"]),
               "pid": int(prop["pid"].max()) + 1, "outside": int(prop["outside"].max()) + 1, "employers": n_emp}
    pf = plant.facts(hhs, base_hh, n_bg, offsets, households, rng_for(seed, "plant-facts"))
    for k, f in pf.items():
        facts[k] = fconcat([facts[k], f])
    n_out = int(facts["housing.property"]["outside"].max()) + 1
    outside = idmod.outside_ids(n_out, rng_for(seed, "outside"))
    generic = [fid for fid in contracts() if fid != "public_security.person" and fid not in facts]
    for fid in generic:  # feeds with no hand-written generation: background records from the contract
        facts[fid] = generic_facts(contracts()[fid], people, households, facts["civil_affairs.assistance_case"], n_emp,
                                   seed)
    return District(seed=seed, policy=policy, people=people, households=households, ids=ids, outside_ids=outside,
                    employers=employers, facts=facts, planted_index=plant.planted_rows(hhs, base_hh),
                    generic=frozenset(generic), counties=tuple(counties))
