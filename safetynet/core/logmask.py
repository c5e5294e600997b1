"""The last line of defence for logs: mask anything shaped like a resident ID number.

Reasons and log lines are written never to carry a personal value, but a value can still slip
into a message (an exception quoting its input, a file named after a person, a header row that
was really data). `IdMaskFilter` masks every ID-shaped number in a log record — its message,
its args, string `extra` fields, its exception and stack text — whatever field it came from;
`mask_text` (`schemas.idno`) is the same masking for any text (quarantine reasons use it).

ID-shaped: 18 digits whose last character is the GB 11643 check character of the first 17
(`schemas.idno.check_char`; the last may be `X`/`x`), or any 15 digits (a legacy number has no
check character). Full-width digits count. A digit run longer than that is not an ID and is
left alone, as is an 18-digit number whose check character is wrong (a claim or account
number). Masked as `schemas.idno.mask` shows IDs: first 6 and last 4 kept.

Install it once logging is configured: `logmask.install()` adds the filter to every handler of
the root logger (a handler filter sees records propagated from every logger, which a logger
filter does not).
"""

from __future__ import annotations

import logging

from schemas.idno import mask_text

# attributes every LogRecord has; anything else on a record came from `extra=`
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class MaskedTraceback(Exception):
    """Stands in for a logged exception whose text held an ID-shaped number: its message is the
    whole traceback, masked (formatters that render `exc_info` themselves, like structlog's in
    Airflow's task logs, then show the masked text instead of the original)."""


class IdMaskFilter(logging.Filter):
    """Masks ID-shaped numbers in a record; never drops a record.

    The message is rendered (`msg % args`) and masked, and the args cleared, so the masking
    does not depend on how an argument formats (`%d` of an int ID, `%s` of a dict holding one).
    A structlog event (a dict message) keeps its shape, its values masked. An exception whose
    text holds an ID is replaced by a `MaskedTraceback` carrying the masked text (also set as
    `exc_text`, which stdlib formatters print as it is); other exceptions are left untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, dict) and not record.args:
            record.msg = {k: _mask_value(v) for k, v in record.msg.items()}
        else:
            try:
                msg = record.getMessage()
            except Exception:  # a broken format: let the handler report it as it would have
                msg = None
            if msg is not None:
                masked = mask_text(msg)
                if masked != msg or record.args:
                    record.msg, record.args = masked, None
        for k, v in list(record.__dict__.items()):
            if k not in _STANDARD and isinstance(v, str):
                setattr(record, k, mask_text(v))
        if record.exc_info and record.exc_info[0] is not None:
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            masked = mask_text(text)
            if masked != text:
                record.exc_text = masked
                record.exc_info = (MaskedTraceback, MaskedTraceback(masked), None)
        elif record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True


def _mask_value(v: object) -> object:
    if isinstance(v, str):
        return mask_text(v)
    if isinstance(v, (int, float, bool)) or v is None:
        return mask_text(str(v)) if isinstance(v, int) and mask_text(str(v)) != str(v) else v
    text = repr(v)
    return v if mask_text(text) == text else mask_text(text)


def install(logger: logging.Logger | None = None) -> IdMaskFilter:
    """Add the filter to every handler of `logger` (default: the root logger) that lacks it.

    Call it after logging is configured (handlers added later are not covered); calling it again
    is harmless. Returns the filter.
    """
    logger = logger or logging.getLogger()
    f = next((x for h in logger.handlers for x in h.filters if isinstance(x, IdMaskFilter)), None) or IdMaskFilter()
    for h in logger.handlers:
        if not any(isinstance(x, IdMaskFilter) for x in h.filters):
            h.addFilter(f)
    return f
