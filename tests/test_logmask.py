"""The last-line log filter: ID-shaped numbers are masked in every part of a log record."""

from __future__ import annotations

import io
import json
import logging

import pytest

from safetynet.core.logmask import IdMaskFilter, install, mask_text
from schemas import idno

S17 = "43010319800101123"
ID = S17 + idno.check_char(S17)
NOT_ID = S17 + next(c for c in "0123456789X" if c != ID[17])  # 18 digits, wrong check character
OLD = "430103800101123"  # a legacy 15-digit number
X17 = next(s for s in (f"1101051949100{i:04d}" for i in range(1000)) if idno.check_char(s) == "X")
ID_X = X17 + "X"


@pytest.fixture
def logged():
    """A logger whose handler has the filter installed; returns (logger, function giving the output)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s|%(feed)s"))
    lg = logging.getLogger(f"test_logmask.{id(stream)}")
    lg.propagate = False
    lg.addHandler(handler)
    lg.setLevel(logging.INFO)
    install(lg)
    yield lg, stream.getvalue
    lg.removeHandler(handler)


def test_mask_text():
    assert mask_text(f"id {ID}, old {OLD}.") == f"id {idno.mask(ID)}, old {idno.mask(OLD)}."
    assert mask_text(f"x={ID_X.lower()};") == f"x={idno.mask(ID_X.lower())};"
    assert mask_text(f"claim {NOT_ID} ok") == f"claim {NOT_ID} ok"  # wrong check character: not an ID
    fw = ID[:6].translate(str.maketrans("0123456789", "０１２３４５６７８９")) + ID[6:]
    assert mask_text(fw) == idno.mask(fw) and mask_text(fw) != fw  # full-width digits
    assert mask_text(f"ID{ID}号") == f"ID{idno.mask(ID)}号"  # letters around it do not hide it
    for longer in ("9" + ID, ID + "9", "1234567890123456", "12345678901234567890"):
        assert mask_text(longer) == longer  # inside a longer run of digits it is not an ID
    assert mask_text(mask_text(ID)) == mask_text(ID) == "430103********" + ID[-4:]


def test_filter_masks_message_args_and_extra(logged):
    lg, out = logged
    lg.info("person %s in %s", ID, {"members": [OLD]}, extra={"feed": f"file claims_{ID_X}.csv"})
    lg.warning(f"inline {ID} and %d", int(OLD), extra={"feed": "x"})
    lg.info("no id: claim %s", NOT_ID, extra={"feed": "y"})
    text = out()
    for v in (ID, OLD, ID_X):
        assert v not in text
    assert idno.mask(ID) in text and idno.mask(OLD) in text and idno.mask(ID_X) in text
    assert NOT_ID in text


def test_filter_masks_exception_text(logged):
    lg, out = logged
    try:
        raise ValueError(f"bad id_no {ID} (legacy {OLD})")
    except ValueError:
        lg.exception("failed for %s", ID, extra={"feed": "z"})
    text = out()
    assert "Traceback" in text and "ValueError: bad id_no" in text
    assert ID not in text and OLD not in text and idno.mask(ID) in text


def test_an_exception_rendered_from_exc_info_is_masked_too():
    """A formatter that renders `exc_info` itself (structlog's, in Airflow task logs) sees the
    masked stand-in; an exception without an ID is left as it was."""
    f = IdMaskFilter()
    for text, masked in ((f"bad id_no {ID}", True), ("no personal value", False)):
        try:
            raise KeyError(text)
        except KeyError:
            import sys

            rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
        f.filter(rec)
        rendered = logging.Formatter().formatException(rec.exc_info)
        assert ID not in rendered and (idno.mask(ID) in rendered) == masked
        assert (rec.exc_info[0] is KeyError) == (not masked)
        assert "KeyError" in rendered and "Traceback" in rendered


def test_a_structlog_event_keeps_its_shape():
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, {"event": f"person {ID}", "n": int(OLD), "k": 3}, None,
                            None)
    IdMaskFilter().filter(rec)
    assert rec.msg == {"event": f"person {idno.mask(ID)}", "n": idno.mask(OLD), "k": 3}


def test_install_adds_the_filter_once_to_every_root_handler():
    root = logging.getLogger()
    handlers = [logging.StreamHandler(io.StringIO()), logging.StreamHandler(io.StringIO())]
    for h in handlers:
        root.addHandler(h)
    try:
        f = install()
        assert install() is f
        for h in handlers:
            assert sum(isinstance(x, IdMaskFilter) for x in h.filters) == 1
        logging.getLogger("safetynet.some.module").warning("id %s", ID)  # propagated to the root
        for h in handlers:
            assert ID not in h.stream.getvalue() and idno.mask(ID) in h.stream.getvalue()
    finally:
        for h in handlers:
            root.removeHandler(h)


def test_a_record_without_an_id_is_left_as_it_was():
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "count %d of %s", (3, "files"), None)
    assert IdMaskFilter().filter(rec) and rec.getMessage() == "count 3 of files"
    j = logging.LogRecord("x", logging.INFO, __file__, 1, json.dumps({"n": 1}), None, None)
    assert IdMaskFilter().filter(j) and j.getMessage() == '{"n": 1}'
