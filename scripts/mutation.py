"""`make mutation`: mutmut over the modules that decide what is stored and what is deleted.

The run happens in private copies of the working tree, one per module (other work can go on in
the checkout while it runs, and mutmut's `mutants/` directory never lands in the repo), each with
the fast tests written for that module (TESTS). The score, the scope and every surviving mutant are
written to docs/mutation.md, dated, with the commit the copies were taken from.

    python -m scripts.mutation                      # all five modules (hours on 2 cores)
    python -m scripts.mutation --only db/store.py   # a part, e.g. when time is short
    python -m scripts.mutation --keep               # keep the copies, to continue later
    python -m scripts.mutation --continue DIR       # a kept run: survivors again with today's
                                                    # tests/test_mutants_*.py, then what was not run
    python -m scripts.mutation --report-from DIR    # rewrite the report from a kept run

Mutants known to be equivalent (no behaviour can tell them from the original) are listed in
EQUIVALENT below with the reason; the report counts them apart and gives the score both ways.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "mutation.md"

MODULES = [
    "worker/loop.py",
    "db/store.py",
    "chalicelib/queues/local.py",
    "chalicelib/codec.py",
    "chalicelib/ingest.py",
]

# Each module is judged by the fast tests written for it (in its own copy of the tree: mutmut keeps
# one set of tests per run, and any change of that set throws away every verdict so far). Left out:
# `slow` crash/fault runs, the browser, PostgreSQL, the SQS (moto) variants, and end-to-end tests
# that reach a module only on their way elsewhere; with those, each surviving mutant ran about 80 s
# of tests here and a run did not fit in an afternoon. A mutant these tests miss is reported as a
# survivor even if a slower test would have caught it: the score is a lower bound.
TESTS: dict[str, list[str]] = {
    "chalicelib/codec.py": [
        "tests/test_codec.py",
        "tests/test_mutants_codec.py",
        "tests/test_endpoint.py",
        "tests/test_poison.py",
    ],
    "chalicelib/ingest.py": [
        "tests/test_endpoint.py",
        "tests/test_mutants_ingest.py",
        "tests/test_security.py",
    ],
    "chalicelib/queues/local.py": [
        "tests/test_queue_contract.py",
        "tests/test_mutants_delete.py",
        "tests/test_mutants_hang.py",
        "tests/test_worker.py",
    ],
    "db/store.py": [
        "tests/test_store_contract.py",
        "tests/test_idempotence.py",
        "tests/test_mutants_store.py",
        "tests/test_mutants_delete.py",
        "tests/test_worker.py",
    ],
    "worker/loop.py": [
        "tests/test_worker.py",
        "tests/test_invariant_worker.py",
        "tests/test_poison.py",
        "tests/test_mutants_loop.py",
        "tests/test_mutants_hang.py",
        "tests/test_mutants_delete.py",
    ],
}
# --timeout (pytest-timeout): the slowest of these tests takes about 5 s here; a mutant that makes the
# worker wait for ever on something fails its test after a minute instead of hanging the run (mutmut's
# own limit counts CPU time, and a waiting worker spends little). tests/conftest.py already fails at
# once a worker that logs the errors that mean it cannot drain.
PYTEST_ARGS = ["-m", "not slow", "-k", "not sqs and not postgres", "-p", "no:cacheprovider", "--timeout", "60"]

# Besides tests/test_mutants_*.py, what continuing a run takes from today's tests/ into a kept copy.
RECHECK_KIT = ["conftest.py", "kit.py", "faultkit.py", "invariants.py"]

# Everything else the tests import or read: copied into mutmut's tree, never mutated.
SOURCE_PATHS = ["chalicelib", "db", "worker", "commands", "app.py", "read_queue.py"]
ALSO_COPY = [
    "scripts",
    "bench",
    "docs",
    ".chalice",
    "sample-data.json",
    "datasette-metadata.json",
    "requirements.txt",
    "requirements-dev.txt",
    "requirements-explore.txt",
    "README.md",
    "Makefile",
]
SKIP_COPY = {".venv", ".git", "mutants", "data", ".hypothesis", ".pytest_cache", ".mypy_cache", ".ruff_cache"}

# mutant name -> why no test can kill it. Names are those of the run recorded in docs/mutation.md;
# when the code around one changes, its name can change too and it shows up as a survivor again.
_ZIP_LOOP = (
    "`strict=` of a zip over the messages and their parts: `_commit` takes exactly one message per part "
    "(`job.messages[job.done : job.done + len(parts)]`), so the lengths are always equal and strict never fires"
)
_ZIP_PACK = (
    "`strict=` of `zip([0, *cuts], [*cuts, len(dumped)])`: both lists are one longer than `cuts`, so the "
    "lengths are always equal and strict never fires"
)
_EMPTY_EXECUTEMANY = (
    "`if rows or True`: `executemany` over an empty list inserts nothing and its rowcount is 0 (sqlite3), "
    "so the counts are the same; only a statement is prepared for nothing"
)
_PARENT_EXISTS = (
    'the `else Path(".")` branch is never taken: `Store.open` calls `_why_unwritable` only after '
    "`chalicelib.sqlite.connect` created the file's directory (`os.makedirs`, whose failure raises before), "
    "so `path.parent` always exists there"
)
_DEFAULT_FULL = (
    "`synchronous=` left out of the store's connect: this SQLite (3.40) defaults to synchronous=FULL, in WAL "
    "mode too, so the setting is the same; on a build whose default differs, "
    "test_mutants_store.py's PRAGMA check fails"
)
_CODEC_NAME = "Python's codec names are case-insensitive: `UTF-8`/`ASCII` are the codecs `utf-8`/`ascii`"
_FAST_PATH_ONLY = (
    "only the fast path changes: `_fast_dump` returns orjson's bytes only when `_same_with_orjson` holds (worked "
    "out again when `same` is not passed), and then they equal `_std_json`'s; the bytes are the same, made slower"
)
_ZIP_DUMPED = "`strict=` of `zip(events, dumped)`: `dumped` is built one for one from `events`, so strict never fires"
_MARKER = "the float marker is `token_hex` of another length: still unguessable, and replaced again before output"
_LAST_CUT = (
    "cut k needs `acc >= k * target`; for k = parts that is the whole total, but `acc` sums all but the last "
    "event's JSON (at least 1 byte), so that cut is never made either way"
)
_STREAM_TEXT = (
    "the text of an error raised only inside the stream's own reading, always caught by `EventStream.__iter__`, "
    "which sets `unusual`; the text never leaves (`whole()` words the error afresh)"
)
_MORE_AGAIN = (
    "a wrong True at the end: the next call answers False at once (`if self._finished`), so the caller loops once more"
)
_IDLE_NONE = "`_idle = None`: `_idle` is read only as `if self._idle`, None as false"
_SAME_LITERAL = "`1e+16` is the same float literal as `1e16`"
_GZIP_LEVEL = (
    "another gzip level: the same bytes inflate from either, and `_pack` measures the message it made against "
    "both limits, so only a message's size and the time to make it differ (6 is the speed chosen)"
)
_AFTER_NUMBER = (
    "a number followed, at the window's end, by '.', 'e' or 'E' and two more characters, or by 'X', is no "
    "valid number's start: reading one piece more ends in the same error, and the stream in `whole()`"
)
_WINDOW = "the window takes one piece more before parsing: the same values are parsed, from a longer text"
_QUEUE_OPENS_FULL = (
    "the queue's connection opens with SQLite's default, FULL on this SQLite (3.40), which is what `_synchronous` "
    "records; every transaction then sets the level it needs when it differs (test_mutants_delete.py checks "
    "FULL after a send and NORMAL after a receive)"
)
_LOOK_ONLY = "a connection opened for looking only never commits: its synchronous level is never used"
_MD5_FOR_SECURITY = (
    "`usedforsecurity` matters only on a FIPS-restricted build (refusing md5 for security); the digest is the same"
)
EQUIVALENT: dict[str, str] = {
    "chalicelib.queues.local.xǁLocalQueueǁ__init____mutmut_7": _QUEUE_OPENS_FULL,
    "chalicelib.queues.local.xǁLocalQueueǁ__init____mutmut_14": _QUEUE_OPENS_FULL,
    "chalicelib.queues.local.xǁLocalQueueǁ__init____mutmut_19": _QUEUE_OPENS_FULL,
    "chalicelib.queues.local.xǁLocalQueueǁ__init____mutmut_22": _LOOK_ONLY,
    "chalicelib.queues.local.xǁLocalQueueǁ__init____mutmut_23": _LOOK_ONLY,
    "chalicelib.queues.local.xǁLocalQueueǁ_receive_once__mutmut_3": (
        "`<=`: once the receive holds `max_messages`, one more query runs with `LIMIT 0`, which returns no row"
    ),
    "chalicelib.queues.local.xǁLocalQueueǁ_receive_once__mutmut_33": (
        "`break` after moving a dead letter aside: the rest of that fetch is dropped and fetched again by the next "
        "query (the moved one is gone), so the same messages come out in the same order"
    ),
    "chalicelib.queues.local.xǁLocalQueueǁ_transaction__mutmut_14": (
        "`_synchronous = None` after setting a level: each later transaction sets its level again (None equals "
        "neither), the same level, one PRAGMA more"
    ),
    "chalicelib.queues.local.xǁLocalQueueǁsend_all__mutmut_18": _MD5_FOR_SECURITY,
    "chalicelib.queues.local.xǁLocalQueueǁsend_all__mutmut_20": _MD5_FOR_SECURITY,
    "chalicelib.queues.local.xǁLocalQueueǁsend_all__mutmut_24": _MD5_FOR_SECURITY,
    "chalicelib.queues.local.xǁLocalQueueǁsend_all__mutmut_23": _CODEC_NAME,
    "worker.loop.xǁObserverǁsampled__mutmut_1": (
        "the default of a `Protocol` method's stub: the stub never runs, and each observer defines its own"
    ),
    "worker.loop.xǁWorkerǁ_depth__mutmut_1": (
        "`fresh=True` as the default: `_depth`'s only caller, `_progress`, always passes `fresh=final`"
    ),
    "worker.loop.xǁWorkerǁ_depth__mutmut_10": (
        "`getattr(queue, 'backend', None)`: for a queue without `backend`, `DEPTH_INTERVAL_SECONDS.get(None, 1.0)` "
        "is 1.0, as `.get('', 1.0)` is"
    ),
    "worker.loop.xǁWorkerǁ_depth__mutmut_16": (
        "`'XXXX'` as the default backend is, like `''`, not a key of `DEPTH_INTERVAL_SECONDS`: 1.0 either way"
    ),
    "worker.loop.xǁWorkerǁ_sleep__mutmut_4": _IDLE_NONE,
    "worker.loop.xǁWorkerǁ__init____mutmut_20": _IDLE_NONE,
    "worker.loop.xǁWorkerǁ__init____mutmut_23": (
        "`_last_progress = 1.0`: the first sample waits until `now - _last_progress >= 1`; the clock is "
        "`time.monotonic` (seconds since boot), so 0.0 and 1.0 differ only while it reads under 2 s"
    ),
    "worker.loop.xǁWorkerǁ__init____mutmut_24": (
        "the first `_last_depth` is never returned: `_depth` returns it only once `_depth_at` is set, which it "
        "sets together with a fresh `_last_depth`"
    ),
    "worker.loop.xǁ_PerMessageǁlearn__mutmut_22": (
        "`max(body_bytes, 2)` differs only for bodies totalling 0 or 1 byte; such a body is never base64(gzip) and "
        "becomes a reject whose decoded bytes are its length (at most 1), so the ratio is at most 1 either way and "
        "`max(..., 1.0)` gives 1.0"
    ),
    "worker.loop.xǁWorkerǁ_collect__mutmut_1": (
        "the default of `hurry`: `_step`, its only caller in the product, always passes `hurry=`"
    ),
    "worker.loop.xǁWorkerǁ_collect__mutmut_31": _IDLE_NONE,
    "worker.loop.xǁWorkerǁ_start__mutmut_37": "`_Job(messages, None, ...)`: `_Job.now` is never read",
    "db.store.xǁStoreǁopen__mutmut_6": _DEFAULT_FULL,
    "db.store.xǁStoreǁopen__mutmut_10": _DEFAULT_FULL,
    "db.store.x__why_unwritable__mutmut_3": _PARENT_EXISTS,
    "db.store.x__why_unwritable__mutmut_4": _PARENT_EXISTS,
    "db.store.x__why_unwritable__mutmut_5": _PARENT_EXISTS,
    "db.store.xǁStoreǁ_insert__mutmut_4": _EMPTY_EXECUTEMANY,
    "db.store.xǁStoreǁ_insert__mutmut_12": _EMPTY_EXECUTEMANY,
    "db.store.xǁStoreǁ_insert__mutmut_24": _EMPTY_EXECUTEMANY,
    "worker.loop.xǁWorkerǁ_write_each__mutmut_4": _ZIP_LOOP,
    "worker.loop.xǁWorkerǁ_write_each__mutmut_7": _ZIP_LOOP,
    "worker.loop.xǁWorkerǁ_write_each__mutmut_8": _ZIP_LOOP,
    "chalicelib.codec.x__pack__mutmut_62": _ZIP_PACK,
    "chalicelib.codec.x__pack__mutmut_65": _ZIP_PACK,
    "chalicelib.codec.x__pack__mutmut_67": _ZIP_PACK,
    "chalicelib.codec.x__dump_for_queue__mutmut_13": _CODEC_NAME,
    "chalicelib.codec.x__inflated_text__mutmut_4": _CODEC_NAME,
    "chalicelib.codec.x__tune_form__mutmut_12": _CODEC_NAME,
    "chalicelib.codec.x_dump_event__mutmut_12": _CODEC_NAME,
    "chalicelib.codec.x__decode_canonical__mutmut_38": _CODEC_NAME,
    "chalicelib.ingest.x_check_token__mutmut_34": _CODEC_NAME,
    "chalicelib.ingest.x_check_token__mutmut_37": _CODEC_NAME,
    "chalicelib.codec.x__dump_for_queue__mutmut_15": _FAST_PATH_ONLY,
    "chalicelib.codec.x__dump_for_queue__mutmut_17": _FAST_PATH_ONLY,
    "chalicelib.codec.x_dump_event__mutmut_1": _FAST_PATH_ONLY,
    "chalicelib.codec.x_dump_event__mutmut_2": _FAST_PATH_ONLY,
    "chalicelib.codec.x_dump_event__mutmut_3": _FAST_PATH_ONLY,
    "chalicelib.codec.x_dump_event__mutmut_4": _FAST_PATH_ONLY,
    "chalicelib.codec.x_dump_event__mutmut_5": _FAST_PATH_ONLY,
    "chalicelib.codec.x_dump_event__mutmut_6": _FAST_PATH_ONLY,
    "chalicelib.codec.x__decode_canonical__mutmut_34": _FAST_PATH_ONLY,
    "chalicelib.codec.x__decode_canonical__mutmut_43": _ZIP_DUMPED,
    "chalicelib.codec.x__decode_canonical__mutmut_46": _ZIP_DUMPED,
    "chalicelib.codec.x__decode_canonical__mutmut_47": _ZIP_DUMPED,
    "chalicelib.codec.x__json_keeping_float_text__mutmut_2": _MARKER,
    "chalicelib.codec.x__json_keeping_float_text__mutmut_3": _MARKER,
    "chalicelib.codec.x__pack__mutmut_49": _LAST_CUT,
    "chalicelib.codec.x__pack__mutmut_50": _LAST_CUT,
    "chalicelib.codec.x__unusual__mutmut_1": _STREAM_TEXT,
    "chalicelib.codec.x__unusual__mutmut_2": _STREAM_TEXT,
    "chalicelib.codec.x__unusual__mutmut_3": _STREAM_TEXT,
    "chalicelib.codec.x__inflated_text__mutmut_22": _STREAM_TEXT,
    "chalicelib.codec.x__inflated_text__mutmut_23": _STREAM_TEXT,
    "chalicelib.codec.x__inflated_text__mutmut_24": _STREAM_TEXT,
    "chalicelib.codec.x__inflated_text__mutmut_31": _STREAM_TEXT,
    "chalicelib.codec.x__inflated_text__mutmut_32": _STREAM_TEXT,
    "chalicelib.codec.x__inflated_text__mutmut_33": _STREAM_TEXT,
    "chalicelib.codec.x__inflated_text__mutmut_34": _STREAM_TEXT,
    "chalicelib.codec.xǁEventStreamǁ_more__mutmut_26": _MORE_AGAIN,
    "chalicelib.codec.xǁEventStreamǁ_more__mutmut_28": _MORE_AGAIN,
    "chalicelib.codec.x__scan__mutmut_23": _SAME_LITERAL,
    "chalicelib.codec.x__same_with_orjson__mutmut_18": _SAME_LITERAL,
    "chalicelib.codec.x__fast_dump__mutmut_3": _FAST_PATH_ONLY,
    "chalicelib.codec.x__fast_dump__mutmut_4": _FAST_PATH_ONLY,
    "chalicelib.codec.x__fast_dump__mutmut_5": (
        "`type(event) is not dict`: a dict takes the standard library's path (the same bytes, slower), and any "
        "other JSON value goes to orjson only when `_same_with_orjson` holds for it, which it answers for any "
        "JSON value, so the bytes are json's either way"
    ),
    "chalicelib.codec.x__fast_dump__mutmut_6": _FAST_PATH_ONLY,
    "chalicelib.codec.x__fast_dump__mutmut_7": _FAST_PATH_ONLY,
    "chalicelib.codec.x_dump_event_text__mutmut_1": _FAST_PATH_ONLY,
    "chalicelib.codec.x_dump_event_text__mutmut_2": _FAST_PATH_ONLY,
    "chalicelib.codec.x_dump_event_text__mutmut_3": _FAST_PATH_ONLY,
    "chalicelib.codec.x_dump_event_text__mutmut_7": _CODEC_NAME,
    "chalicelib.codec.x__strip_transport__mutmut_9": _CODEC_NAME,
    "chalicelib.codec.x__strip_transport__mutmut_31": _CODEC_NAME,
    "chalicelib.codec.x__utf8_text__mutmut_3": _CODEC_NAME,
    "chalicelib.codec.x__strip_transport__mutmut_39": (
        "'X' added to the characters that may start a JSON scalar: a text starting with X is never JSON, so "
        "`json.loads` fails and the body goes on to base64, as it did"
    ),
    "chalicelib.codec.x__tune_form__mutmut_7": _GZIP_LEVEL,
    "chalicelib.codec.x__tune_form__mutmut_9": _GZIP_LEVEL,
    "chalicelib.codec.x__unbase64__mutmut_9": (
        "padding of `len % 4` instead of `-len % 4` differs only for a length of 3 mod 4 (`===` instead of `=`); "
        "the strict decoder refuses that, and the lenient URL-safe one tried next ignores the excess padding, "
        "giving the same bytes (a length of 1 mod 4 is invalid base64 either way)"
    ),
    "chalicelib.codec.x_read_body__mutmut_14": (
        "one byte more read into the head: `len(head) > STREAM_MIN_BYTES` decides the same for every document, "
        "and `_inflated_text` goes on from where the head ended, so the text is the same"
    ),
    "chalicelib.codec.x_read_body__mutmut_29": (
        "`payload` is passed to `_inflated_text` only to be let go there (`del`); the inflater keeps what it "
        "still needs (`unconsumed_tail`)"
    ),
    "chalicelib.codec.x_read_body__mutmut_41": (
        "`>=`: a complete head of exactly `max_bytes` makes `inflate` run only to raise, and it raises nothing "
        "for that input, so the same head is read"
    ),
    "chalicelib.codec.xǁEventStreamǁ_fields__mutmut_1": "`found = None`: read only as a truth value, None as false",
    "chalicelib.codec.xǁEventStreamǁ_may_go_on__mutmut_9": _AFTER_NUMBER,
    "chalicelib.codec.xǁEventStreamǁ_may_go_on__mutmut_11": _AFTER_NUMBER,
    "chalicelib.codec.xǁEventStreamǁ_more__mutmut_4": _WINDOW,
    "chalicelib.codec.xǁEventStreamǁ_more__mutmut_9": _WINDOW,
    "chalicelib.codec.x__inflated_text__mutmut_20": (
        "differs only when a call inflates nothing yet reaches the end after one that stopped with input left; "
        "zlib stops early only when its output is full, and what follows the last output byte (end of block, "
        "trailer) needs no output space, so that call already reached the end. The test over piece ends "
        "(test_mutants_codec.py) finds no difference"
    ),
    "chalicelib.codec.x__scan__mutmut_30": (
        "a field of the `_Scanned` returned when too deep: callers read only `.too_deep` then"
    ),
    "chalicelib.codec.x__scan__mutmut_32": (
        "a field of the `_Scanned` returned when too deep: callers read only `.too_deep` then"
    ),
    "chalicelib.codec.x__std_json__mutmut_3": "json tests `ensure_ascii` for truth only: None is as false as False",
    "chalicelib.codec.x__skip_whitespace__mutmut_7": (
        "`[ \\t\\n\\r]*` matches the empty string, so `match` is never None"
    ),
    "chalicelib.codec.x__inflated_text__mutmut_21": (
        "differs only when the input ran out early (a truncated gzip): the original raises one call later, "
        "and the stream cannot finish without that call, so both end `unusual`"
    ),
    "chalicelib.codec.xǁEventStreamǁ__init____mutmut_4": (
        'the first `_peek` sets `_at = _skip_whitespace("", 1)`, which is 0: match positions are clipped to the text'
    ),
    "chalicelib.codec.xǁEventStreamǁ__iter____mutmut_4": (
        "the window text left after iteration is never parsed again: a second iteration yields nothing and "
        "sets `unusual` either way"
    ),
    "chalicelib.codec.xǁEventStreamǁ_more__mutmut_27": (
        "`_peek` returns the window's next character whatever `_more` answers; only a bare scalar document "
        "needs its last character, and that document is `unusual` anyway"
    ),
    "chalicelib.codec.xǁEventStreamǁwhole__mutmut_6": (
        "the check pass uses `_unique_keys` instead of `_drop_checked`: the same checks and errors, its "
        "result is thrown away"
    ),
    "chalicelib.ingest.x_check_token__mutmut_42": _CODEC_NAME,
    "chalicelib.ingest.x__content_type__mutmut_6": "`.split(';')[0]` is the same first piece as `.split(';', 1)[0]`",
    "chalicelib.ingest.x__content_type__mutmut_15": (
        "`.split(';', 2)[0]` is the same first piece as `.split(';', 1)[0]`"
    ),
    "chalicelib.queues.local.xǁLocalQueueǁredrive__mutmut_10": (
        "`LIMIT -2` is as unlimited as `LIMIT -1`: SQLite treats any negative LIMIT as no limit"
    ),
}

# Whole families, judged by rule rather than by name (each rule says why).
# A string that is SQL (not an error message that happens to be upper-cased, nor Python's `from None`).
_SQL_TEXT = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|FROM|WHERE)\b", re.IGNORECASE)
# Functions mutmut 3 cannot switch a mutant on in: it activates a mutant per call, in a process
# forked after the modules were imported, and these run only once, at import.
IMPORT_TIME = {"db.store.x__insert": "builds the INSERT statements once, at import (`INSERT_EVENTS = _insert(...)`)"}


def judged(name: str, diff: str) -> str | None:
    """Why a surviving mutant cannot be told apart from the original, or None."""
    if name in EQUIVALENT:
        return EQUIVALENT[name]
    base = name.rpartition("__mutmut_")[0]
    if base in IMPORT_TIME:
        return (
            f"never active under mutmut: the function {IMPORT_TIME[base]}; applied by hand (`'XX, XX'.join(columns)`), "
            "test_store_contract.py fails at once"
        )
    removed = [t[1:] for t in diff.splitlines() if t.startswith("-") and not t.startswith("---")]
    added = [t[1:] for t in diff.splitlines() if t.startswith("+") and not t.startswith("+++")]
    if (
        removed
        and [t.lower() for t in removed] == [t.lower() for t in added]
        and not any("'" in t for t in removed)
        and all(_SQL_TEXT.search(a) for r, a in zip(_strings(removed), _strings(added), strict=True) if r != a)
    ):
        return "SQL keywords and identifiers are case-insensitive in SQLite: the statement is the same"
    return None


def _strings(lines: list[str]) -> list[str]:
    """The double-quoted string literals of the lines, in order (what a case mutant changes)."""
    return [literal for line in lines for literal in re.findall(r'"(?:[^"\\]|\\.)*"', line)]


KILLED = {1, 3}
TIMEOUT = {36, -24, 24, 152, 255}
SURVIVED = {0}
NO_TESTS = {5, 33}


@dataclass
class Mutant:
    name: str
    module: str
    code: int | None
    line: int
    diff: str

    @property
    def why(self) -> str | None:
        return judged(self.name, self.diff)

    @property
    def status(self) -> str:
        if self.code in KILLED:
            return "killed"
        if self.code in TIMEOUT:
            return "timeout"
        if self.code in SURVIVED:
            return "equivalent" if self.why else "survived"
        if self.code in NO_TESTS:  # e.g. a Protocol's stub, which never runs
            return "equivalent" if self.why else "no tests"
        if self.code is None:
            return "not checked"
        return f"other ({self.code})"


def new_run() -> tuple[Path, str]:
    """A run's directory (one copy of the tree per module goes in it) and what it was taken from."""
    run = Path(tempfile.mkdtemp(prefix="mutation."))
    head = _git("log", "-1", "--format=%h")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    origin = f"{head} with uncommitted changes of {stamp}" if dirty else f"{head} (clean) at {stamp}"
    (run / ".mutation-origin").write_text(origin)
    return run, origin


def copy_of(run: Path, module: str) -> Path:
    return run / module.removesuffix(".py").replace("/", "-")


def snapshot(work: Path) -> None:
    """A copy of the working tree as it is now, with the venv linked."""
    work.mkdir()
    for item in ROOT.iterdir():
        if item.name in SKIP_COPY:
            continue
        if item.is_dir():
            shutil.copytree(item, work / item.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(item, work / item.name)
    (work / ".venv").symlink_to(ROOT / ".venv")


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def configure(work: Path, module: str) -> None:
    """mutmut 3 reads [tool.mutmut] from pyproject.toml; only the copy's gets it."""
    conf = {
        "source_paths": SOURCE_PATHS,
        "only_mutate": [module],
        "also_copy": ALSO_COPY,
        "pytest_add_cli_args": PYTEST_ARGS,
        "pytest_add_cli_args_test_selection": TESTS[module],
        "use_git_change_detection": False,
    }
    lines = ["", "[tool.mutmut]"] + [f"{key} = {json.dumps(value)}" for key, value in conf.items()]
    text = (work / "pyproject.toml").read_text()
    text = text.split("\n[tool.mutmut]\n")[0].rstrip("\n")
    (work / "pyproject.toml").write_text(text + "\n" + "\n".join(lines) + "\n")


def run_mutmut(work: Path, max_children: int, names: list[str] | None = None) -> None:
    """`mutmut run` in a module's copy; its runtime is added up in the copy's `.runtime`."""
    started = dt.datetime.now(dt.UTC)
    runs = len(list(work.glob("mutmut-*.log")))
    with open(work / f"mutmut-{runs + 1}.log", "w") as out:
        subprocess.run(
            [str(work / ".venv" / "bin" / "mutmut"), "run", "--max-children", str(max_children), *(names or [])],
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    record = work / ".runtime"
    before = float(record.read_text().split()[0]) if record.exists() else 0.0
    seconds = before + (dt.datetime.now(dt.UTC) - started).total_seconds()
    record.write_text(f"{seconds} {max_children} {runs + 1}")


# The codec and ingest first (their mutants are judged by unit tests in a second or two), then the
# loop and the store, which decide what is stored and deleted, then the local queue.
ORDER = ["chalicelib/codec.py", "chalicelib/ingest.py", "worker/loop.py", "db/store.py", "chalicelib/queues/local.py"]


def refresh_tests(work: Path) -> None:
    """Today's tests/test_mutants_*.py and the shared kit they lean on into a module's copy (never
    the code under test)."""
    for test in [*(ROOT / "tests").glob("test_mutants_*.py"), *(ROOT / "tests" / name for name in RECHECK_KIT)]:
        for where in (work / "tests", work / "mutants" / "tests"):
            if where.exists():
                shutil.copy2(test, where / test.name)


def run_modules(run: Path, modules: list[str], max_children: int) -> None:
    """Module by module, in ORDER: a module not started yet gets its copy and a whole run; one
    started before (a stopped or finished run, continued) gets today's tests/test_mutants_*.py and
    runs again every mutant not yet killed (survived, reached by no test, or never run)."""
    for module in sorted(modules, key=ORDER.index):
        work = copy_of(run, module)
        if not work.exists():
            snapshot(work)
            configure(work, module)
            run_mutmut(work, max_children, [module.removesuffix(".py").replace("/", ".") + ".*"])
            continue
        refresh_tests(work)
        # Neither killed nor argued equivalent (no test can kill those; each would cost a full run).
        names = [m.name for m in collect(run, [module]) if m.code not in KILLED | TIMEOUT and m.status != "equivalent"]
        if names:
            run_mutmut(work, max_children, names)


def collect(run: Path, modules: list[str]) -> list[Mutant]:
    """Read mutmut's results from each module's copy, with each mutant's line in the original file
    and, for those not killed, the mutation."""
    found: list[Mutant] = []
    for module in modules:
        work = copy_of(run, module)
        meta_path = work / "mutants" / (module + ".meta")
        if not meta_path.exists():
            continue
        codes: dict[str, int | None] = json.loads(meta_path.read_text())["exit_code_by_key"]
        source = (work / module).read_text()
        starts = _function_starts(source)
        diffs = _diffs(work, [name for name, code in codes.items() if code not in KILLED])
        for name, code in sorted(codes.items(), key=lambda kv: _sort_key(kv[0])):
            diff = diffs.get(name, "")
            found.append(Mutant(name, module, code, _line_of(name, diff, starts), diff))
    return found


def _sort_key(name: str) -> tuple[str, int]:
    base, _, number = name.rpartition("__mutmut_")
    return base, int(number) if number.isdigit() else 0


def _function_starts(source: str) -> dict[str, int]:
    """`Class.method` / `function` -> line of its `def` (decorators excluded), as mutmut names them."""
    starts: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                starts[prefix + child.name] = child.lineno

    visit(ast.parse(source), "")
    return starts


def _function_of(name: str) -> str:
    """`db.store.xǁWriteStatsǁadd__mutmut_3` -> `WriteStats.add`; `...x__insert__mutmut_1` -> `_insert`."""
    base = name.rpartition("__mutmut_")[0].rpartition(".")[2]
    if base.startswith("xǁ"):
        return ".".join(base[2:].split("ǁ"))
    return base[2:] if base.startswith("x_") else base


def _line_of(name: str, diff: str, starts: dict[str, int]) -> int:
    """The first changed line: the function's `def` line plus the offset of the first `-` in the diff."""
    start = starts.get(_function_of(name), 0)
    if not diff or not start:
        return start
    old = 0
    for text in diff.splitlines():
        hunk = re.match(r"@@ -(\d+)", text)
        if hunk:
            old = int(hunk.group(1))
            continue
        if text.startswith(("---", "+++")):
            continue
        if text.startswith("-"):
            return start + old - 1
        if text.startswith(" "):
            old += 1
    return start


def _diffs(work: Path, names: list[str]) -> dict[str, str]:
    """mutmut's own diff per mutant, computed inside the copy (mutmut reads its config from the cwd)."""
    if not names:
        return {}
    program = (
        "import json, sys\n"
        "from mutmut.mutation.diff_apply import get_diff_for_mutant\n"
        "out = {}\n"
        "for n in json.load(sys.stdin):\n"
        "    try:\n"
        "        out[n] = get_diff_for_mutant(n)\n"
        "    except Exception as e:\n"
        "        out[n] = f'(no diff: {e!r})'\n"
        "print('MUTATION-DIFFS ' + json.dumps(out))\n"
    )
    done = subprocess.run(
        [str(work / ".venv" / "bin" / "python"), "-c", program],
        cwd=work,
        input=json.dumps(names),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return {name: f"(no diff: {done.stderr.strip()[-300:]})" for name in names}
    # mutmut may print on the way (it says what it copies): the answer is the marked line.
    marked = [t for t in done.stdout.splitlines() if t.startswith("MUTATION-DIFFS ")]
    if not marked:
        return {name: f"(no diff: {done.stdout.strip()[-300:]})" for name in names}
    result: dict[str, str] = json.loads(marked[-1].removeprefix("MUTATION-DIFFS "))
    return result


def _changed(diff: str) -> str:
    """The mutation in one line or two: the removed and the added lines of the diff."""
    keep = [t for t in diff.splitlines() if t[:1] in "-+" and not t.startswith(("---", "+++"))]
    return "\n".join(keep) if keep else diff


def report(mutants: list[Mutant], origin: str, modules: list[str], notes: list[str]) -> str:
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    out = [
        "# Mutation score",
        "",
        f"Measured {today} with mutmut {_mutmut_version()} by `make mutation` (`python -m scripts.mutation`),",
        f"on a copy of the working tree at commit {origin}.",
        "",
        "Scope: mutants of " + ", ".join(f"`{m}`" for m in modules) + ", each judged by its own fast tests",
        f"(`{' '.join(PYTEST_ARGS)}`: local queue only; each mutant runs those of them that reach the mutated",
        "function). A mutant only a slower test would catch counts as a survivor: the score is a lower bound.",
        "",
        *[f"- `{m}`: " + ", ".join(f"`{t.removeprefix('tests/')}`" for t in TESTS[m]) for m in modules],
        "",
        "Score = killed (a test failed or timed out) / all mutants of the module. Equivalent mutants",
        "(argued below) count as not killed in the first score and are left out of the second.",
        "",
        "| module | mutants | killed | timeout | survived | equivalent | no tests | not run | score "
        "| score w/o equivalents | score of those run, w/o equivalents |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for module in [*modules, "total"]:
        part = [m for m in mutants if module in ("total", m.module)]
        if not part:
            out.append(f"| {module} | not run |  |  |  |  |  |  |  |  |  |")
            continue
        count = {s: sum(1 for m in part if m.status == s) for s in ("killed", "timeout", "survived", "equivalent")}
        no_tests = sum(1 for m in part if m.status == "no tests")
        not_run = len(part) - sum(count.values()) - no_tests
        dead = count["killed"] + count["timeout"]
        score = 100 * dead / len(part)
        rest = len(part) - count["equivalent"]
        score2 = 100 * dead / rest if rest else 100.0
        tried = len(part) - not_run - count["equivalent"]
        score3 = f"{100 * dead / tried:.1f}%" if tried else "-"
        name = "**total**" if module == "total" else f"`{module}`"
        out.append(
            f"| {name} | {len(part)} | {count['killed']} | {count['timeout']} | {count['survived']} "
            f"| {count['equivalent']} | {no_tests} | {not_run} | {score:.1f}% | {score2:.1f}% | {score3} |"
        )
    for note in notes:
        out += ["", note]
    for title, wanted in (("Surviving mutants", "survived"), ("Reached by no selected test", "no tests")):
        part = [m for m in mutants if m.status == wanted]
        out += ["", f"## {title} ({len(part)})", ""]
        if wanted == "survived":
            text = sum(1 for m in part if _text_only(m.diff))
            out += [f"Of these, {text} change only the text of a string (`XX` around it, or its case).", ""]
        for m in part:
            out += [f"- `{m.module}:{m.line}` `{m.name}`", "  ```diff", _indent(_changed(m.diff)), "  ```"]
    part = [m for m in mutants if m.status == "equivalent"]
    out += ["", f"## Equivalent mutants ({len(part)})", ""]
    for m in part:
        out += [f"- `{m.module}:{m.line}` `{m.name}`: {m.why}", "  ```diff"]
        out += [_indent(_changed(m.diff)), "  ```"]
    return "\n".join(out) + "\n"


def _text_only(diff: str) -> bool:
    """A mutant that only rewrites a string's text: mutmut wraps it in XX or changes its case."""
    removed = [t[1:] for t in diff.splitlines() if t.startswith("-") and not t.startswith("---")]
    added = [t[1:] for t in diff.splitlines() if t.startswith("+") and not t.startswith("+++")]
    if not removed or len(removed) != len(added):
        return False
    same_case = [t.lower() for t in removed] == [t.lower() for t in added]
    return same_case or all(a.replace("XX", "") == r for r, a in zip(removed, added, strict=True))


def _indent(text: str) -> str:
    return "\n".join("  " + t for t in text.splitlines())


def _mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=MODULES, help="mutate only this module (repeatable)")
    parser.add_argument("--max-children", type=int, default=2, help="parallel test processes (default 2)")
    parser.add_argument("--report-from", type=Path, help="a kept run: only write the report")
    parser.add_argument(
        "--continue", dest="cont", type=Path, help="a kept run: today's tests, all not killed, then what is left"
    )
    parser.add_argument("--output", type=Path, default=REPORT)
    parser.add_argument("--keep", action="store_true", help="keep the run's copies (the path is printed)")
    args = parser.parse_args()
    modules = args.only or MODULES
    if args.report_from or args.cont:
        run = (args.report_from or args.cont).resolve()
        origin = (run / ".mutation-origin").read_text().strip()
    else:
        run, origin = new_run()
    print(f"mutation: {origin} in {run}", flush=True)
    if not args.report_from:
        if args.cont:
            stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            with open(run / ".mutation-continued", "a") as notes:
                notes.write(f"{stamp} ")
        run_modules(run, modules, args.max_children)
    modules = [m for m in MODULES if m in modules or copy_of(run, m).exists()]
    mutants = collect(run, modules)
    if not mutants:
        sys.exit(f"mutation: no results in {run}; see its mutmut-*.log files")
    args.output.write_text(report(mutants, origin, modules, _notes(run, modules)))
    print(f"mutation: wrote {args.output}", flush=True)
    if not (args.keep or args.report_from or args.cont):
        shutil.rmtree(run, ignore_errors=True)
    if os.environ.get("MUTATION_STRICT") and any(m.status == "survived" for m in mutants):
        sys.exit(1)


def _notes(run: Path, modules: list[str]) -> list[str]:
    """What the run took, said as it was: its runtime per module, and when it was continued with
    newer tests/test_mutants_*.py (the survivors run again on the same mutants)."""
    runtimes = []
    for module in modules:
        record = copy_of(run, module) / ".runtime"
        if record.exists():
            seconds, children, runs = record.read_text().split()
            runtimes.append(f"`{module}` {float(seconds) / 60:.0f} min ({children} test processes, {runs} mutmut runs)")
    notes = ["Runtime: " + "; ".join(runtimes) + "."] if runtimes else []
    if (run / ".mutation-continued").exists():
        stamps = (run / ".mutation-continued").read_text().strip()
        notes.append(
            f"Continued, with the tests/test_mutants_*.py of then (survivors and mutants not run yet): {stamps}."
        )
    if (run / ".mutation-notes").exists():  # anything done by hand to the run, said as it was
        notes.append((run / ".mutation-notes").read_text())
    return notes


if __name__ == "__main__":
    main()
