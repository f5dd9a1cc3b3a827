"""The one vocabulary of attnbench: the status of a measured case and the verdicts of comparing
two measurements (compare) or a measurement with a baseline (the gate). Defined here once; every
other module imports these names instead of spelling the strings.
"""

from __future__ import annotations

# ------------------------------------------------------------------ statuses of one case
OK = "ok"  # measured; its output passed the error check
SKIPPED = "skipped"  # not run: unsupported here, no such device, or predicted not to fit
WRONG = "wrong"  # ran, but its output failed the error check (or broke a harness guard)
OOM = "oom"  # ran out of memory
ERROR = "error"  # raised an exception
TIMEOUT = "timeout"  # no result within case_timeout_s; its worker was killed
CRASHED = "crashed"  # its worker process died (segfault, abort, exit)
SUSPECT = "suspect"  # faster than the measured ceilings allow: the work cannot have been done

STATUSES = (OK, SKIPPED, WRONG, OOM, ERROR, TIMEOUT, CRASHED, SUSPECT)
FAILED_STATUSES = (WRONG, OOM, ERROR, TIMEOUT, CRASHED, SUSPECT)

# ------------------------------------------------------------------ verdicts
UNCHANGED = "unchanged"
IMPROVED = "improved"
INCONCLUSIVE = "inconclusive"  # too noisy (or too few samples) to judge: never fails a job
REGRESSED = "regressed"
REGRESSED_MEMORY = "regressed (memory)"
REGRESSED_ERROR = "regressed (error)"  # an error check that passed before fails now
STATUS_CHANGED = "status changed"
NEW = "new"  # only in the current run / not in the baseline
MISSING = "missing"  # only in the base run

# the gate's bookkeeping verdicts
NOT_CONFIRMED = "not confirmed"  # the re-measurement was within the threshold
NO_BASELINE = "no baseline"
REFERENCE = "reference"  # the implementation every ratio is taken against
NOT_TIMED = "not timed"

COMPARE_VERDICTS = (REGRESSED, REGRESSED_MEMORY, REGRESSED_ERROR, STATUS_CHANGED, INCONCLUSIVE,
                    IMPROVED, UNCHANGED, NEW, MISSING)
REGRESSION_VERDICTS = (REGRESSED, REGRESSED_MEMORY, REGRESSED_ERROR)
