"""Planted households: for every warning rule, households that must fire and near misses that must not.

Each planted household is written by hand below (`specs`), with amounts and dates computed from
the policy file (`quality/policy/430103-2026.toml`, read with tomllib) and the snapshot date
2026-11-01 — change a threshold there and the planted facts follow. Planted households are
isolated from the background: they get *only* the facts written here (plus one enrolment row
per living member), so a rule sees exactly what the spec says. `District.planted` lists them:
`household_no, rule_id, kind ("planted" | "near_miss"), note`; rule tests assert
`planted ⊆ fired(rule)` and `near_miss ∩ fired(rule) = ∅`.

Conventions the specs rely on (the rule engine of the next issue should use the same):

* *income* of a household = wages (human_resources.employment, all employers) + pensions +
  unemployment benefit being drawn; assistance payments are not income. Planted households
  whose rule depends on income have **wage income only, the same every month** unless the rule
  is about a change, so "monthly", "12-month average" and "3-month average" all agree. Margins
  to every threshold are ≥ 5 %, and dates are ≥ 1 month away from every window edge, so
  inclusive/exclusive and month-counting conventions cannot flip a result.
* *per capita* = divided by the household's living registered members. A planted case lists the
  whole registered household, applicant first (a roster is not updated when someone dies or moves
  out — which is what deceased_recipient looks for); a 特困 case lists the applicant alone.
* *active case* = status 在保 or 渐退期; *recipient* (reverse rules) = an active 低保/特困 case.
* windows count back from the snapshot date 2026-11-01: "within 12 months" = on/after 2025-11-01.

Per rule (P = planted, N = near miss):

medical_burden      P: 12-month out-of-pocket ≥ threshold in one member; split over two members;
                    below the threshold but ≥ income share of a low 12-month income; above the
                    gate (below) but on an active 低收入 case.
                    N: 95 % of the threshold with an income too high for the share test (plus an
                    older claim outside the window that would tip it); a low amount under both
                    limits; 1.2 × the threshold but 1.3 × the gate per head.
income_drop         P: wages stop in the last 3 months; wages fall to 60 % of (1-ratio).
                    N: fall to 115 % of (1-ratio); stable wages; a fall to 60 % of (1-ratio) that
                    leaves 1.3 × the gate per head.
unemployment        P: contributions stop ≥ gap+1 months before the snapshot after ≥ min history;
                    registration 领取中; registration 登记 (no wages in the window).
                    N: gap of 1 month; only min history − 2 months then a long gap; registration
                    已就业 with ongoing wages; a member past working age whose wages stopped;
                    contributions stop but the spouse earns 1.33 × the gate per head.
  (the gate of these three: per-capita income of the last 3 months, less 12-month out-of-pocket
   / 12, below risk_income_multiple × 低保 standard, or an active case; planted households
   are at least 10 % inside it, gate near misses 30 % outside)
earner_death        P: working-age earner died 4 and lookback−3 months ago, wages until death.
                    N: earner died lookback+4 months ago; working-age non-earner died; a retired
                    member died.
serious_illness     P: flagged cancer claim in a household under the low-income line; 低保边缘 case
                    with a prefix-only diagnosis (flag missing); 低收入 case above the line with a
                    flagged non-prefix diagnosis.
                    N: flagged cancer but income above the line and no case; serious claim 16 months
                    ago; non-serious diagnosis (N18.3, not an N18.5/N18.6 prefix).
uncovered_low_income P: wages under the 低保 standard per capita; a single pensioner (城乡居民);
                    a household whose 低保 case stopped.
                    N: per capita 8 % above the standard; under it but on an active 低保 case; under
                    it but on an active 特困 case.
dangerous_house     P: D not renovated 8 months ago; C not renovated 4 years ago (an old rating stands).
                    N: C renovated; D 5 years ago, renovated since; B.
repeat_temporary_aid P: `count` 临时救助 awards inside the window; count+1 with two applicants.
                    N: count−1 inside plus one outside the window; a single award.
phase_out_risk      P: 渐退期 ending in 30 and in 10 days.
                    N: 渐退期 ending in expiry+90 days; 在保 case with an end date in 20 days;
                    a case that stopped 20 days ago.
severe_disability   P: a new grade 1 certificate (3 months ago, both 两项补贴) under the low-income line;
                    an old grade 2 on a 低收入 case above the line, no 护理补贴 (应补尽补).
                    N: grade 3 under the line; grade 1 above the line without a case; grade 2 above
                    the line on a stopped 低收入 case; an old grade 1 under the line, 护理补贴 paid.
deceased_recipient  P: applicant dead (在保 低保), paid after; a listed parent dead (渐退期), paid after; a
                       低保边缘 case without payment records, active 3 months after a death.
                    N (also): a 特困 person who died last month, payments stopped in that month.
                    N: member dead but the case stopped; listed member moved out (迁出).
recipient_vehicle   P: applicant's car; the spouse's car (spouse is not the applicant); a 特困
                    person's 三轮汽车.
                    N: an exempt motorcycle; an exempt 残疾人专用车; a cancelled car; a 低保边缘
                    household's car; a stopped case's car.
recipient_property  P: two homes of the applicant; a couple's shared home plus the spouse's own;
                    a 特困 person's home plus 60 % of another.
                    N: shared home plus a shop (商业); a home plus one sold after the older
                    snapshot (已转移 in the newest, 现势 in the older one); a home plus a
                    cancelled (已注销) title.
recipient_high_income P: 低保 household at 2000/person; at 1833/person with two earners; 特困
                    person earning 3000.
                    N: 低保 household at 90 % of the limit (even counting the payment); 单人保: a
                    case of the disabled son alone, whose parents (not case members) earn well; a
                    rich household without a case; a stopped 低保 case at 3000/person.
duplicate_enrolment P: a member of the household's 低保 case who is also on his own 特困 case; a
                    son on his own household's case and still on his parents' case.
                    N: an old case stopped before the new one started; an active case plus a
                    completed 临时救助 award.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from safetynet.demo.synth import district as dist
from safetynet.demo.synth.model import (
    AS_OF,
    AS_OF_DAY,
    CAT,
    CST,
    ENROLMENT_MONTH,
    MONTH_START,
    MONTHS,
    NODATE,
    PAYMENT_MONTHS,
    PENSION_MONTHS,
    POOR,
    PST,
    REL,
    Frame,
    day,
    months_ago,
)

PLANTED_RULES = ("medical_burden", "income_drop", "unemployment", "earner_death", "serious_illness", "uncovered_low_income",
         "dangerous_house", "repeat_temporary_aid", "phase_out_risk", "severe_disability", "deceased_recipient",
         "recipient_vehicle", "recipient_property", "recipient_high_income", "duplicate_enrolment")


# ---- the spec language ----------------------------------------------------------------------
@dataclass
class Claim:
    date: dt.date
    dx: str  # ICD-10 code from district.DIAGNOSES
    total: float
    oop: float
    inpatient: bool = True
    serious: bool | None = None


@dataclass
class M:
    """One member: relation to the head, age on the snapshot date, sex, and facts."""

    rel: str
    age: int
    male: bool
    status: str = "正常"
    status_date: dt.date | None = None
    wage: float | None = None  # the same wage in every month of the window
    wages: dict[int, float] | None = None  # month index (0 = 2025-11 … 11 = 2026-10) → wage
    pension: float | None = None  # paid in the pension months
    pension_scheme: str = "城乡居民"
    unemployment: tuple[tuple[dt.date, str, float | None, dt.date | None], ...] = ()
    disability: tuple[str, int, dt.date, int] | None = None  # category, grade, issued, subsidy bits
    vehicles: tuple[tuple[str, dt.date, str], ...] = ()  # type, registered, status
    claims: tuple[Claim, ...] = ()


@dataclass
class Case:
    category: str
    status: str
    start: dt.date
    end: dt.date | None = None
    amount: float = 0.0
    applicant: int = 0
    members: tuple | None = None  # member indices, or (household label, member index); default: all living
    check_income: float | None = None  # per-capita income in the means test


@dataclass
class Prop:
    owners: tuple[tuple[int | str, float], ...]  # (member index | "outside", share)
    usage: str = "住宅"
    status: str = "现势"
    old_status: str | None = None  # status in the older snapshot, if different
    in_old: bool = True
    registered: dt.date = dt.date(2012, 5, 20)
    area: float = 88.5
    home: bool = True


@dataclass
class HH:
    rule: str
    kind: str  # "planted" | "near_miss" | "support"
    note: str
    members: list[M]
    label: str = ""
    village: bool = False
    cases: list[Case] = field(default_factory=list)
    props: list[Prop] = field(default_factory=list)
    dangerous: tuple[str, dt.date, bool] | None = None


def _all(w: float) -> dict[int, float]:
    return dict.fromkeys(range(12), w)


def _span(w: float, first: int, last: int) -> dict[int, float]:
    return dict.fromkeys(range(first, last + 1), w)


def _month_index(d: dt.date) -> int:
    return MONTHS.index(f"{d.year}-{d.month:02d}")


def _after(d: dt.date, days: int) -> dt.date:
    return d + dt.timedelta(days=days)


# ---- the specs ------------------------------------------------------------------------------
def specs(policy: dict) -> list[HH]:
    """Every planted and near-miss household, computed from the policy's standards and thresholds."""
    std, th = policy["standards"], policy["thresholds"]
    dibao = float(std["urban_dibao"])
    line = float(std["low_income_multiple"]) * dibao
    tekun = round(float(std["tekun_multiple"]) * dibao, 2)
    high = float(th["recipient_high_income_multiple"]) * dibao
    oop_t = float(th["medical_burden_oop_12m"])
    share = float(th["medical_burden_income_share"])
    drop = float(th["income_drop_ratio"])
    gap, hist = int(th["unemployment_contribution_gap_months"]), int(th["unemployment_min_history_months"])
    wmin, wmax = int(th["working_age_min"]), int(th["working_age_max"])
    death_lb = ill_lb = int(th["event_lookback_months"])
    ratings = list(th["dangerous_house_ratings"])
    gate = float(th["risk_income_multiple"]) * dibao  # per-capita income after medical costs, forward rules
    t_count, t_win = int(th["repeat_temporary_aid_count"]), int(th["repeat_temporary_aid_window_months"])
    expiry = int(th["phase_out_expiry_days"])
    severe = sorted(int(g) for g in th["severe_disability_grades"])
    exempt = list(th["recipient_vehicle_exempt_types"])
    max_res = int(th["recipient_property_max_residences"])
    if gap + hist + 2 > 12 or death_lb < 6 or ill_lb < 6 or t_win < 6:
        raise ValueError("policy windows do not fit the generator's 12-month fact window")
    not_severe = min(g for g in range(1, 5) if g not in severe)
    mild = [r for r in ("A", "B", "C", "D") if r not in ratings]
    serious_pfx = list(policy["diagnoses"]["serious_illness_prefixes"])
    for code in ("C34.9", "N18.5", "C50.9"):
        if not any(code.startswith(p) for p in serious_pfx):
            raise ValueError(f"the planted serious diagnosis {code} is not a serious-illness prefix any more")
    w_mid = round(max(20, (wmin + wmax) // 2 + 5))
    old = wmax + 4
    out: list[HH] = []
    add = out.append

    def low_pair(pc: float) -> list[M]:  # two people, one earner, per-capita `pc`
        return [M("户主", w_mid, True, wage=round(2 * pc)), M("配偶", w_mid - 2, False)]

    # -- medical_burden ------------------------------------------------------------------
    add(HH("medical_burden", "planted", "one member's 12-month out-of-pocket 1.2 × threshold",
           [M("户主", 52, True, wage=round(gate * 0.9),
              claims=(Claim(months_ago(7), "I63.9", round(oop_t * 1.9), round(oop_t * 0.7), True, True),
                      Claim(months_ago(3), "I63.9", round(oop_t * 1.1), round(oop_t * 0.5), True, True))),
            M("配偶", 50, False, wage=round(gate * 0.6))]))
    add(HH("medical_burden", "planted", "out-of-pocket split over two members, together 1.1 × threshold",
           [M("户主", 47, True, wage=round(gate * 1.2),
              claims=(Claim(months_ago(9), "K80.2", round(oop_t * 1.2), round(oop_t * 0.6)),)),
            M("配偶", 45, False, wage=round(gate * 0.9), claims=(Claim(months_ago(2), "S82.2", round(oop_t * 1.0), round(oop_t * 0.5)),)),
            M("子女", 17, True)]))
    low_income_12m = 1500 * 12
    add(HH("medical_burden", "planted", f"out-of-pocket below the threshold but ≥ {share:.0%} of a low 12-month income",
           [M("户主", 56, False, wage=1500, claims=(Claim(months_ago(5), "M17.9", round(low_income_12m * share * 2.4),
                                                          round(low_income_12m * share * 1.2)),))]))
    add(HH("medical_burden", "near_miss",
           "12-month out-of-pocket 0.95 × threshold, income too high for the share test (though under the gate); "
           "an older claim is outside the window",
           [M("户主", 58, True, wage=round(gate * 1.1),
              claims=(Claim(months_ago(6), "C34.9", round(oop_t * 2.0), round(oop_t * 0.95), True, True),
                                                   Claim(months_ago(15), "C34.9", 30000, round(oop_t * 0.4), True, True))),
            M("配偶", 55, False, wage=round(gate * 0.85))]))
    add(HH("medical_burden", "near_miss", "out-of-pocket under both the threshold and the income share",
           [M("户主", 44, True, wage=2000, claims=(Claim(months_ago(4), "J18.9", 14000, round(2000 * 12 * share * 0.8)),)),
            M("子女", 12, False)]))
    add(HH("medical_burden", "planted", "1.2 × threshold with income above the gate, but on an active 低收入 case",
           [M("户主", 46, True, wage=round(gate * 2.5),
              claims=(Claim(months_ago(5), "I21.9", round(oop_t * 2.0), round(oop_t * 1.2), True, True),))],
           cases=[Case("低收入", "在保", months_ago(9, 4), check_income=round(line * 0.9))]))
    add(HH("medical_burden", "near_miss", "1.2 × threshold, but 1.3 × the gate per head after the medical costs",
           [M("户主", 49, True, wage=round(1.6 * gate + 1.2 * oop_t / 12),
              claims=(Claim(months_ago(5), "I21.9", round(oop_t * 2.0), round(oop_t * 1.2), True, True),)),
            M("配偶", 47, False, wage=round(gate))]))

    # -- income_drop -----------------------------------------------------------------------
    add(HH("income_drop", "planted", "wages stop in the last 3 months",
           [M("户主", 41, True, wages=_span(6000, 0, 8)), M("配偶", 40, False), M("子女", 10, True)]))
    lo = round(8000 * (1 - drop) * 0.6)
    add(HH("income_drop", "planted", "wages of the last 3 months at 0.6 × (1-ratio) of the previous 9",
           [M("户主", 39, True, wages={**_span(8000, 0, 8), **_span(lo, 9, 11)}), M("配偶", 37, False)]))
    hi = round(8000 * (1 - drop) * 1.15)
    add(HH("income_drop", "near_miss", "wages fall to 1.15 × (1-ratio) of the previous 9 months",
           [M("户主", 43, True, wages={**_span(8000, 0, 8), **_span(hi, 9, 11)}), M("配偶", 41, False)]))
    g_last = round(2 * gate * 1.3)
    add(HH("income_drop", "near_miss", "wages fall to 0.6 × (1-ratio), but still 1.3 × the gate per head",
           [M("户主", 44, True, wages={**_span(round(g_last / ((1 - drop) * 0.6)), 0, 8), **_span(g_last, 9, 11)}),
            M("配偶", 42, False)]))
    add(HH("income_drop", "near_miss", "stable wages",
           [M("户主", 36, False, wage=5200), M("子女", 8, True)]))

    # -- unemployment ------------------------------------------------------------------------
    last = 11 - (gap + 1)
    add(HH("unemployment", "planted", f"contributions stop {gap + 1} months before the snapshot after {last + 1} months",
           [M("户主", 45, True, wages=_span(5600, 0, last)), M("配偶", 44, False, wage=round(gate * 0.7))]))
    add(HH("unemployment", "planted", "registered unemployed 领取中 (benefit)",
           [M("户主", 38, True, wages=_span(round(gate * 1.2), 0, 9),
              unemployment=((months_ago(2, 5), "领取中", 1750.0, months_ago(2, 20)),)),
            M("配偶", 36, False, wage=round(gate * 0.4))]))
    add(HH("unemployment", "planted", "registered unemployed 登记, no contributions in the window",
           [M("户主", 33, False, unemployment=((months_ago(4, 21), "登记", None, months_ago(4, 21)),)),
            M("父母", 64, False, pension=2600, pension_scheme="企业职工")]))
    add(HH("unemployment", "near_miss", "contributions stopped 1 month before the snapshot",
           [M("户主", 42, True, wages=_span(round(gate), 0, 10)), M("配偶", 40, False, wage=round(gate * 0.5))]))
    add(HH("unemployment", "near_miss", "contributions stop as above, but the spouse earns 1.33 × the gate per head "
           "(4 × the 低保 standard at the default gate)",
           [M("户主", 46, True, wages=_span(5600, 0, last)), M("配偶", 45, False, wage=round(2 * gate * 1.33))]))
    add(HH("unemployment", "near_miss", f"only {hist - 2} months of contributions, then a long gap",
           [M("户主", 24, True, wages=_span(3800, 1, hist - 2)), M("父母", 51, False, wage=4100)]))
    add(HH("unemployment", "near_miss", "old registration 已就业, contributions continue",
           [M("户主", 35, True, wage=5600, unemployment=((dt.date(2025, 3, 3), "已就业", 1600.0, dt.date(2025, 6, 18)),)),
            M("配偶", 34, False, wage=4900)]))
    add(HH("unemployment", "near_miss", f"member aged {old} (past working age) whose contributions stopped",
           [M("户主", old, True, wages=_span(4800, 0, 5), pension=3200, pension_scheme="企业职工"),
            M("配偶", old - 3, False, pension=2700, pension_scheme="企业职工")]))

    # -- earner_death --------------------------------------------------------------------------
    d1 = months_ago(4, 12)
    add(HH("earner_death", "planted", "working-age earner died 4 months ago",
           [M("户主", 46, True, status="死亡", status_date=d1, wages=_span(6200, 0, _month_index(d1) - 1)),
            M("配偶", 44, False, wage=3900), M("子女", 15, False)]))
    d2 = months_ago(death_lb - 3, 8)
    add(HH("earner_death", "planted", f"working-age earner died {death_lb - 3} months ago",
           [M("户主", 40, False, wage=4200), M("配偶", 42, True, status="死亡", status_date=d2,
                                                wages=_span(5800, 0, _month_index(d2) - 1))]))
    add(HH("earner_death", "near_miss", f"working-age earner died {death_lb + 4} months ago (outside the lookback)",
           [M("户主", 43, False, wage=4600), M("配偶", 45, True, status="死亡", status_date=months_ago(death_lb + 4, 16)),
            M("子女", 13, True)]))
    add(HH("earner_death", "near_miss", "working-age member without wages died 3 months ago",
           [M("户主", 50, True, wage=5000), M("兄弟姐妹", 47, True, status="死亡", status_date=months_ago(3, 22))]))
    add(HH("earner_death", "near_miss", f"retired member aged {old + 12} died 5 months ago",
           [M("户主", 48, True, wage=5600), M("父母", old + 12, True, status="死亡", status_date=months_ago(5, 2))]))

    # -- serious_illness -------------------------------------------------------------------------
    pc_low = round(line * 0.55)
    add(HH("serious_illness", "planted", "flagged cancer claim, per-capita income under the low-income line",
           low_pair(pc_low)[:1]
           + [M("配偶", w_mid - 1, False, claims=(Claim(months_ago(4), "C34.9", 42000, 9800, True, True),))]))
    pc_edge = round((dibao + line) / 2)
    add(HH("serious_illness", "planted", "低保边缘 case, N18.5 diagnosis with no flag (prefix match)",
           [M("户主", 53, True, wage=2 * pc_edge, claims=(Claim(months_ago(3), "N18.5", 6800, 1900, False, None),)),
            M("配偶", 51, False)],
           cases=[Case("低保边缘", "在保", months_ago(20, 3), check_income=pc_edge)]))
    pc_above = round(line * 1.15)
    add(HH("serious_illness", "planted", "低收入 case (income now above the line), flagged non-prefix diagnosis K74.6",
           [M("户主", 49, False, wage=2 * pc_above, claims=(Claim(months_ago(6), "K74.6", 23000, 6100, True, True),)),
            M("子女", 19, True)],
           cases=[Case("低收入", "在保", months_ago(14, 11), check_income=round(line * 0.97))]))
    add(HH("serious_illness", "near_miss", "flagged cancer claim, per-capita income above the line, no case",
           [M("户主", 51, True, wage=round(line * 2.4)), M("配偶", 50, False, wage=round(line * 2.2),
                                                         claims=(Claim(months_ago(5), "C50.9", 38000, 8800, True, True),))]))
    add(HH("serious_illness", "near_miss", f"serious claim {ill_lb + 4} months ago, under the line",
           low_pair(pc_low)[:1]
           + [M("配偶", w_mid - 2, False, claims=(Claim(months_ago(ill_lb + 4), "C34.9", 40000, 9000, True, True),))]))
    add(HH("serious_illness", "near_miss", "non-serious N18.3 claim (not an N18.5/N18.6 prefix), under the line",
           low_pair(pc_low)[:1]
           + [M("配偶", w_mid - 3, False, claims=(Claim(months_ago(2), "N18.3", 3200, 900, False, False),))]))

    # -- uncovered_low_income -------------------------------------------------------------------
    add(HH("uncovered_low_income", "planted", "per-capita wage income 0.7 × 低保 standard, no case",
           [M("户主", 38, True, wage=round(3 * dibao * 0.7)), M("配偶", 36, False), M("子女", 9, False)]))
    add(HH("uncovered_low_income", "planted", "single pensioner on a small 城乡居民 pension, no case",
           [M("户主", old + 9, False, pension=round(dibao * 0.3))]))
    add(HH("uncovered_low_income", "planted", "per-capita income under the standard, the 低保 case stopped",
           low_pair(round(dibao * 0.8)),
           cases=[Case("低保", "停保", months_ago(40, 2), end=months_ago(8, 28), amount=300, check_income=round(dibao * 1.3))]))
    add(HH("uncovered_low_income", "near_miss", "per-capita income 1.08 × the 低保 standard",
           low_pair(round(dibao * 1.08))))
    add(HH("uncovered_low_income", "near_miss", "per-capita income under the standard, on an active 低保 case",
           low_pair(round(dibao * 0.6)),
           cases=[Case("低保", "在保", months_ago(26, 12), amount=round(2 * dibao * 0.4), check_income=round(dibao * 0.6))]))
    add(HH("uncovered_low_income", "near_miss", "single person without income on an active 特困 case",
           [M("户主", old + 14, True, disability=("肢体", 3, dt.date(2016, 4, 9), 1))],
           cases=[Case("特困", "在保", months_ago(50, 7), amount=tekun, check_income=0.0)]))

    # -- dangerous_house ---------------------------------------------------------------------------
    def farm(note_w: float) -> list[M]:
        return [M("户主", 61, True, pension=round(note_w)), M("配偶", 59, False, pension=round(note_w * 0.8))]

    add(HH("dangerous_house", "planted", f"rating {ratings[-1]}, not renovated, assessed 8 months ago",
           farm(1200), village=True, dangerous=(ratings[-1], months_ago(8, 14), False)))
    add(HH("dangerous_house", "planted", f"rating {ratings[0]}, not renovated, assessed 4 years ago (still stands)",
           farm(1100), village=True, dangerous=(ratings[0], months_ago(48, 5), False)))
    add(HH("dangerous_house", "near_miss", f"rating {ratings[0]} but renovated",
           farm(1150), village=True, dangerous=(ratings[0], months_ago(10, 20), True)))
    add(HH("dangerous_house", "near_miss", f"rating {ratings[-1]} 5 years ago, renovated since",
           farm(1000), village=True, dangerous=(ratings[-1], months_ago(60, 11), True)))
    add(HH("dangerous_house", "near_miss", f"rating {mild[-1]} (not dangerous)",
           farm(1250), village=True, dangerous=(mild[-1], months_ago(3, 9), False)))

    # -- repeat_temporary_aid ------------------------------------------------------------------------
    def temp(d: dt.date, applicant: int = 0, amount: float = 2000) -> Case:
        return Case("临时救助", "停保", d, end=d, amount=amount, applicant=applicant)

    inside = [months_ago(max(1, t_win - 3 - 4 * i), 12) for i in range(t_count + 1)]
    add(HH("repeat_temporary_aid", "planted", f"{t_count} 临时救助 awards within {t_win} months",
           low_pair(round(dibao * 1.2)), cases=[temp(d) for d in inside[:t_count]]))
    add(HH("repeat_temporary_aid", "planted", f"{t_count + 1} awards within the window, two applicants",
           low_pair(round(dibao * 1.1)), cases=[temp(d, applicant=i % 2, amount=1500 + 500 * i) for i, d in enumerate(inside)]))
    add(HH("repeat_temporary_aid", "near_miss", f"{t_count - 1} award(s) inside and one {t_win + 5} months ago",
           low_pair(round(dibao * 1.25)), cases=[temp(months_ago(t_win + 5, 15)), *[temp(d) for d in inside[: t_count - 1]]]))
    add(HH("repeat_temporary_aid", "near_miss", "a single award",
           low_pair(round(dibao * 1.3)), cases=[temp(months_ago(4, 18), amount=3000)]))

    # -- phase_out_risk ---------------------------------------------------------------------------------
    pc_p = round(dibao * 1.15)
    add(HH("phase_out_risk", "planted", "渐退期 ending in 30 days",
           low_pair(pc_p),
           cases=[Case("低保", "渐退期", months_ago(30, 1), end=_after(AS_OF, 30), amount=200, check_income=pc_p)]))
    add(HH("phase_out_risk", "planted", "渐退期 ending in 10 days",
           low_pair(pc_p),
           cases=[Case("低保", "渐退期", months_ago(22, 1), end=_after(AS_OF, 10), amount=150, check_income=pc_p)]))
    add(HH("phase_out_risk", "near_miss", f"渐退期 ending in {expiry + 90} days",
           low_pair(pc_p), cases=[Case("低保", "渐退期", months_ago(18, 1), end=_after(AS_OF, expiry + 90), amount=200,
                                      check_income=pc_p)]))
    add(HH("phase_out_risk", "near_miss", "在保 (not 渐退期) case with an end date in 20 days",
           low_pair(round(dibao * 0.7)), cases=[Case("低保", "在保", months_ago(11, 1), end=_after(AS_OF, 20), amount=300,
                                                    check_income=round(dibao * 0.7))]))
    add(HH("phase_out_risk", "near_miss", "case stopped 20 days ago",
           low_pair(pc_p),
           cases=[Case("低保", "停保", months_ago(25, 1), end=_after(AS_OF, -20), amount=200, check_income=pc_p)]))

    # -- severe_disability ------------------------------------------------------------------------
    pc_u = round(dibao * 0.7)
    add(HH("severe_disability", "planted", f"a new grade {severe[0]} certificate, per-capita income under the low-income line",
           [M("户主", 44, True, wage=2 * pc_u), M("子女", 16, True, disability=("肢体", severe[0], months_ago(3, 1), 3))]))
    add(HH("severe_disability", "planted", f"grade {severe[-1]} since 2012 on a 低收入 case, income now above the line, "
           "no 护理补贴",
           [M("户主", 52, False, wage=2 * pc_above),
            M("子女", 23, True, disability=("智力", severe[-1], dt.date(2012, 6, 1), 1))],
           cases=[Case("低收入", "在保", months_ago(16, 20), check_income=round(line * 0.95))]))
    add(HH("severe_disability", "near_miss", f"grade {severe[0]} since 2019 under the line, 护理补贴 paid (known, not news)",
           [M("户主", 43, True, wage=2 * pc_u), M("子女", 15, True, disability=("肢体", severe[0], dt.date(2019, 8, 1), 3))]))
    add(HH("severe_disability", "near_miss", f"grade {not_severe} certificate under the line",
           [M("户主", 45, False, wage=2 * pc_u), M("配偶", 47, True, disability=("视力", not_severe, dt.date(2015, 3, 1), 1))]))
    add(HH("severe_disability", "near_miss", f"grade {severe[0]} certificate, income well above the line, no case",
           [M("户主", 40, True, wage=round(line * 3)),
            M("子女", 11, False, disability=("听力", severe[0], dt.date(2021, 1, 5), 2))]))
    add(HH("severe_disability", "near_miss", f"grade {severe[-1]}, above the line, the 低收入 case stopped",
           [M("户主", 50, True, wage=2 * pc_above),
            M("配偶", 49, False, disability=("精神", severe[-1], dt.date(2018, 9, 9), 2))],
           cases=[Case("低收入", "停保", months_ago(30, 3), end=months_ago(6, 28), check_income=round(line * 1.2))]))

    # -- deceased_recipient ---------------------------------------------------------------------------
    pc_r = round(dibao * 0.5)
    add(HH("deceased_recipient", "planted", "applicant dead, 低保 case still 在保 and paid",
           [M("户主", old + 15, True, status="死亡", status_date=months_ago(3, 9)), M("配偶", old + 12, False, pension=pc_r * 2)],
           cases=[Case("低保", "在保", months_ago(44, 1), amount=round(2 * (dibao - pc_r)), check_income=pc_r)]))
    add(HH("deceased_recipient", "planted", "listed parent dead, case in 渐退期",
           [M("户主", 46, True, wage=3 * round(dibao * 0.9)), M("配偶", 44, False),
            M("父母", old + 20, False, status="死亡", status_date=months_ago(2, 17))],
           cases=[Case("低保", "渐退期", months_ago(30, 1), end=_after(AS_OF, 150), amount=180,
                       check_income=round(dibao * 0.9))]))
    add(HH("deceased_recipient", "near_miss", "特困 person died last month; payments stopped in the month of death",
           [M("户主", old + 22, True, status="死亡", status_date=months_ago(1, 25))],
           cases=[Case("特困", "在保", months_ago(60, 1), amount=tekun, check_income=0.0)]))
    add(HH("deceased_recipient", "planted", "no payment records; the 低保边缘 case is still active 3 months after the death",
           [M("户主", old + 9, True, status="死亡", status_date=months_ago(3, 12)), M("配偶", old + 7, False,
                                                                                  pension=pc_r)],
           cases=[Case("低保边缘", "在保", months_ago(20, 1), amount=0, check_income=pc_r)]))
    add(HH("deceased_recipient", "near_miss", "member dead but the case stopped",
           [M("户主", 57, False, wage=2 * pc_r), M("配偶", old + 6, True, status="死亡", status_date=months_ago(3, 3))],
           cases=[Case("低保", "停保", months_ago(36, 1), end=months_ago(2, 28), amount=400, check_income=pc_r)]))
    add(HH("deceased_recipient", "near_miss", "listed member moved out (迁出), not dead",
           [M("户主", 55, True, wage=3 * pc_r), M("配偶", 53, False),
            M("子女", 27, True, status="迁出", status_date=months_ago(4, 6))],
           cases=[Case("低保", "在保", months_ago(28, 15), amount=round(3 * (dibao - pc_r)), check_income=pc_r)]))

    # -- recipient_vehicle ------------------------------------------------------------------------------
    car = "小型汽车"

    def dibao_pair(v_owner: int, vtype: str, status: str = "正常", category: str = "低保", case_status: str = "在保",
                   end: dt.date | None = None) -> tuple[list[M], list[Case]]:
        ms = [M("户主", 48, True, wage=2 * pc_u), M("配偶", 46, False)]
        ms[v_owner].vehicles = ((vtype, dt.date(2017, 5, 2), status),)
        amt = 0.0 if category in ("低保边缘", "低收入") else round(2 * (dibao - pc_u))
        return ms, [Case(category, case_status, months_ago(20, 8), end=end, amount=amt, check_income=pc_u)]

    ms, cs = dibao_pair(0, car)
    add(HH("recipient_vehicle", "planted", "applicant owns a car (正常)", ms, cases=cs))
    ms, cs = dibao_pair(1, car)
    add(HH("recipient_vehicle", "planted", "the spouse (not the applicant) owns the car", ms, cases=cs))
    add(HH("recipient_vehicle", "planted", "特困 person owns a 三轮汽车",
           [M("户主", old + 5, True, vehicles=(("三轮汽车", dt.date(2015, 9, 30), "正常"),))],
           cases=[Case("特困", "在保", months_ago(38, 2), amount=tekun, check_income=0.0)]))
    ms, cs = dibao_pair(0, exempt[-1])
    add(HH("recipient_vehicle", "near_miss", f"exempt vehicle type {exempt[-1]}", ms, cases=cs))
    ms, cs = dibao_pair(0, exempt[0])
    ms[0].disability = ("肢体", 3, dt.date(2014, 2, 2), 1)
    add(HH("recipient_vehicle", "near_miss", f"exempt vehicle type {exempt[0]}", ms, cases=cs))
    ms, cs = dibao_pair(1, car, status="注销")
    add(HH("recipient_vehicle", "near_miss", "the car is cancelled (注销)", ms, cases=cs))
    ms, cs = dibao_pair(0, car, category="低保边缘")
    ms[0].wage = 2 * round(dibao * 1.2)
    cs[0].check_income = round(dibao * 1.2)
    add(HH("recipient_vehicle", "near_miss", "a 低保边缘 (not 低保/特困) household's car", ms, cases=cs))
    ms, cs = dibao_pair(0, car, case_status="停保", end=months_ago(5, 30))
    add(HH("recipient_vehicle", "near_miss", "the 低保 case stopped", ms, cases=cs))

    # -- recipient_property -------------------------------------------------------------------------------
    def dibao_home(props: list[Prop], category: str = "低保") -> tuple[list[M], list[Case]]:
        ms = [M("户主", 52, True, wage=2 * pc_u), M("配偶", 50, False)]
        return ms, [Case(category, "在保", months_ago(24, 9), amount=round(2 * (dibao - pc_u)), check_income=pc_u)]

    extra = max_res + 1
    ms, cs = dibao_home([])
    add(HH("recipient_property", "planted", f"applicant owns {extra} residences", ms, cases=cs,
           props=[Prop(((0, 1.0),)), *[Prop(((0, 1.0),), home=False, registered=dt.date(2018 + i, 3, 3), area=62.3 + i)
                                        for i in range(extra - 1)]]))
    ms, cs = dibao_home([])
    add(HH("recipient_property", "planted", "shared home (0.5 + 0.5) plus the spouse's own residence", ms, cases=cs,
           props=[Prop(((0, 0.5), (1, 0.5))), *[Prop(((1, 1.0),), home=False, registered=dt.date(2016 + i, 7, 1), area=70.15)
                                                   for i in range(extra - 1)]]))
    add(HH("recipient_property", "planted", "特困 person's home plus 60 % of another residence",
           [M("户主", old + 8, False)],
           cases=[Case("特困", "在保", months_ago(33, 3), amount=tekun, check_income=0.0)],
           props=[Prop(((0, 1.0),)),
                  *[Prop(((0, 0.6), ("outside", 0.4)), home=False, registered=dt.date(2010 + i, 1, 9), area=95.2)
                    for i in range(extra - 1)]]))
    ms, cs = dibao_home([])
    add(HH("recipient_property", "near_miss", "shared home plus a shop (商业)", ms, cases=cs,
           props=[Prop(((0, 0.5), (1, 0.5))), Prop(((0, 1.0),), usage="商业", home=False, area=24.6)]))
    ms, cs = dibao_home([])
    add(HH("recipient_property", "near_miss", "a second home sold after the older snapshot (已转移 now, 现势 then)", ms,
           cases=cs, props=[Prop(((0, 1.0),)), Prop(((0, 1.0),), status="已转移", old_status="现势", home=False, area=58.8),
                            Prop((("outside", 1.0),), home=False, area=58.8, in_old=False, registered=dt.date(2026, 10, 22))]))
    ms, cs = dibao_home([])
    add(HH("recipient_property", "near_miss", "a home plus a cancelled (已注销) title", ms, cases=cs,
           props=[Prop(((0, 1.0),)), Prop(((1, 1.0),), status="已注销", home=False, area=66.0)]))

    # -- recipient_high_income ------------------------------------------------------------------------------
    add(HH("recipient_high_income", "planted", f"低保 household at {round(high * 1.57)}/person",
           [M("户主", 47, True, wage=2 * round(high * 1.57)), M("配偶", 45, False)],
           cases=[Case("低保", "在保", months_ago(30, 4), amount=300, check_income=round(dibao * 0.6))]))
    add(HH("recipient_high_income", "planted", "低保 household with two earners, 1.44 × the limit per person",
           [M("户主", 50, True, wage=round(high * 1.44 * 3 * 0.55)), M("配偶", 48, False, wage=round(high * 1.44 * 3 * 0.45)),
            M("子女", 14, False)],
           cases=[Case("低保", "在保", months_ago(40, 4), amount=450, check_income=round(dibao * 0.7))]))
    add(HH("recipient_high_income", "planted", "特困 person earning 2.35 × the limit",
           [M("户主", 58, True, wage=round(high * 2.35))],
           cases=[Case("特困", "在保", months_ago(26, 4), amount=tekun, check_income=0.0)]))
    pc_n = round(high * 0.9)
    add(HH("recipient_high_income", "near_miss", "低保 household at 0.9 × the limit (≤ the limit even with the payment)",
           [M("户主", 44, True, wage=2 * pc_n), M("配偶", 43, False)],
           cases=[Case("低保", "在保", months_ago(12, 4), amount=round(high * 0.08), check_income=round(dibao * 0.9))]))
    add(HH("recipient_high_income", "near_miss", "单人保: a 低保 case of the severely disabled son alone; the parents, "
           "not case members, earn 4 and 3 × the limit",
           [M("户主", 58, True, wage=round(high * 4)), M("配偶", 56, False, wage=round(high * 3)),
            M("子女", 30, True, disability=("肢体", 1, dt.date(2010, 3, 3), 3))],
           cases=[Case("低保", "在保", months_ago(20, 4), amount=round(dibao), applicant=2, members=(2,),
                       check_income=0.0)]))
    add(HH("recipient_high_income", "near_miss", "no case, per-capita income 4 × the limit",
           [M("户主", 39, True, wage=round(high * 5)), M("配偶", 38, False, wage=round(high * 3))]))
    add(HH("recipient_high_income", "near_miss", "the 低保 case stopped, per-capita income 2.35 × the limit",
           [M("户主", 41, False, wage=round(high * 4.7)), M("子女", 12, True)],
           cases=[Case("低保", "停保", months_ago(34, 4), end=months_ago(5, 31 - 1), amount=300, check_income=round(high * 2))]))

    # -- duplicate_enrolment ------------------------------------------------------------------------------------
    pc_d = round(dibao * 0.55)
    add(HH("duplicate_enrolment", "planted", "a parent on the household's 低保 case and on his own 特困 case",
           [M("户主", 45, False, wage=3 * pc_d), M("子女", 17, True), M("父母", old + 16, True)],
           cases=[Case("低保", "在保", months_ago(19, 2), amount=round(3 * (dibao - pc_d)), check_income=pc_d),
                  Case("特困", "在保", months_ago(9, 2), amount=tekun, applicant=2, members=(2,), check_income=0.0)]))
    add(HH("duplicate_enrolment", "planted", "a son on his own household's 低保 case and still on his parents' case",
           [M("户主", 29, True, wage=2 * pc_d), M("配偶", 27, False)], label="dup-son",
           cases=[Case("低保", "在保", months_ago(10, 5), amount=round(2 * (dibao - pc_d)), check_income=pc_d)]))
    add(HH("duplicate_enrolment", "support", "the parents' household whose 低保 case still lists their married son",
           [M("户主", 58, True, wage=2 * pc_d), M("配偶", 56, False)], label="dup-parents",
           cases=[Case("低保", "在保", months_ago(50, 5), amount=round(3 * (dibao - pc_d)),
                       members=(0, 1, ("dup-son", 0)), check_income=pc_d)]))
    add(HH("duplicate_enrolment", "near_miss", "old case stopped the day before the new one started",
           [M("户主", 49, True, wage=2 * pc_d), M("配偶", 47, False)],
           cases=[Case("低保边缘", "停保", months_ago(40, 1), end=months_ago(7, 14), check_income=round(dibao * 1.1)),
                  Case("低保", "在保", _after(months_ago(7, 14), 1), amount=round(2 * (dibao - pc_d)), check_income=pc_d)]))
    add(HH("duplicate_enrolment", "near_miss", "an active 低保 case plus a completed 临时救助 award",
           [M("户主", 54, False, wage=2 * pc_d), M("子女", 20, True)],
           cases=[Case("低保", "在保", months_ago(15, 5), amount=round(2 * (dibao - pc_d)), check_income=pc_d),
                  Case("临时救助", "停保", months_ago(2, 9), end=months_ago(2, 9), amount=2500)]))
    _check(out)
    return out


def _check(hhs: list[HH]) -> None:
    for rule in PLANTED_RULES:
        kinds = {h.kind for h in hhs if h.rule == rule}
        if not {"planted", "near_miss"} <= kinds:
            raise AssertionError(f"rule {rule} lacks planted or near-miss households")
    for h in hhs:
        if [m.rel for m in h.members].count("户主") != 1 or h.members[0].rel != "户主":
            raise AssertionError(f"{h.rule}/{h.note}: the head must be the first and only 户主")


def person_count(hhs: list[HH]) -> int:
    return sum(len(h.members) for h in hhs)


# ---- specs → frames ---------------------------------------------------------------------------
def people_frames(hhs: list[HH], base_hh: int, rng: np.random.Generator) -> tuple[Frame, Frame]:
    """Households and people (attributes) of the planted specs, appended after the background."""
    from safetynet.demo.synth.generate import birth_from_age

    tree = dist.region_tree()
    comm = np.flatnonzero(~tree.village)
    vill = np.flatnonzero(tree.village)
    H = len(hhs)
    region = np.array([int(rng.choice(vill if h.village else comm)) for h in hhs], np.int16)
    # every rule's first planted town household lives in the district's first community, so one
    # community shows every kind of warning (the review app's tests and the demo rely on it)
    first = {}
    for i, h in enumerate(hhs):
        if h.kind == "planted" and not h.village:
            first.setdefault(h.rule, i)
    region[list(first.values())] = comm[0]
    households: Frame = {
        "region": region, "rural": np.array([h.village for h in hhs]), "level": np.full(H, POOR, np.int8),
        "road": rng.integers(0, len(dist.ROADS), H).astype(np.int16),
        "num": np.where(tree.village[region], rng.integers(1, 16, H), rng.integers(1, 400, H)).astype(np.int16),
        "bld": np.where(tree.village[region], rng.integers(1, 121, H), rng.integers(1, 31, H)).astype(np.int16),
        "room": (rng.integers(1, 29, H) * 100 + rng.integers(1, 7, H)).astype(np.int16),
        "planted": np.ones(H, bool),
    }
    ms = [(i, m) for i, h in enumerate(hhs) for m in h.members]
    age = np.array([m.age for _, m in ms])
    people: Frame = {
        "hh": np.array([base_hh + i for i, _ in ms], np.int32), "rel": np.array([REL[m.rel] for _, m in ms], np.int8),
        "male": np.array([m.male for _, m in ms]), "birth": birth_from_age(age, rng),
        "rural": np.array([hhs[i].village for i, _ in ms]),
        "status": np.array([PST[m.status] for _, m in ms], np.int8),
        "sdate": np.array([day(m.status_date) if m.status_date else NODATE for _, m in ms], np.int64),
        "planted": np.ones(len(ms), bool), "age": age.astype(np.int64),
    }
    return households, people


def facts(hhs: list[HH], base_hh: int, base_person: int, offsets: dict[str, int], households: Frame,
          rng: np.random.Generator) -> dict[str, Frame]:
    """The planted facts as frames with global indices (`offsets`: first free case / plate / pid / outside row,
    and the number of employers); `households` is the full household frame (for home addresses)."""
    from safetynet.demo.synth.district import DIAGNOSES
    from safetynet.demo.synth.model import DIS_CATS, VEHICLE_TYPES

    tree = dist.region_tree()

    dx_index = {d[0]: i for i, d in enumerate(DIAGNOSES)}
    pidx: dict[tuple[int, int], int] = {}
    label: dict[str, int] = {}
    p = base_person
    for i, h in enumerate(hhs):
        label[h.label or f"#{i}"] = i
        for j, _ in enumerate(h.members):
            pidx[(i, j)] = p
            p += 1
    rows: dict[str, list[dict]] = {k: [] for k in (
        "employment", "pension", "unemployment", "claim", "enrollment", "vehicle", "property", "dangerous", "case",
        "member", "payment", "check", "disability")}
    case_no = offsets["case"]
    plate = offsets["plate"]
    pid = offsets["pid"]
    outside = offsets["outside"]
    n_emp = offsets["employers"]
    for i, h in enumerate(hhs):
        for j, m in enumerate(h.members):
            pp = pidx[(i, j)]
            wages = m.wages if m.wages is not None else (_all(m.wage) if m.wage is not None else {})
            employer = int(rng.integers(0, n_emp))
            for mi, w in sorted(wages.items()):
                rows["employment"].append({"person": pp, "month": mi, "employer": employer, "wage": round(w * 100), "ins": 1})
            if m.pension is not None:
                for mi in PENSION_MONTHS:
                    if m.status == "正常" or (m.status_date and day(m.status_date) > MONTH_START[mi]):
                        rows["pension"].append({"person": pp, "month": mi, "amount": round(m.pension * 100),
                                                "scheme": ("企业职工", "城乡居民", "机关事业").index(m.pension_scheme)})
            for reg, st, ben, sd in m.unemployment:
                rows["unemployment"].append({"person": pp, "reg": day(reg), "benefit": -1 if ben is None else round(ben * 100),
                                             "status": ("登记", "领取中", "已就业", "注销").index(st),
                                             "sdate": NODATE if sd is None else day(sd)})
            for c in m.claims:
                fund = round((c.total - c.oop) * 100)
                rows["claim"].append({"person": pp, "date": day(c.date), "hosp": int(rng.integers(0, 12)), "inp": c.inpatient,
                                      "dx": dx_index[c.dx], "total": round(c.total * 100), "fund": fund,
                                      "oop": round(c.total * 100) - fund, "serious": -1 if c.serious is None else int(c.serious)})
            if m.status == "正常":
                employee = bool(wages.get(ENROLMENT_MONTH)) or (m.pension_scheme == "企业职工" and m.pension is not None)
                rows["enrollment"].append({"person": pp, "scheme": 0 if employee else 1, "status": 0, "month": ENROLMENT_MONTH})
            for vt, reg, st in m.vehicles:
                rows["vehicle"].append({"plate": plate, "person": pp, "vtype": VEHICLE_TYPES.index(vt), "reg": day(reg),
                                        "status": ("正常", "注销").index(st)})
                plate += 1
            if m.disability:
                cat, grade, issued, subs = m.disability
                rows["disability"].append({"person": pp, "cat": DIS_CATS.index(cat), "grade": grade, "issued": day(issued),
                                           "subs": subs})
        hh_i = base_hh + i
        if h.dangerous:
            rating, assessed, renov = h.dangerous
            rows["dangerous"].append({"hh": hh_i, "rating": "ABCD".index(rating), "date": day(assessed), "renov": renov})
        for pr in h.props:
            if pr.home:
                addr = {k: int(households[k][hh_i]) for k in ("region", "road", "num", "bld", "room")}
            else:
                region = int(rng.choice(np.flatnonzero(~tree.village)))
                addr = {"region": region, "road": int(rng.integers(0, len(dist.ROADS))), "num": int(rng.integers(1, 400)),
                        "bld": int(rng.integers(1, 31)), "room": int(rng.integers(1, 29) * 100 + rng.integers(1, 7))}
            for owner, share in pr.owners:
                is_out = owner == "outside"
                rows["property"].append({
                    "pid": pid, "person": -1 if is_out else pidx[(i, owner)], "outside": outside if is_out else -1,
                    "share": round(share * 10000), "usage": ("住宅", "商业", "办公", "其他").index(pr.usage),
                    "area": round(pr.area * 100) * 100, **addr,
                    "reg": day(pr.registered), "status": ("现势", "已注销", "已转移").index(pr.status),
                    "in_old": pr.in_old, "old_status": ("现势", "已注销", "已转移").index(pr.old_status or pr.status),
                    "sold_late": pr.old_status is not None and pr.old_status != pr.status})
                if is_out:
                    outside += 1
            pid += 1
        for c in h.cases:
            ci = case_no
            case_no += 1
            applicant = pidx[(i, c.applicant)]
            rows["case"].append({"hh": hh_i, "applicant": applicant, "cat": CAT[c.category], "status": CST[c.status],
                                 "start": day(c.start), "end": NODATE if c.end is None else day(c.end),
                                 "amount": round(c.amount * 100)})
            # default member list: the whole registered household (a roster is not updated when someone
            # dies or moves — exactly what deceased_recipient looks for); 特困: the applicant alone
            refs = c.members if c.members is not None else (
                (c.applicant,) if c.category == "特困" else tuple(range(len(h.members))))
            ordered = sorted(refs, key=lambda r: (0 if r == c.applicant else 1))
            for k, ref in enumerate(ordered):
                if isinstance(ref, tuple):
                    hi, mj = label[ref[0]], ref[1]
                    person, rel = pidx[(hi, mj)], REL["子女"]
                else:
                    person = pidx[(i, ref)]
                    rel = REL["户主"] if ref == c.applicant else REL[h.members[ref].rel]
                rows["member"].append({"case": ci, "person": person, "rel": rel, "ord": k})
            for mi in PAYMENT_MONTHS:
                start_ok = day(c.start) < MONTH_START[mi + 1]
                end_ok = c.end is None or day(c.end) >= MONTH_START[mi]
                if start_ok and end_ok and c.amount > 0:
                    rows["payment"].append({"case": ci, "month": mi, "amount": round(c.amount * 100)})
            if c.category != "临时救助":
                ck_day = max(day(c.start), AS_OF_DAY - 300)
                inc = c.check_income if c.check_income is not None else 0.0
                rows["check"].append({"case": ci, "ts": ck_day * 86400 + 10 * 3600 + 1800 - 8 * 3600,
                                      "income": round(inc * 100), "assets": (8000 * 100) if inc else 0, "result": 0})
                if c.status == "停保" and c.end is not None:
                    rows["check"].append({"case": ci, "ts": (day(c.end) - 10) * 86400 + 15 * 3600 - 8 * 3600,
                                          "income": round(max(inc, 1.0) * 1.6 * 100), "assets": 2_500_000, "result": 1})

    def frame(name: str, dtypes: dict[str, str]) -> Frame:
        rs = rows[name]
        return {k: np.array([r[k] for r in rs], dtype=t) for k, t in dtypes.items()}

    out = {
        "human_resources.employment": frame("employment", {"person": "i4", "month": "i1", "employer": "i4", "wage": "i8",
                                                           "ins": "i1"}),
        "human_resources.pension": frame("pension", {"person": "i4", "month": "i1", "amount": "i8", "scheme": "i1"}),
        "human_resources.unemployment": frame("unemployment", {"person": "i4", "reg": "i8", "benefit": "i8", "status": "i1",
                                                               "sdate": "i8"}),
        "medical_insurance.claim": frame("claim", {"person": "i4", "date": "i8", "hosp": "i2", "inp": "?", "dx": "i2",
                                                   "total": "i8", "fund": "i8", "oop": "i8", "serious": "i1"}),
        "medical_insurance.enrollment": frame("enrollment", {"person": "i4", "scheme": "i1", "status": "i1", "month": "i1"}),
        "public_security.vehicle": frame("vehicle", {"plate": "i8", "person": "i4", "vtype": "i1", "reg": "i8", "status": "i1"}),
        "disabled_persons_federation.disability": frame("disability", {"person": "i4", "cat": "i1", "grade": "i1",
                                                                       "issued": "i8", "subs": "i1"}),
        "housing.dangerous_house": frame("dangerous", {"hh": "i4", "rating": "i1", "date": "i8", "renov": "?"}),
        "civil_affairs.assistance_case": frame("case", {"hh": "i4", "applicant": "i4", "cat": "i1", "status": "i1",
                                                        "start": "i8", "end": "i8", "amount": "i8"}),
        "civil_affairs.case_member": frame("member", {"case": "i4", "person": "i4", "rel": "i1", "ord": "i2"}),
        "civil_affairs.assistance_payment": frame("payment", {"case": "i4", "month": "i1", "amount": "i8"}),
        "civil_affairs.income_check": frame("check", {"case": "i4", "ts": "i8", "income": "i8", "assets": "i8",
                                                      "result": "i1"}),
        "housing.property": frame("property", {"pid": "i8", "person": "i4", "outside": "i4", "share": "i8", "usage": "i1",
                                               "area": "i8", "region": "i2", "road": "i2", "num": "i2", "bld": "i2",
                                               "room": "i2", "reg": "i8", "status": "i1", "in_old": "?", "old_status": "i1",
                                               "sold_late": "?"}),
    }
    return out


def planted_rows(hhs: list[HH], base_hh: int) -> list[tuple[int, str, str, str]]:
    """(household index, rule, kind, note) of every planted / near-miss household (support ones excluded)."""
    return [(base_hh + i, h.rule, h.kind, h.note) for i, h in enumerate(hhs) if h.kind in ("planted", "near_miss")]


PLANTED_SCHEMA = pa.schema([("household_no", pa.string()), ("rule_id", pa.string()), ("kind", pa.string()),
                            ("note", pa.string())])

__all__ = ["PLANTED_RULES", "PLANTED_SCHEMA", "facts", "people_frames", "person_count", "planted_rows", "specs"]
