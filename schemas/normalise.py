"""Validate and normalise records against their contract — vectorised, in DuckDB SQL.

The SQL is generated from the contract (`schemas/`), one value expression and one rule
expression per field, so a new feed needs no code here. The same function serves the Kafka
connector, the file-drop connector (validation before `raw/`) and the clean step (typing
`raw/` into `clean/`), so a record accepted into `raw/` is exactly one that cleans.

`schemas.idno` is the pure-Python reference of the ID rules; `tests/test_normalise.py`
holds the two to agreement with property-based tests.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from schemas.contract import Contract, Field
from schemas.idno import check_sql, mask_text

_FW_FROM = "０１２３４５６７８９ｘＸ．－／"
_FW_TO = "0123456789xX.-/"
_WS = " \t\r\n\u3000\u00a0"

#: Quarantine rules: stable identifiers → what they mean (used in reasons and docs).
QUARANTINE_RULES: dict[str, str] = {
    "json_malformed": "the message is not valid JSON",
    "tombstone": ("a Kafka message without a value (its key naming a record to delete): this hub takes deletes "
                  "as envelopes with op \"delete\", so it is kept here, not applied"),
    "envelope_invalid": ("the event envelope is incomplete or wrong (a non-empty event_id, op, an object payload, "
                         "source/feed, schema_version, occurred_at a time not in the future)"),
    "json_structure": "a JSON object or list where the field holds one value",
    "unknown_field": "a field the contract does not know (the feed's evolution mode is frozen)",
    "required_missing": "a required field is missing or empty",
    "id_no_format": "not an 18-digit (or legacy 15-digit) ID number",
    "id_no_birth_date": "the birth date inside the ID number is not a real date, before 1900 or after the record's date",
    "id_no_checksum": "the ID number's check character is wrong (GB 11643)",
    "region_code_format": "not a 12-digit statistical division code",
    "credit_code_format": "not an 18-character unified social credit code",
    "date_format": "not a date in an accepted format (YYYY-MM-DD, YYYY/M/D, YYYYMMDD, YYYY年M月D日)",
    "datetime_format": "not a date-time in an accepted format (YYYY-MM-DD HH:MM:SS[+08:00])",
    "month_format": "not a month (YYYY-MM, YYYYMM, YYYY年M月, or a date) in 1900–2100",
    "money_format": ("not an amount in yuan with at most 2 decimals (1234.50, 1,234.50, 1 234.50, 1234.5元; "
                     "separators only between groups of three digits)"),
    "decimal_format": "not a decimal number",
    "int_format": "not a whole number",
    "bool_format": "not a yes/no value (true/false, 是/否, 1/0, Y/N)",
    "enum_value": "not one of the contract's values",
    "members_format": "not a JSON array of {id_no, relation}: each member a valid ID number, once, with a relation",
    "out_of_range": "outside the contract's allowed range",
    "row_shape": "the row has more or fewer cells than the header",
    "number_precision": ("a number of 16 or more digits stored as a spreadsheet number: its last digits are lost "
                         "(format the column as text in the export)"),
    "total_row": "a total or subtotal row (合计, 小计, 总计, 累计), not a record",
    "quote_unbalanced": "a quote opened in this line is not closed in it (no field may span lines)",
    "control_char": "a control character (other than tab) in a text field",
    "file_header": "the file lacks a required column",
    "file_encoding": "the file is not UTF-8, GBK/GB18030 or a readable XLSX",
}

MACROS = [
    # check character of a 17-digit string (GB 11643), generated from `schemas.idno.WEIGHTS`/`CHECK`
    "CREATE OR REPLACE MACRO sn_idcheck(s) AS " + check_sql("s"),
    # full-width → ASCII; pure-ASCII text (byte length = character length) skips the translation
    f"CREATE OR REPLACE MACRO sn_fw(x) AS CASE WHEN strlen(x) = length(x) THEN x ELSE translate(x, '{_FW_FROM}', '{_FW_TO}') END",
    # ID: full-width → ASCII, upper-case, 15 → 18 digits
    "CREATE OR REPLACE MACRO sn_id_pre(x) AS upper(replace(sn_fw(x), ' ', ''))",
    # 15 → 18 digits over an already pre-normalised column `p`
    "CREATE OR REPLACE MACRO sn_id_up(p) AS CASE WHEN length(p) = 15 AND regexp_full_match(p, '[0-9]{15}') "
    "THEN substr(p, 1, 6) || '19' || substr(p, 7) || sn_idcheck(substr(p, 1, 6) || '19' || substr(p, 7)) ELSE p END",
    # a coalesce of one CASE per rule runs about 3× faster in DuckDB than one CASE with three WHENs
    # `ref`: the record's date (a birth after it is impossible, as is one before 1900)
    "CREATE OR REPLACE MACRO sn_id_rule(n, ref) AS coalesce("
    "CASE WHEN NOT regexp_full_match(n, '[0-9]{17}[0-9X]') THEN 'id_no_format' END, "
    "CASE WHEN coalesce(CAST(try_strptime(substr(n, 7, 8), '%Y%m%d') AS DATE) NOT BETWEEN DATE '1900-01-01' AND ref, true) "
    "THEN 'id_no_birth_date' END, "
    "CASE WHEN sn_idcheck(substr(n, 1, 17)) <> substr(n, 18, 1) THEN 'id_no_checksum' END)",
    # digits only, but not exactly `n` of them: a compact date of 7 digits (2026115: 11-05 or 01-15?)
    # or a month of 5 (20261, or the Excel serial number 46082 of a date) is ambiguous, not guessed
    "CREATE OR REPLACE MACRO sn_digits_not(y, n) AS regexp_full_match(y, '[0-9]+') AND length(y) <> n",
    # ISO dates (nearly all of them) take the fast cast; coalesce evaluates the formats only for the rest
    "CREATE OR REPLACE MACRO sn_date(x) AS coalesce("
    "CASE WHEN length(x) = 10 AND substr(x, 5, 1) = '-' AND substr(x, 8, 1) = '-' THEN TRY_CAST(x AS DATE) END, "
    "CASE WHEN NOT sn_digits_not(sn_fw(x), 8) THEN CAST(try_strptime(sn_fw(x), "
    "['%Y-%m-%d', '%Y/%m/%d', '%Y%m%d', '%Y年%m月%d日', '%Y.%m.%d', '%Y-%m-%d %H:%M:%S', '%Y-%m-%dT%H:%M:%S']) AS DATE) END)",
    "CREATE OR REPLACE MACRO sn_date_ok(d) AS d IS NOT NULL AND year(d) BETWEEN 1900 AND 2100",
    # an ISO instant with its offset (every event envelope) takes the fast cast
    # to the millisecond: the contracts' (and Parquet's) unit; a source's microseconds would make the
    # clean cast fail for ever (the raw record is durable and its offset committed)
    "CREATE OR REPLACE MACRO sn_datetime(x) AS date_trunc('millisecond', coalesce("
    "CASE WHEN length(x) = 25 AND substr(x, 11, 1) = 'T' AND substr(x, 20, 1) IN ('+', '-') "
    "THEN TRY_CAST(x AS TIMESTAMPTZ) END, "
    # UTC written as Z (JavaScript's and Java's toISOString)
    "CASE WHEN right(x, 1) IN ('Z', 'z') AND substr(x, 5, 1) = '-' THEN TRY_CAST(x AS TIMESTAMPTZ) END, "
    "timezone('Asia/Shanghai', try_strptime(sn_fw(x), ['%Y-%m-%d %H:%M:%S', '%Y-%m-%dT%H:%M:%S', '%Y/%m/%d %H:%M:%S', "
    "'%Y-%m-%d %H:%M', '%Y-%m-%d'])), "
    "try_strptime(sn_fw(x), ['%Y-%m-%dT%H:%M:%S%z', '%Y-%m-%d %H:%M:%S%z', '%Y-%m-%dT%H:%M:%S.%f%z'])))",
    # trim only values with white space at an edge (most have none; trim with a set is slow)
    f"CREATE OR REPLACE MACRO sn_trim(x) AS CASE WHEN contains('{_WS}', left(x, 1)) "
    f"OR contains('{_WS}', right(x, 1)) THEN trim(x, '{_WS}') ELSE x END",
    # a month: YYYY-MM (nearly all: the fast parse), YYYYMM (6 digits exactly), YYYY/M, YYYY.M, YYYY年M月,
    # or a date in a date format (a spreadsheet's date cell in a month column): its month
    "CREATE OR REPLACE MACRO sn_month_other(y) AS CASE "
    "WHEN sn_digits_not(y, 6) AND length(y) <> 8 THEN NULL "
    "WHEN regexp_full_match(y, '[0-9]{4}(-|/|\\.|年)[0-9]{1,2}月?|[0-9]{6}') "
    "THEN strftime(try_strptime(regexp_replace(y, '^([0-9]{4})(?:-|/|\\.|年)?([0-9]{1,2})月?$', '\\1-\\2'), '%Y-%m'), '%Y-%m') "
    "ELSE strftime(sn_date(y), '%Y-%m') END",
    "CREATE OR REPLACE MACRO sn_month(x) AS CASE WHEN length(x) = 7 AND substr(x, 5, 1) = '-' "
    "THEN strftime(try_strptime(x, '%Y-%m'), '%Y-%m') ELSE sn_month_other(sn_fw(x)) END",
    # an amount: yuan signs and spaces at the edges dropped; thousands separators (, ， or a space)
    # only where they group the digits by three — 1 234,50 or 1,23 is no amount, not 123450 or 123
    "CREATE OR REPLACE MACRO sn_money_groups(s) AS CASE "
    "WHEN regexp_full_match(s, '[-+]?[0-9]{1,3}([,， ][0-9]{3})+(\\.[0-9]*)?') THEN regexp_replace(s, '[,， ]', '', 'g') "
    "ELSE s END",
    "CREATE OR REPLACE MACRO sn_money_pre(x) AS sn_money_groups(trim(replace(replace(replace(sn_fw(x), '元', ''), "
    "'￥', ''), '¥', '')))",
    "CREATE OR REPLACE MACRO sn_bool(x) AS CASE WHEN lower(x) IN ('true', '1', '是', 'y', 'yes', 't') THEN true "
    "WHEN lower(x) IN ('false', '0', '否', 'n', 'no', 'f') THEN false END",
    "CREATE OR REPLACE MACRO sn_urban(x) AS CASE WHEN x IN ('城镇', '城市', 'urban', '城镇户口', '非农业') THEN '城镇' "
    "WHEN x IN ('农村', 'rural', '农村户口', '农业') THEN '农村' END",
]


def connect(memory_limit: str | None = None, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the normaliser's macros installed. What it spills beyond its memory
    cap goes to a folder of its own under the system's temporary directory (`TMPDIR`), made on the
    first spill and removed when the connection closes; DuckDB's default is `.tmp` in the working
    directory — a read-only folder on a worker, the repository on a developer's machine, and shared
    by every build run there."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET temp_directory = {_lit(os.path.join(tempfile.gettempdir(), f'safetynet-duckdb-{uuid.uuid4().hex}'))}")
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    for m in MACROS:
        con.execute(m)
    return con


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


@dataclass(frozen=True)
class FieldSQL:
    """The staged SQL of one field: `pre` over the trimmed text `t`; `value` over the pre-normalised
    column `p`; `rule` over `p` and the value column `v` (NULL when valid). Stages keep the
    expressions small: each refers to the previous stage's columns, never re-expands it."""

    pre: str
    value: str
    rule: str


def field_sql(f: Field) -> FieldSQL:
    """The staged SQL of one field (placeholders `{t}`, `{p}`, `{v}` are column names)."""
    k = f.kind
    if k in ("string", "enum"):
        rule = "NULL" if k == "string" else f"CASE WHEN {{p}} NOT IN ({', '.join(_lit(s) for s in f.values)}) THEN 'enum_value' END"
        return FieldSQL("{t}", "{p}", rule)
    if k == "id_no":
        return FieldSQL("sn_id_pre({t})", "sn_id_up({p})", "sn_id_rule({v}, __ref)")
    if k == "region_code":
        return FieldSQL("sn_fw({t})", "{p}", "CASE WHEN NOT regexp_full_match({v}, '[0-9]{{12}}') THEN 'region_code_format' END")
    if k == "credit_code":
        return FieldSQL("upper(sn_fw({t}))", "{p}",
                        "CASE WHEN NOT regexp_full_match({v}, '[0-9A-Z]{{18}}') THEN 'credit_code_format' END")
    if k == "date":
        return FieldSQL("{t}", "sn_date({p})", "CASE WHEN NOT sn_date_ok({v}) THEN 'date_format' END")
    if k == "datetime":
        return FieldSQL("{t}", "sn_datetime({p})",
                        "CASE WHEN {v} IS NULL OR year({v}) NOT BETWEEN 1900 AND 2100 THEN 'datetime_format' END")
    if k == "month":
        return FieldSQL("{t}", "sn_month({p})", "CASE WHEN {v} IS NULL OR {v} NOT BETWEEN '1900-01' AND '2100-12' "
                        "THEN 'month_format' END")
    if k in ("money", "decimal"):
        scale, typ, rule = (2, "DECIMAL(14,2)", "money_format") if k == "money" else (4, "DECIMAL(12,4)", "decimal_format")
        intd = 12 if k == "money" else 8
        ok = f"regexp_full_match({{p}}, '[-+]?[0-9]{{{{1,{intd}}}}}(\\.[0-9]{{{{0,{scale}}}}})?')"
        # a value already in the plain form (nearly all) skips the clean-up, which leaves it unchanged
        plain = ok.replace("{p}", "{t}")
        pre = (f"CASE WHEN {plain} THEN {{t}} ELSE " + ("sn_money_pre({t})" if k == "money" else "replace(sn_fw({t}), ' ', '')")
               + " END")
        return FieldSQL(pre, f"CASE WHEN {ok} THEN CAST({{p}} AS {typ}) END",
                        _range(f, f"CASE WHEN {{v}} IS NULL THEN '{rule}' END"))
    if k == "int":
        ok = "regexp_full_match({p}, '[-+]?[0-9]{{1,9}}')"
        return FieldSQL("regexp_replace(sn_fw({t}), '\\.0+$', '')", f"CASE WHEN {ok} THEN CAST({{p}} AS INTEGER) END",
                        _range(f, "CASE WHEN {v} IS NULL THEN 'int_format' END"))
    if k == "bool":
        return FieldSQL("{t}", "sn_bool({p})", "CASE WHEN {v} IS NULL THEN 'bool_format' END")
    if k == "urban_rural":
        return FieldSQL("{t}", "sn_urban({p})", "CASE WHEN {v} IS NULL THEN 'enum_value' END")
    if k == "text_list":
        return FieldSQL("{t}", "CASE WHEN starts_with({p}, '[') AND json_valid({p}) THEN from_json({p}, '[\"VARCHAR\"]') "
                        "ELSE list_filter(list_transform(string_split_regex({p}, '[,;、，；]'), lambda s: trim(s)), "
                        "lambda s: s <> '') END", "NULL")
    if k == "members":
        parsed = ("CASE WHEN json_valid({t}) AND json_type({t}) = 'ARRAY' "
                  "THEN from_json({t}, '[{{\"id_no\":\"VARCHAR\",\"relation\":\"VARCHAR\"}}]') END")
        value = "list_transform({p}, lambda e: struct_pack(id_no := sn_id_up(sn_id_pre(e.id_no)), relation := e.relation))"
        # each member: a valid ID number, once; a relation that is a word (not empty, not a JSON object or list)
        bad = ("len(list_filter({v}, lambda e: e.id_no IS NULL OR sn_id_rule(e.id_no, __ref) IS NOT NULL "
               "OR coalesce(trim(e.relation), '') = '' OR regexp_matches(e.relation, '^\\s*[\\[{{]'))) > 0 "
               "OR len(list_distinct(list_transform({v}, lambda e: e.id_no))) < len({v})")
        return FieldSQL(parsed, value, f"CASE WHEN {{p}} IS NULL OR len({{p}}) = 0 OR {bad} THEN 'members_format' END")
    raise ValueError(f"{f.name}: unknown kind {k!r}")


def _range(f: Field, fmt_rule: str) -> str:
    conds = []
    if f.min is not None:
        conds.append(f"{{v}} < {f.min}")
    if f.max is not None:
        conds.append(f"{{v}} > {f.max}")
    if not conds:
        return fmt_rule
    return f"coalesce({fmt_rule}, CASE WHEN {' OR '.join(conds)} THEN 'out_of_range' END)"


def _fill(expr: str, **cols: str) -> str:
    return expr.format(**{k: _q(v) for k, v in cols.items()})


def validate_sql(c: Contract, source: str, *, pre_rule: str | None = None, typed: bool = True,
                 record_date: bool = False, every_rule: bool = False) -> str:
    """SQL over `source` (a relation with one text column per field, `_op`, and any other columns).

    Returns every source column, the fields as typed values (`typed`) or as received, and
    `_rule` / `_field` (NULL for a valid record). `pre_rule` is a record-level rule expression
    (envelope checks) evaluated before any field rule; its value is a rule, or `rule:field` to
    name the field. A `delete` only needs its key fields.
    `record_date`: `source` has `_occurred_at`, the record's date for the ID birth-date rule
    (else today). `every_rule`: also return each field's own rule as `__r_<field>` (profiling).
    Named steps: `__s` trims, `__p` pre-normalises, `__v` types, `__c` checks values, `__r` applies
    the rules (required, deletes, first failing field).
    """
    trims, pres, vals, checks, rules = [], [], [], [], []
    for f in c.fields:
        sql = field_sql(f)
        t, p, v = "__t_" + f.name, "__p_" + f.name, "__v_" + f.name
        trims.append(f"nullif(sn_trim(CAST({_q(f.name)} AS VARCHAR)), '') AS {_q(t)}")
        pres.append(f"{_fill(sql.pre, t=t)} AS {_q(p)}")
        vals.append(f"{_fill(sql.value, p=p, t=t)} AS {_q(v)}")
        need = "true" if f.name in c.key else ("_op IS DISTINCT FROM 'delete'" if f.required else "false")
        skip = "" if f.name in c.key else "WHEN _op = 'delete' THEN NULL "
        # the value rule is its own column, evaluated for every row: DuckDB runs an expensive
        # expression inside a CASE branch (a partial selection) several times slower
        checks.append(f"{_fill(sql.rule, p=p, v=v, t=t)} AS {_q('__c_' + f.name)}")
        rules.append(f"CASE WHEN {_q(t)} IS NULL THEN CASE WHEN {need} THEN 'required_missing' END "
                     f"{skip}ELSE {_q('__c_' + f.name)} END AS {_q('__r_' + f.name)}")
    first_rule = "coalesce(" + ", ".join(_q("__r_" + n) for n in c.names) + ")"
    first_field = "CASE " + " ".join(f"WHEN {_q('__r_' + n)} IS NOT NULL THEN {_lit(n)}" for n in c.names) + " END"
    if pre_rule:  # a record-level rule, or `rule:field` where a decoder found a field's fault (control_char)
        first_rule = f"coalesce(split_part({pre_rule}, ':', 1), {first_rule})"
        first_field = f"CASE WHEN {pre_rule} IS NOT NULL THEN split_part({pre_rule}, ':', 2) ELSE {first_field} END"
    names = ", ".join(_q(n) for n in c.names)
    helper = "__ref, " + ", ".join(_q(f"__{s}_{n}") for n in c.names for s in ("tpvc" if every_rule else "tpvcr"))
    out = ", ".join(f"{_q(('__v_' if typed else '') + n)} AS {_q(n)}" for n in c.names)
    # the record's date: its event time (or a drop's data date) when known and not in the future
    ref = ("least(coalesce(TRY_CAST(substr(CAST(_occurred_at AS VARCHAR), 1, 10) AS DATE), current_date), current_date)"
           if record_date else "current_date")
    return (
        f"WITH __s AS (SELECT *, {ref} AS __ref, {', '.join(trims)} FROM {source}), "
        f"__p AS (SELECT *, {', '.join(pres)} FROM __s), "
        f"__v AS (SELECT *, {', '.join(vals)} FROM __p), "
        f"__c AS (SELECT *, {', '.join(checks)} FROM __v), "
        f"__r AS (SELECT *, {', '.join(rules)} FROM __c) "
        f"SELECT * EXCLUDE ({names}, {helper}), {out}, {first_rule} AS _rule, {first_field} AS _field FROM __r"
    )


def reason(c: Contract, rule: str, field: str, where: str) -> str:
    """One readable line naming feed, field, rule and a non-personal key — never a value (and
    anything ID-shaped that reached it anyway, e.g. in a file name, is masked)."""
    what = QUARANTINE_RULES.get(rule, rule)
    if field in c.names:
        f = c.field(field)
        return mask_text(f"{c.feed_id}: field {field} ({f.label_zh}) — {rule}: {what} [{where}]")
    if field:  # an envelope field (`envelope_invalid`): the event's, not the record's
        return mask_text(f"{c.feed_id}: envelope field {field} — {rule}: {what} [{where}]")
    return mask_text(f"{c.feed_id}: record — {rule}: {what} [{where}]")


def normalise_table(con: duckdb.DuckDBPyConnection, c: Contract, table: pa.Table) -> pa.Table:
    """Type a table of text fields (e.g. from `raw/`) by the contract; adds `_rule`/`_field`."""
    con.register("__src", table)
    try:
        return con.sql(validate_sql(c, "__src")).to_arrow_table()
    finally:
        con.unregister("__src")
