"""Policy parameters: assistance standards and warning thresholds per region and year.

One TOML file per county and year under `quality/policy/` (`<region>-<year>.toml`), validated on
load; every warning records the `version` of the file it used. A region without a file is a
clear error, and so is a file without one of the parameters — thresholds are never guessed. The
defaults below are only what `safetynet policy init` writes into a new file; each parameter's
description is the comment beside it there and in the shipped files (`render`), one text for both.
"""

from __future__ import annotations

import hashlib
import textwrap
import tomllib
from pathlib import Path

from pydantic import ValidationError

from schemas.policy import (  # noqa: F401  (the model, re-exported for callers of quality.policy)
    OPTIONAL,
    SECTIONS,
    Diagnoses,
    Header,
    Policy,
    PolicyError,
    Standards,
    Thresholds,
    missing,
)

POLICY_DIR = Path(__file__).resolve().parent / "policy"


def load(path: str | Path) -> Policy:
    """Load and validate one policy file: every parameter present and valid (all problems at once)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"policy file {p} does not exist") from None
    except IsADirectoryError:
        raise PolicyError(f"policy file {p} is a directory") from None
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PolicyError(f"policy file {p}: not valid UTF-8 TOML: {e}") from None
    gaps = missing(raw)
    problems = [f"{g}: missing" + (" section" if g.startswith("[") else
                                    f" (`safetynet policy init` writes {_default(g)})" if _default(g) else "")
                for g in gaps]
    try:
        pol = Policy.model_validate({**raw, "checksum": hashlib.sha256(data).hexdigest()[:16]})
    except ValidationError as e:
        told = set(gaps) | {g.strip("[]") for g in gaps}
        problems += [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()
                     if not (err["type"] == "missing" and ".".join(str(x) for x in err["loc"]) in told)]
    if problems:
        raise PolicyError(f"policy file {p} is invalid: {'; '.join(problems)}")
    return pol


def _default(key: str) -> str:
    """The value `policy init` would write for `section.name`, as TOML ("" if it has none)."""
    sec, _, name = key.partition(".")
    f = SECTIONS[sec].model_fields.get(name)
    if f is None or f.is_required() or (sec, name) in OPTIONAL:
        return ""
    return f"{name} = {_toml(f.default)}"


def for_region(region_code: str, year: int, directory: Path = POLICY_DIR) -> Policy:
    """The policy of the county holding `region_code` (6 or 12 digits) for `year`."""
    county = region_code[:6]
    path = directory / f"{county}-{year}.toml"
    if not path.exists():
        have = sorted(x.stem for x in directory.glob("*.toml"))
        raise PolicyError(f"no policy parameters for region {county} and year {year}: expected {path} "
                          f"(have: {', '.join(have) or 'none'}); create one with "
                          f"`safetynet policy init --region {county} --year {year} ...`")
    pol = load(path)
    if pol.policy.region_code != county or pol.policy.year != year:
        raise PolicyError(f"{path} declares region {pol.policy.region_code} year {pol.policy.year}, "
                          f"not {county} {year}")
    return pol


def check_county(pol: Policy, county: str) -> None:
    """A policy applies to its own county's data only: raise before anything is built on another's."""
    if pol.policy.region_code != county[:6]:
        raise PolicyError(f"policy {pol.policy.region_code} does not match data of {county[:6]} (the store's "
                          f"person register): give that county's policy file, e.g. `safetynet policy show "
                          f"--region {county[:6]} --year {pol.policy.year}`")


def _toml(v: object) -> str:
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


#: where a parameter's explanation starts on its line, and how long a line may grow
_COMMENT_AT, _WIDTH = 42, 118


def render(values: dict, title: list[str]) -> str:
    """A policy file: `title` as leading comments, then every section and parameter of `values`
    (section → name → value) in the models' order, each explained by its description. The shipped
    files and `policy init` are both written by this, so they carry the same explanations."""
    lines = [f"# {t}" for t in title]
    for sec, model in SECTIONS.items():
        lines += ["", f"[{sec}]"]
        for name, f in model.model_fields.items():
            if name not in values.get(sec, {}):
                continue
            assignment = f"{name} = {_toml(values[sec][name])}"
            w = _display_width(assignment)
            if not f.description:
                lines.append(assignment)
            elif w <= _COMMENT_AT - 2:  # the explanation beside it, continued under itself
                parts = textwrap.wrap(f.description, _WIDTH - _COMMENT_AT - 2)
                lines.append(assignment + " " * (_COMMENT_AT - w) + f"# {parts[0]}")
                lines += [" " * _COMMENT_AT + f"# {x}" for x in parts[1:]]
            else:  # a long value: the explanation above it
                lines += [f"# {x}" for x in textwrap.wrap(f.description, _WIDTH - 2)]
                lines.append(assignment)
    return "\n".join(lines) + "\n"


def _display_width(text: str) -> int:
    """Columns on a terminal or in an editor: CJK characters take two."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def init_text(region: str, year: int, urban_dibao: float, rural_dibao: float, region_name: str = "") -> str:
    """A complete policy file for a new region with the default thresholds (validated)."""
    defaults = {sec: {k: f.default for k, f in model.model_fields.items() if not f.is_required()}
                for sec, model in SECTIONS.items()}
    values = {
        "policy": {"region_code": region, "region_name": region_name or region, "year": year,
                   "version": f"{region}-{year}.1", "source": "safetynet policy init (default thresholds)"},
        "standards": {"urban_dibao": float(urban_dibao), "rural_dibao": float(rural_dibao), **defaults["standards"]},
        "diagnoses": defaults["diagnoses"],
        "thresholds": defaults["thresholds"],
    }
    text = render(values, [f"{region_name or region} {year} 年度救助标准与预警阈值 — written by `safetynet policy init`;",
                           "check every figure against the county's published standards before use.",
                           "One file per region and year. Amounts in yuan (元); monthly unless the name says otherwise."])
    raw = tomllib.loads(text)
    assert not missing(raw), missing(raw)
    Policy.model_validate(raw)  # never write a file that would not load
    return text
