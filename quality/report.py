"""The quality gate's report: what failed, how it is shown, whether the snapshot may be published.

`Failure` (one failed expectation, with at most `MAX_EXAMPLES` masked example keys),
`SuiteResult` (one suite run on one frame), `QualityReport` (every suite of a snapshot: `ok`
when no critical expectation failed, `summary()` the one-screen text in Chinese and English,
`as_dict()` the JSON form written next to the Data Docs, `raise_for_critical()`).

PII: nothing here holds a data value. Example keys are masked by `quality.gate` (ID numbers
前6后4, `schemas.idno.mask_value`), and `scrub` masks anything shaped like an 18-character ID
number in free text (exception messages, observed values, every Data Docs page) as a last line
of defence.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from quality.suites import CHECK_ZH
from schemas import idno

if TYPE_CHECKING:
    from great_expectations.core import ExpectationSuiteValidationResult

MAX_EXAMPLES = 20

def scrub(text: str) -> str:
    """Mask every ID-shaped value in report text, bad ones included (`schemas.idno.mask_text`)."""
    return idno.mask_text(text, bad_ids=True)


@dataclass
class Failure:
    suite: str
    feed: str
    field: str | None
    expectation: str
    check: str
    critical: bool
    unexpected_count: int | None
    element_count: int | None
    examples: list[str]  # masked keys, at most MAX_EXAMPLES
    message: str = ""  # observed value or the exception message (GX internal errors)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class SuiteResult:
    name: str
    kind: str  # feed | cross | output
    subject: str
    rows: int
    success: bool
    statistics: dict
    seconds: float
    failures: list[Failure] = field(default_factory=list)
    #: a feed suite not run again: its clean table is byte-identical to the one it passed on then
    #: (`{"snapshot_date", "validated_at", "clean_sha256"}` of that run); None: run now
    carried_from: dict | None = None

    @property
    def critical_ok(self) -> bool:
        return not any(f.critical for f in self.failures)

    def as_dict(self) -> dict:
        d = {"name": self.name, "kind": self.kind, "subject": self.subject, "rows": self.rows,
             "success": self.success, "critical_ok": self.critical_ok, "statistics": self.statistics,
             "seconds": round(self.seconds, 3), "failures": [f.as_dict() for f in self.failures]}
        if self.carried_from is not None:
            d["carried_from"] = self.carried_from
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SuiteResult:
        return cls(d["name"], d["kind"], d["subject"], d["rows"], d["success"], d["statistics"], d["seconds"],
                   [Failure(**f) for f in d["failures"]], d.get("carried_from"))


@dataclass
class QualityReport:
    snapshot_date: dt.date
    suites: list[SuiteResult]
    seconds: float
    validated_at: str
    county: str | None = None
    missing: list[str] = field(default_factory=list)  # feeds without a clean table
    _context: Any = field(default=None, repr=False, compare=False)
    _results: dict = field(default_factory=dict, repr=False, compare=False)  # name → (identifier, result, suite)

    @property
    def failures(self) -> list[Failure]:
        return [f for s in self.suites for f in s.failures]

    @property
    def critical_failures(self) -> list[Failure]:
        return [f for f in self.failures if f.critical]

    @property
    def warnings(self) -> list[Failure]:
        return [f for f in self.failures if not f.critical]

    @property
    def ok(self) -> bool:
        """True when no critical expectation failed (warnings do not block publishing)."""
        return not self.critical_failures

    def suite(self, name: str) -> SuiteResult:
        for s in self.suites:
            if s.name == name:
                return s
        raise KeyError(name)

    def results(self) -> list[ExpectationSuiteValidationResult]:
        """The GX validation results (already sanitised: masked examples, no data values)."""
        return [r for _, r, _ in self._results.values()]

    def as_dict(self) -> dict:
        return {"snapshot_date": self.snapshot_date.isoformat(), "ok": self.ok, "county": self.county,
                "validated_at": self.validated_at, "seconds": round(self.seconds, 3), "missing": self.missing,
                "suites": [s.as_dict() for s in self.suites],
                "counts": {"suites": len(self.suites),
                           "expectations": sum(s.statistics.get("evaluated_expectations", 0) for s in self.suites),
                           "critical_failures": len(self.critical_failures), "warnings": len(self.warnings)}}

    def raise_for_critical(self) -> None:
        """Raise `QualityGateFailed` (headline and summary) when a critical expectation failed."""
        if not self.ok:
            from quality.gate import QualityGateFailed  # the gate's one exception (quality.gate imports this module)

            n = len(self.critical_failures)
            raise QualityGateFailed(f"quality gate failed for snapshot {self.snapshot_date}"
                                    f" ({n} critical failure{'s' if n != 1 else ''})", self)

    def summary(self, max_lines: int = 18) -> str:
        """One screen, Chinese and English: the verdict, the counts and the failed expectations."""
        d = self.as_dict()["counts"]
        verdict = "通过 PASSED — may publish" if self.ok else "未通过 BLOCKED — snapshot not published"
        lines = [f"质量门禁 Quality gate · 快照 snapshot {self.snapshot_date} · {verdict}",
                 f"{d['suites']} 套件 suites, {d['expectations']} 项期望 expectations; "
                 f"严重失败 critical failures: {d['critical_failures']}, 警告 warnings: {d['warnings']}; "
                 f"{self.seconds:.1f} s"]
        if self.missing:
            lines.append(f"缺少数据 missing clean tables: {', '.join(self.missing)}")
        carried = [s.subject for s in self.suites if s.carried_from is not None]
        if carried:
            lines.append(f"未变数据沿用校验结果 unchanged feeds, results carried over ({len(carried)}): {', '.join(carried)}")
        fails = sorted(self.failures, key=lambda f: (not f.critical, f.suite, f.field or ""))
        for f in fails[:max_lines]:
            tag = "✗ 严重 critical" if f.critical else "! 警告 warning "
            parts = [tag, f.suite, f.field or "-", f"{CHECK_ZH.get(f.check, f.check)} {f.check}"]
            if f.unexpected_count is not None:
                parts.append(f"{f.unexpected_count}/{f.element_count} 行 rows")
            if f.examples:
                parts.append(f"例 e.g. {f.examples[0]}" + (f" (+{len(f.examples) - 1})" if len(f.examples) > 1 else ""))
            if f.message:
                parts.append(f.message[:90])
            lines.append(" · ".join(parts))
        if len(fails) > max_lines:
            lines.append(f"… 另有 {len(fails) - max_lines} 项 and {len(fails) - max_lines} more (see report / Data Docs)")
        if not fails:
            lines.append("全部期望通过 every expectation passed")
        return "\n".join(lines)
