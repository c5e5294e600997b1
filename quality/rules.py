"""Warning rules: declarative, each one explaining itself.

A rule is data: id, version, Chinese title, severity, kind (forward risk or reverse
eligibility check), the policy parameters it reads, and one SQL query over the monitoring
build's views (`monitoring_person`, `monitoring_household`, `case_member`, and the clean feeds)
returning one row per warning with

* `household_no` — the registration household the warning is about (a household-level rule
  counts every member's facts: a spouse's car counts);
* `subject_id_no` — the person concerned, or NULL for a household-wide fact;
* `facts` — list of {feed, record_key, id_no, field, value, date}: every fact that fired it,
  with the feed it came from, in any order (`quality.evaluation` puts each warning's facts in
  one canonical order; an ordered aggregate here would only cost time: 2.5 s of `disaster_damage`'s
  grouping at 10 M persons);
* `summary_zh` — one line in Chinese with the figures and the thresholds;
* `magnitude` — how far past the threshold (≥ 1), which weights the risk score.

Parameters are bound (`$name`), never formatted into the SQL. Conventions (windows, income, per
capita, active case, recipient) are those of `safetynet.build.monitoring`.
"""

from __future__ import annotations

from dataclasses import dataclass

SEVERITY_WEIGHT = {"S1": 50.0, "S2": 30.0, "S3": 10.0}
SEVERITY_ZH = {"S1": "紧急", "S2": "重要", "S3": "一般"}


@dataclass(frozen=True)
class Rule:
    id: str
    version: int
    title_zh: str
    severity: str  # S1 (act now) … S3 (review)
    kind: str  # forward | reverse
    params: tuple[str, ...]  # policy parameter names recorded as the thresholds used
    sql: str
    scope: str = "household"  # what one warning is about: household | person (in a household) | case (roster)


def _fact(feed: str, key: str, id_no: str, field: str, value: str, date: str) -> str:
    return (f"struct_pack(feed := '{feed}', record_key := CAST({key} AS VARCHAR), id_no := {id_no}, "
            f"field := '{field}', value := CAST({value} AS VARCHAR), date := CAST({date} AS DATE))")


# households of every member of the cases selected by a CTE `sel(case_no)`
_CASE_HOUSEHOLDS = "SELECT DISTINCT sel.case_no, pb.household_no FROM sel JOIN case_member cm USING (case_no) JOIN person_base pb USING (id_no)"

#: the low-income population's assistance categories (低收入人口: 低保, 特困, 低保边缘, 低收入 and
#: 刚性支出困难 households — domain EW-02/EW-08's "低边 or low-income household"); 临时救助 is not one
_LOW_INCOME_CATEGORIES = "['低保', '特困', '低保边缘', '低收入', '刚性支出困难']"

#: the households of EW-02/EW-08: per-capita income under the low-income line, or a member on an
#: active case of a low-income category (the household's active cases, as the household table
#: lists them). A 低保/特困 household above the line counts too: it is low-income by definition, and
#: its 两项补贴 (困难残疾人生活补贴 is the 低保 family's) and medical aid are due all the same
_LOW_INCOME = f"""(SELECT household_no FROM monitoring_household
                  WHERE income_per_capita < low_income_line OR list_has_any(active_categories, {_LOW_INCOME_CATEGORIES}))"""


def _gate_zh(h: str) -> str:
    """Why a gated forward rule's household counts as at risk (inside an aggregate over `h`)."""
    return (f"CASE WHEN len(any_value({h}.active_case_nos)) > 0 THEN '；家庭有在保救助' "
            f"ELSE printf('；扣除医疗自付后人均月收入 %.2f 元，低于低保标准 %.0f 元的 %.1f 倍', "
            f"any_value({h}.risk_income_per_capita), any_value({h}.dibao_standard), $risk_income_multiple) END")


def _low_income_zh(income: str, line: str, categories: str) -> str:
    """Why `_LOW_INCOME` holds, in Chinese (per-capita income `income`, the low-income line `line`,
    the household's active categories `categories`): the income against the line, and the
    low-income categories it is on, e.g. "家庭人均月收入 1400.00 元，有在保低保边缘救助"."""
    cats = f"list_sort(list_intersect({categories}, {_LOW_INCOME_CATEGORIES}))"
    return (f"CASE WHEN {income} < {line} THEN printf('家庭人均月收入 %.2f 元，低于低收入线 %.2f 元', {income}, {line}) "
            f"WHEN {income} IS NULL THEN '家庭无收入记录' ELSE printf('家庭人均月收入 %.2f 元', {income}) END "
            f"|| CASE WHEN len({cats}) > 0 THEN '，有在保' || array_to_string({cats}, '、') || '救助' ELSE '' END")


_HOUSEHOLD_INCOME = _fact("monitoring.household", "h.household_no", "NULL", "income_per_capita", "h.income_per_capita",
                          "$snapshot")
_HOUSEHOLD_INCOME_AGG = _fact("monitoring.household", "any_value(h.household_no)", "NULL", "income_per_capita",
                              "any_value(h.income_per_capita)", "$snapshot")

RULES: tuple[Rule, ...] = (
    Rule("medical_burden", 4, "大额医疗支出", "S2", "forward",
         ("medical_burden_oop_12m", "medical_burden_income_share", "medical_burden_min_oop", "risk_income_multiple"), f"""
        -- only households that can fire: at risk, and their 12-month out-of-pocket (the household
        -- table's sum of the same claims) reaching the lower of the two amounts
        WITH g0 AS (SELECT household_no FROM monitoring_household
                    WHERE at_risk AND oop_12m >= least($medical_burden_oop_12m, $medical_burden_min_oop)),
             -- their members, materialised: the claims are joined to these (a few hundred thousand at
             -- 10 M persons), not to the whole register (the planner's choice otherwise: 2 s more)
             pg AS MATERIALIZED (SELECT id_no, household_no FROM person_base SEMI JOIN g0 USING (household_no)),
             c AS (SELECT pg.household_no, cl.* FROM claim cl JOIN pg USING (id_no)
                   WHERE cl.settle_date >= $win12::DATE AND cl.settle_date < $snapshot::DATE),
             -- the living members' income, as the household's income is everywhere (a member who died
             -- took theirs: their wages must not lift the bar of the share test)
             hi AS (SELECT household_no, sum(income_monthly) FILTER (WHERE alive) * 12 AS income12 FROM monitoring_person
                    SEMI JOIN g0 USING (household_no) GROUP BY household_no),
             h AS (SELECT c.household_no, sum(c.out_of_pocket) AS oop, any_value(hi.income12) AS income12
                   FROM c LEFT JOIN hi USING (household_no) GROUP BY c.household_no)
        SELECT h.household_no, NULL AS subject_id_no,
               list({_fact('medical_insurance.claim', 'c.claim_id', 'c.id_no', 'out_of_pocket', 'c.out_of_pocket', 'c.settle_date')}) AS facts,
               printf('近12个月家庭医疗个人自付 %.2f 元，达到阈值（%.0f 元，或家庭年收入 %.2f 元的 %.0f%% 且不少于 %.0f 元）',
                      any_value(h.oop), $medical_burden_oop_12m, coalesce(any_value(h.income12), 0),
                      $medical_burden_income_share * 100, $medical_burden_min_oop) || {_gate_zh('g')} AS summary_zh,
               greatest(any_value(h.oop) / $medical_burden_oop_12m,
                        CASE WHEN coalesce(any_value(h.income12), 0) > 0
                             THEN any_value(h.oop) / ($medical_burden_income_share * any_value(h.income12)) ELSE 0 END) AS magnitude
        FROM h JOIN c USING (household_no) JOIN monitoring_household g USING (household_no)
        WHERE (h.oop >= $medical_burden_oop_12m
               OR (h.oop >= $medical_burden_min_oop AND h.oop >= $medical_burden_income_share * coalesce(h.income12, 0)))
          AND g.at_risk
        GROUP BY h.household_no"""),
    Rule("income_drop", 2, "家庭收入骤降", "S2", "forward", ("income_drop_ratio", "risk_income_multiple"), f"""
        SELECT h.household_no, NULL AS subject_id_no,
               list({_fact('human_resources.employment', "'last3'", 'mp.id_no', 'wage_last3_total', 'mp.wage_last3_total', '$snapshot')})
               || list({_fact('human_resources.employment', "'prev9'", 'mp.id_no', 'wage_prev9_total', 'mp.wage_prev9_total', '$snapshot')}) AS facts,
               printf('家庭工资收入由前9个月月均 %.2f 元降至近3个月月均 %.2f 元，降幅 %.0f%%（阈值 %.0f%%）',
                      any_value(h.wage_prev9_avg), any_value(h.wage_last3_avg),
                      (1 - 3 * any_value(h.wage_last3_total) / any_value(h.wage_prev9_total)) * 100,
                      $income_drop_ratio * 100) || {_gate_zh('h')} AS summary_zh,
               (1 - 3 * any_value(h.wage_last3_total) / any_value(h.wage_prev9_total)) / $income_drop_ratio AS magnitude
        FROM monitoring_household h JOIN monitoring_person mp USING (household_no)
        WHERE h.wage_prev9_total > 0 AND 3 * h.wage_last3_total <= (1 - $income_drop_ratio) * h.wage_prev9_total
          AND mp.wage_months_12m > 0 AND h.at_risk
        GROUP BY h.household_no"""),
    Rule("unemployment", 3, "劳动年龄成员失业或断缴", "S2", "forward",
         ("unemployment_contribution_gap_months", "unemployment_min_history_months", "working_age_min",
          "working_age_max", "event_lookback_months", "risk_income_multiple"), f"""
        WITH wa AS (SELECT * FROM person_base WHERE alive AND age BETWEEN $working_age_min AND $working_age_max),
             stopped AS (SELECT id_no, household_no, last_wage_month AS last_month FROM monitoring_person
                         WHERE alive AND age BETWEEN $working_age_min AND $working_age_max
                           AND last_wage_month <= $gap_month AND wage_months_12m >= $unemployment_min_history_months),
             reg AS (SELECT wa.id_no, wa.household_no, u.registered_date, u.status
                     FROM wa JOIN unemployment u USING (id_no)
                     WHERE u.status IN ('登记', '领取中')
                       -- recent, and no wages since (a registration the member has worked after is over)
                       AND u.registered_date >= $event_since::DATE AND u.registered_date < $snapshot::DATE
                       AND NOT EXISTS (SELECT 1 FROM employment e WHERE e.id_no = u.id_no
                                       AND e.month > strftime(u.registered_date, '%Y-%m'))),
             f AS (SELECT id_no, household_no,
                          {_fact('human_resources.employment', 'last_month', 'id_no', 'last_contribution_month', 'last_month', "last_month || '-01'")} AS fact
                   FROM stopped
                   UNION ALL
                   SELECT id_no, household_no,
                          {_fact('human_resources.unemployment', 'registered_date', 'id_no', 'status', 'status', 'registered_date')}
                   FROM reg)
        SELECT household_no, id_no AS subject_id_no, list(fact) AS facts,
               CASE WHEN bool_or(fact.feed = 'human_resources.unemployment')
                    THEN printf('劳动年龄成员已办理失业登记（%s）', string_agg(DISTINCT fact.value, '、' ORDER BY fact.value) FILTER (WHERE fact.feed = 'human_resources.unemployment'))
                    ELSE '' END
               || CASE WHEN bool_or(fact.feed = 'human_resources.employment')
                       THEN printf('%s劳动年龄成员社保缴费自 %s 后中断（阈值：连续 %d 个月未缴、此前至少缴费 %d 个月）',
                                   CASE WHEN bool_or(fact.feed = 'human_resources.unemployment') THEN '；' ELSE '' END,
                                   max(fact.value) FILTER (WHERE fact.feed = 'human_resources.employment'),
                                   $unemployment_contribution_gap_months, $unemployment_min_history_months)
                       ELSE '' END || {_gate_zh('g')} AS summary_zh,
               1.0 AS magnitude
        FROM f JOIN monitoring_household g USING (household_no) WHERE g.at_risk
        GROUP BY household_no, id_no""", scope="person"),
    Rule("earner_death", 4, "劳动力成员死亡", "S1", "forward",
         ("event_lookback_months", "working_age_min", "working_age_max"), f"""
        -- working age when they died, not on the snapshot date: an earner who died at 59 and would
        -- have turned 60 since is a working-age death. A death the register dates nowhere (its
        -- `status_date` is optional) counts as within the lookback when the last wages are: the age
        -- in the month of the last wages stands in for the age at death
        -- a household with a living member (an earner who lived alone leaves nobody to visit)
        WITH mp AS (SELECT *, sn_age(birth_date, coalesce(status_date, CAST(last_wage_month || '-01' AS DATE))) AS age_at_death
                    FROM monitoring_person
                    WHERE status = '死亡' AND wage_months_12m > 0
                      AND household_no IN (SELECT household_no FROM monitoring_household WHERE members_alive > 0)
                      AND CASE WHEN status_date IS NULL THEN last_wage_month >= strftime($event_since::DATE, '%Y-%m')
                               ELSE status_date >= $event_since::DATE AND status_date < $snapshot::DATE END)
        SELECT mp.household_no, mp.id_no AS subject_id_no,
               [{_fact('public_security.person', "'status'", 'mp.id_no', 'status', 'mp.status', 'mp.status_date')},
                {_fact('human_resources.employment', 'mp.last_wage_month', 'mp.id_no', 'wage_12m_avg', 'mp.wage_12m_avg', "mp.last_wage_month || '-01'")}] AS facts,
               coalesce(printf('有收入的劳动年龄成员（%d 岁）于 %s 死亡（回溯 %d 个月）', mp.age_at_death,
                               strftime(mp.status_date, '%Y-%m-%d'), $event_lookback_months),
                        printf('有收入的劳动年龄成员（约 %d 岁）死亡，户籍登记无死亡日期，末次工资 %s（回溯 %d 个月）',
                               mp.age_at_death, mp.last_wage_month, $event_lookback_months)) AS summary_zh,
               1.0 AS magnitude
        FROM mp
        WHERE mp.age_at_death BETWEEN $working_age_min AND $working_age_max""", scope="person"),
    Rule("serious_illness", 3, "低收入家庭成员患重特大疾病", "S2", "forward",
         ("event_lookback_months", "serious_illness_prefixes", "low_income_multiple"), f"""
        -- a living member (a member who has died since is no case for 单人户 enrolment; the household's
        -- medical costs stay with `medical_burden`): filtered after the claims' join, not in it (in it
        -- DuckDB plans the join otherwise: 2.05 s against 0.96 s at 10 M persons)
        WITH sc AS (SELECT pb.household_no, pb.alive, cl.* FROM claim cl JOIN person_base pb USING (id_no)
                    WHERE cl.settle_date < $snapshot::DATE
                      AND (coalesce(cl.serious_illness, false)
                           OR regexp_matches(cl.diagnosis_code, $serious_pattern))),
             -- a new illness: the person's first serious-illness claim falls within the lookback
             s AS (SELECT * FROM sc WHERE alive AND id_no IN (SELECT id_no FROM sc GROUP BY id_no
                                                              HAVING min(settle_date) >= $event_since::DATE))
        SELECT s.household_no, s.id_no AS subject_id_no,
               list({_fact('medical_insurance.claim', 's.claim_id', 's.id_no', 'diagnosis_code', "s.diagnosis_code || ' ' || coalesce(s.diagnosis_name, '')", 's.settle_date')})
               || [{_HOUSEHOLD_INCOME_AGG}] AS facts,
               printf('成员确诊重特大疾病（%s），%s',
                      arg_max(s.diagnosis_code || coalesce(' ' || s.diagnosis_name, ''), {{'d': s.settle_date, 'k': s.claim_id}}),
                      {_low_income_zh('any_value(h.income_per_capita)', 'any_value(h.low_income_line)', 'any_value(h.active_categories)')}) AS summary_zh,
               1.0 AS magnitude
        FROM s JOIN monitoring_household h USING (household_no)
        WHERE s.household_no IN {_LOW_INCOME}
        GROUP BY s.household_no, s.id_no""", scope="person"),
    Rule("uncovered_low_income", 1, "低收入未纳入救助", "S2", "forward", ("urban_dibao", "rural_dibao"), f"""
        SELECT h.household_no, NULL AS subject_id_no, [{_HOUSEHOLD_INCOME}] AS facts,
               printf('家庭人均月收入 %.2f 元，低于低保标准 %.2f 元，且无在保救助', h.income_per_capita, h.dibao_standard) AS summary_zh,
               h.dibao_standard / greatest(h.income_per_capita, 1) AS magnitude
        FROM monitoring_household h
        WHERE h.income_per_capita < h.dibao_standard
          -- no member on an active case (the household's active cases, as the household table lists them)
          AND len(h.active_case_nos) = 0"""),
    Rule("dangerous_house", 2, "住房安全风险（危房）", "S1", "forward", ("dangerous_house_ratings",), f"""
        SELECT d.household_no, NULL AS subject_id_no,
               [{_fact('housing.dangerous_house', 'd.household_no', 'NULL', 'rating', 'd.rating', 'd.assessed_date')},
                {_fact('housing.dangerous_house', 'd.household_no', 'NULL', 'renovated', 'd.renovated', 'd.assessed_date')}] AS facts,
               printf('住房于 %s 鉴定为 %s 级危房，尚未改造', strftime(d.assessed_date, '%Y-%m-%d'), d.rating) AS summary_zh,
               CASE d.rating WHEN 'D' THEN 1.5 ELSE 1.0 END AS magnitude
        FROM dangerous_house d
        -- the latest assessment of the household (the feed is keyed by household): however old a C/D
        -- rating, it stands until renovated or re-assessed A/B
        WHERE list_contains($dangerous_house_ratings, d.rating) AND NOT d.renovated"""),
    Rule("disaster_damage", 1, "因灾受损", "S1", "forward",
         ("disaster_lookback_months", "disaster_house_damage", "disaster_loss_min"), f"""
        WITH d AS (SELECT pb.household_no, ds.* FROM disaster ds JOIN person_base pb USING (id_no)
                   WHERE ds.disaster_date >= $disaster_since::DATE AND ds.disaster_date < $snapshot::DATE),
             h AS (SELECT household_no, sum(direct_loss) AS loss,
                          bool_or(list_contains($disaster_house_damage, house_damage)) AS house
                   FROM d GROUP BY household_no)
        SELECT h.household_no, NULL AS subject_id_no,
               list({_fact('emergency_management.disaster', 'd.disaster_date', 'd.id_no', 'house_damage', 'd.house_damage', 'd.disaster_date')})
               || list({_fact('emergency_management.disaster', 'd.disaster_date', 'd.id_no', 'direct_loss', 'd.direct_loss', 'd.disaster_date')}) AS facts,
               printf('%d 个月内家庭成员因灾（%s）受损：直接经济损失合计 %.2f 元，房屋%s（阈值：房屋%s，或损失 %.0f 元）',
                      $disaster_lookback_months, string_agg(DISTINCT d.disaster_type, '、' ORDER BY d.disaster_type),
                      any_value(h.loss), string_agg(DISTINCT d.house_damage, '、' ORDER BY d.house_damage),
                      array_to_string($disaster_house_damage, '、'), $disaster_loss_min) AS summary_zh,
               greatest(any_value(h.loss) / $disaster_loss_min, CASE WHEN any_value(h.house) THEN 1.5 ELSE 1.0 END) AS magnitude
        FROM h JOIN d USING (household_no)
        WHERE h.house OR h.loss >= $disaster_loss_min
        GROUP BY h.household_no"""),
    Rule("repeat_temporary_aid", 2, "多次临时救助", "S2", "forward",
         ("repeat_temporary_aid_count", "repeat_temporary_aid_window_months"), f"""
        WITH t AS (SELECT DISTINCT pb.household_no, cm.case_no, cm.start_date
                   FROM case_member cm JOIN person_base pb USING (id_no)
                   WHERE cm.category = '临时救助' AND cm.start_date >= $temp_since::DATE
                     AND cm.start_date < $snapshot::DATE)
        SELECT household_no, NULL AS subject_id_no,
               list({_fact('civil_affairs.assistance_case', 'case_no', 'NULL', 'category', "'临时救助'", 'start_date')}) AS facts,
               printf('%d 个月内获临时救助 %d 次（阈值 %d 次）', $repeat_temporary_aid_window_months, count(*),
                      $repeat_temporary_aid_count) AS summary_zh,
               count(*) / $repeat_temporary_aid_count AS magnitude
        FROM t GROUP BY household_no HAVING count(*) >= $repeat_temporary_aid_count"""),
    Rule("phase_out_risk", 1, "渐退期即将届满", "S3", "forward", ("phase_out_expiry_days",), f"""
        WITH sel AS (SELECT DISTINCT case_no FROM case_member
                     WHERE case_status = '渐退期' AND end_date >= $snapshot::DATE AND end_date <= $expiry::DATE)
        SELECT ch.household_no, NULL AS subject_id_no,
               list(DISTINCT {_fact('civil_affairs.assistance_case', 'cm.case_no', 'NULL', 'end_date', 'cm.end_date', 'cm.end_date')}) AS facts,
               printf('%s 救助渐退期将于 %s 届满（%d 天内）', min(cm.category), strftime(min(cm.end_date), '%Y-%m-%d'),
                      $phase_out_expiry_days) AS summary_zh,
               1.0 AS magnitude
        FROM ({_CASE_HOUSEHOLDS}) ch JOIN case_member cm USING (case_no)
        GROUP BY ch.household_no""", scope="case"),
    Rule("severe_disability", 3, "低收入家庭重度残疾", "S2", "forward",
         ("severe_disability_grades", "event_lookback_months", "low_income_multiple"), f"""
        -- a certificate issued within the lookback (a new one: its 两项补贴 and 单人户 review are due), or
        -- one of any age whose holder's reported subsidies hold no 护理补贴 (重度残疾人护理补贴, 应补尽补);
        -- a holder already paid it on an old certificate is known to the bureau, not news
        SELECT pb.household_no, d.id_no AS subject_id_no,
               [{_fact('disabled_persons_federation.disability', "'certificate'", 'd.id_no', 'grade', "d.category || ' ' || d.grade || '级'", 'd.issued_date')},
                {_fact('disabled_persons_federation.disability', "'certificate'", 'd.id_no', 'subsidies', "coalesce(array_to_string(d.subsidies, '、'), '')", 'd.issued_date')},
                {_HOUSEHOLD_INCOME}] AS facts,
               printf('成员%s%s残疾 %d 级证%s，%s',
                      CASE WHEN d.new THEN printf('于 %s 新领', strftime(d.issued_date, '%Y-%m-%d')) ELSE '持' END,
                      d.category, d.grade, CASE WHEN d.nursing = false THEN '，享受补贴中无重度残疾人护理补贴' ELSE '' END,
                      {_low_income_zh('h.income_per_capita', 'h.low_income_line', 'h.active_categories')}) AS summary_zh,
               1.0 AS magnitude
        FROM (SELECT *, issued_date >= $event_since::DATE AND issued_date < $snapshot::DATE AS new,
                     -- the care subsidy among the reported ones: 两项补贴 (both), a 护理 subsidy of the
                     -- disabled (重度残疾人护理补贴, 重残护理费…) or one named only 护理补贴/护理补助/护理费
                     -- (not 失能老年人护理补贴); an empty list: none. NULL: the feed reported nothing (a
                     -- county that does not send the column) — no evidence of a missing subsidy. Other
                     -- names and codes: a `[values.subsidies]` mapping
                     CASE WHEN len(subsidies) = 0 THEN false
                          ELSE list_bool_or(list_transform(subsidies, lambda x: contains(x, '两项补贴')
                               OR contains(x, '护理') AND (contains(x, '残') OR x IN ('护理补贴', '护理补助', '护理费')))) END AS nursing
              FROM disability) d
        JOIN person_base pb USING (id_no) JOIN monitoring_household h ON h.household_no = pb.household_no
        WHERE list_contains($severe_disability_grades, d.grade) AND pb.alive AND pb.household_no IN {_LOW_INCOME}
          AND (d.new OR d.nursing = false)""",
         scope="person"),
    Rule("deceased_recipient", 3, "死亡或注销人员仍在保", "S1", "reverse", ("death_grace_days",), f"""
        -- dead, or the register record cancelled (注销: domain RV-01 counts either; it has other causes
        -- than death, so the summary asks why); the register's date may be missing
        WITH dead AS (SELECT cm.case_no, cm.category, cm.relation, pb.id_no, pb.status, pb.status_date
                      FROM case_member cm JOIN person_base pb USING (id_no) WHERE cm.active AND pb.status IN ('死亡', '注销')),
             last_paid AS (SELECT case_no, max(month) AS month FROM assistance_payment
                           WHERE case_no IN (SELECT case_no FROM dead) GROUP BY case_no),
             -- 冒领: paid for a month after the month of death; an undated record: its case's latest
             -- payment, the one to check (which payments came after is unknown)
             after AS (SELECT d.case_no, d.id_no, p.month, p.amount FROM dead d JOIN assistance_payment p
                       ON p.case_no = d.case_no AND p.month > strftime(d.status_date, '%Y-%m')
                       UNION ALL
                       SELECT d.case_no, d.id_no, p.month, p.amount FROM dead d JOIN last_paid l ON l.case_no = d.case_no
                       JOIN assistance_payment p ON p.case_no = l.case_no AND p.month = l.month
                       WHERE d.status_date IS NULL),
             -- no payment records to judge by: still active more than the grace after the death (an
             -- undated one: on the register's word)
             unpaid AS (SELECT d.* FROM dead d WHERE coalesce(d.status_date < $death_grace_until::DATE, true)
                        AND d.case_no NOT IN (SELECT case_no FROM last_paid)),
             hit AS (SELECT case_no, id_no FROM after UNION SELECT case_no, id_no FROM unpaid),
             sel AS (SELECT DISTINCT case_no FROM hit),
             -- each payment after the case's first dated death, and whether a member still counted as
             -- living in its month: one not dead or cancelled before it by the register's date — one
             -- moved out (迁出), missing from this register or of unknown date counts as living
             gone AS (SELECT d.case_no, d.id_no, strftime(d.status_date, '%Y-%m') AS month FROM dead d
                      WHERE d.status_date IS NOT NULL AND d.case_no IN (SELECT case_no FROM sel)),
             first AS (SELECT case_no, min(month) AS month FROM gone GROUP BY case_no),
             paid AS (SELECT DISTINCT p.case_no, p.month, p.amount FROM assistance_payment p JOIN first f
                      ON f.case_no = p.case_no AND p.month > f.month),
             members AS (SELECT case_no, count(*) AS n FROM case_member WHERE case_no IN (SELECT case_no FROM sel) GROUP BY case_no),
             cls AS (SELECT pd.case_no, pd.month, pd.amount,
                            count(g.id_no) < any_value(m.n) AS living
                     FROM paid pd JOIN members m USING (case_no)
                     LEFT JOIN gone g ON g.case_no = pd.case_no AND g.month < pd.month
                     GROUP BY pd.case_no, pd.month, pd.amount),
             money AS (SELECT case_no, count(*) AS n, sum(amount) AS total, count(*) FILTER (WHERE NOT living) AS n_owed,
                              coalesce(sum(amount) FILTER (WHERE NOT living), 0) AS owed
                       FROM cls GROUP BY case_no),
             -- one line per case: its dead or cancelled members (by their relation on the case), then the money
             line AS (SELECT d.case_no, any_value(d.category) AS category,
                             string_agg(coalesce(d.relation, '成员')
                                        || CASE WHEN d.status = '死亡'
                                                THEN coalesce(printf('于 %s 死亡', strftime(d.status_date, '%Y-%m-%d')), '已死亡（日期不详）')
                                                ELSE coalesce(printf('户籍于 %s 注销', strftime(d.status_date, '%Y-%m-%d')), '户籍已注销（日期不详）') END,
                                        '、' ORDER BY d.status_date NULLS LAST, d.id_no) AS who,
                             bool_and(d.status = '死亡') AS all_dead, bool_or(d.status_date IS NULL) AS undated
                      FROM dead d JOIN hit USING (case_no, id_no) GROUP BY d.case_no),
             zh AS (SELECT l.case_no, coalesce(m.n, 0) AS n,
                           printf('救助案件 %s（%s）：', l.case_no, l.category) || l.who
                           || CASE WHEN l.all_dead THEN '' ELSE '（注销请核实原因）' END || '，'
                           || CASE WHEN m.n > 0 AND m.n_owed = m.n
                                   THEN printf('其后仍发放救助金 %d 个月，合计 %.2f 元（%s）', m.n, m.total,
                                               CASE WHEN l.all_dead THEN '应追回' ELSE '请核实应追回金额' END)
                                   WHEN m.n > 0 AND m.n_owed = 0
                                   THEN printf('其后仍发放救助金 %d 个月，合计 %.2f 元（含仍健在成员的救助金：请核减该成员并核实应追回金额）', m.n, m.total)
                                   WHEN m.n > 0
                                   THEN printf('其后仍发放救助金 %d 个月，合计 %.2f 元（其中 %d 个月 %.2f 元发放时已无健在成员，%s；其余含仍健在成员的救助金，请核减并核实）',
                                               m.n, m.total, m.n_owed, m.owed, CASE WHEN l.all_dead THEN '应追回' ELSE '请核实应追回金额' END)
                                   WHEN lp.month IS NOT NULL
                                   THEN printf('救助金发放至 %s，请核实%s日期后确定应追回金额', lp.month,
                                               CASE WHEN l.all_dead THEN '死亡' ELSE '死亡或注销' END)
                                   WHEN l.undated THEN '救助仍在保（无发放记录可核）'
                                   ELSE printf('已超过 %d 天，救助仍在保（无发放记录可核）', $death_grace_days) END AS text
                    FROM line l LEFT JOIN money m USING (case_no) LEFT JOIN last_paid lp USING (case_no)),
             h AS (SELECT ch.household_no, d.case_no, d.id_no, d.status, d.status_date
                   FROM ({_CASE_HOUSEHOLDS}) ch JOIN dead d USING (case_no) JOIN hit USING (case_no, id_no)),
             ev AS (SELECT case_no, month, amount FROM paid
                    UNION SELECT a.case_no, a.month, a.amount FROM after a WHERE a.case_no NOT IN (SELECT case_no FROM first))
        SELECT h.household_no, min(h.id_no) AS subject_id_no,
               list(DISTINCT {_fact('public_security.person', "'status'", 'h.id_no', 'status', 'h.status', 'h.status_date')})
               || coalesce(list(DISTINCT {_fact('civil_affairs.assistance_payment', "a.case_no || '|' || a.month", 'NULL', 'amount', 'a.amount', "CAST(a.month || '-01' AS DATE)")})
                           FILTER (WHERE a.case_no IS NOT NULL), [])
               || list(DISTINCT {_fact('civil_affairs.assistance_case', 'h.case_no', 'NULL', 'status', "'在保/渐退期'", '$snapshot')}) AS facts,
               string_agg(DISTINCT z.text, '；' ORDER BY z.text) AS summary_zh,
               greatest(1.0, max(z.n)) AS magnitude
        FROM h JOIN zh z USING (case_no) LEFT JOIN ev a ON a.case_no = h.case_no
        GROUP BY h.household_no""", scope="case"),
    Rule("recipient_vehicle", 1, "救助对象家庭有机动车", "S2", "reverse", ("recipient_vehicle_exempt_types",), f"""
        WITH cars AS (SELECT cm.case_no, v.* FROM case_member cm JOIN vehicle v ON v.owner_id_no = cm.id_no
                      WHERE cm.active AND cm.category IN ('低保', '特困') AND v.status = '正常'
                        AND NOT list_contains($recipient_vehicle_exempt_types, v.vehicle_type)),
             sel AS (SELECT DISTINCT case_no FROM cars)
        SELECT ch.household_no, min(cars.owner_id_no) AS subject_id_no,
               list(DISTINCT {_fact('public_security.vehicle', 'cars.plate_no', 'cars.owner_id_no', 'vehicle_type', 'cars.vehicle_type', 'cars.registered_date')}) AS facts,
               printf('低保/特困家庭成员名下有机动车 %d 辆（%s）', count(DISTINCT cars.plate_no),
                      string_agg(DISTINCT cars.vehicle_type, '、' ORDER BY cars.vehicle_type)) AS summary_zh,
               count(DISTINCT cars.plate_no) AS magnitude
        FROM ({_CASE_HOUSEHOLDS}) ch JOIN cars USING (case_no)
        GROUP BY ch.household_no""", scope="case"),
    Rule("recipient_property", 1, "救助对象家庭多套住房", "S2", "reverse", ("recipient_property_max_residences",), f"""
        WITH homes AS (SELECT DISTINCT cm.case_no, p.property_id, p.owner_id_no, p.share, p.registered_date
                       FROM case_member cm JOIN property p ON p.owner_id_no = cm.id_no
                       WHERE cm.active AND cm.category IN ('低保', '特困') AND p.usage = '住宅' AND p.status = '现势'),
             sel AS (SELECT case_no FROM homes GROUP BY case_no
                     HAVING count(DISTINCT property_id) > $recipient_property_max_residences)
        SELECT ch.household_no, NULL AS subject_id_no,
               list(DISTINCT {_fact('housing.property', 'homes.property_id', 'homes.owner_id_no', 'share', 'homes.share', 'homes.registered_date')}) AS facts,
               printf('低保/特困家庭成员名下住宅 %d 套（允许 %d 套）', count(DISTINCT homes.property_id),
                      $recipient_property_max_residences) AS summary_zh,
               count(DISTINCT homes.property_id) / greatest($recipient_property_max_residences, 1) AS magnitude
        FROM ({_CASE_HOUSEHOLDS}) ch JOIN homes USING (case_no)
        GROUP BY ch.household_no""", scope="case"),
    Rule("recipient_high_income", 2, "救助对象家庭收入超标", "S2", "reverse", ("recipient_high_income_multiple",), f"""
        -- judged over the members of the case (a 单人保 case: its one member), not the registration household
        WITH rc AS (SELECT cm.case_no, any_value(cm.category) AS category,
                           any_value(CASE WHEN cm.urban_rural = '城镇' THEN $urban_dibao ELSE $rural_dibao END) AS standard,
                           CAST(count(*) FILTER (WHERE mp.alive) AS INTEGER) AS members,
                           sum(mp.income_monthly) FILTER (WHERE mp.alive) AS income,
                           list({_fact('monitoring.person', 'cm.case_no', 'mp.id_no', 'income_monthly', 'mp.income_monthly', '$snapshot')})
                                FILTER (WHERE mp.alive) AS facts
                    FROM case_member cm JOIN monitoring_person mp USING (id_no)
                    WHERE cm.active AND cm.category IN ('低保', '特困') GROUP BY cm.case_no),
             sel AS (SELECT case_no FROM rc WHERE members > 0 AND income / members > standard * $recipient_high_income_multiple)
        SELECT ch.household_no, NULL AS subject_id_no, flatten(list(rc.facts)) AS facts,
               string_agg(printf('%s案件（%d 人）人均月收入 %.2f 元，超过低保标准 %.0f 元的 %.1f 倍（%.2f 元）',
                                 rc.category, rc.members, rc.income / rc.members, rc.standard,
                                 $recipient_high_income_multiple, rc.standard * $recipient_high_income_multiple),
                          '；' ORDER BY rc.case_no) AS summary_zh,
               max(rc.income / rc.members / (rc.standard * $recipient_high_income_multiple)) AS magnitude
        FROM ({_CASE_HOUSEHOLDS}) ch JOIN rc USING (case_no)
        GROUP BY ch.household_no""", scope="case"),
    Rule("duplicate_enrolment", 2, "重复享受救助", "S1", "reverse", ("duplicate_enrolment_categories",), f"""
        -- only the exclusive categories count: 临时救助 is an award on top of a 低保 case, not a second enrolment
        WITH ex AS (SELECT * FROM case_member WHERE active AND list_contains($duplicate_enrolment_categories, category)),
             d AS (SELECT id_no FROM ex GROUP BY id_no HAVING count(DISTINCT case_no) > 1)
        SELECT pb.household_no, d.id_no AS subject_id_no,
               list({_fact('civil_affairs.assistance_case', 'cm.case_no', 'd.id_no', 'category', 'cm.category', 'cm.start_date')}) AS facts,
               printf('同一人同时在 %d 个在保救助案件中（%s）', count(DISTINCT cm.case_no),
                      string_agg(DISTINCT cm.category, '、' ORDER BY cm.category)) AS summary_zh,
               1.0 AS magnitude
        FROM d JOIN ex cm ON cm.id_no = d.id_no JOIN person_base pb ON pb.id_no = d.id_no
        GROUP BY pb.household_no, d.id_no""", scope="person"),
)


def by_id() -> dict[str, Rule]:
    return {r.id: r for r in RULES}
