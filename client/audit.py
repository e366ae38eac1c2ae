"""Append-only, hash-chained audit log: one JSON line per delivered video.

Each record carries `seq` (1, 2, ...), `prev_hash` (the previous record's `hash`, 64 zeros for the first) and `hash`
= SHA-256 of the record's canonical JSON without `hash` (sorted keys, no spaces, UTF-8). `verify_log` recomputes
everything and names the first bad record and why:
- edited: the record no longer matches its own hash (or is not JSON any more);
- removed: `seq` jumps ahead and `prev_hash` no longer links;
- reordered / duplicated: `seq` goes backwards or repeats;
- truncated tail: a chain alone cannot see records cut off its end, so every append also rewrites a small head
  file (`<log>.head`: last seq and hash) and verification checks the log ends exactly there.

The limit, stated plainly: someone who can rewrite both files and recomputes every hash after their edit leaves a
consistent log. Detecting that needs a copy of a head hash kept elsewhere (printed by `talkinghead audit verify`;
pass it back with `--anchor` to prove the log still contains it), or the signed videos themselves: each record
holds the SHA-256 of the signed file it describes. Appends take an exclusive file lock so concurrent jobs cannot
interleave a line or fork the chain.

Secrets never enter the log: records are built from whitelisted fields by the caller, and `append` refuses any key
that names a secret or any value that holds PEM key material.

Records hold text from users (a prompt, a file name). Each line is written with control, format (bidi overrides,
zero-width) and line-separator characters as JSON `\\uXXXX` escapes (`log_line`), so that `cat` or `less` of the
log shows them instead of obeying them (a right-to-left override cannot rearrange what an operator reads), and
`printable` escapes them the same way wherever the CLI prints a record's text. Verification reads every line as
plain UTF-8 and never raises on what it finds: binary garbage, a byte-order mark, nesting or numbers no record
has are each reported as the line they are on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .files import file_problem

GENESIS = "0" * 64
# Whole key names only: "pass" (a QA gate's result) is fine, "password" or "hf_token" is not.
_SECRET_KEY = re.compile(r"pass(word|wd|phrase)|.*secret.*|(.*_)?token|api[_-]?key|(.*_)?private[_-]?key|"
                         r"authori[sz]ation|cookie|session[_-]?key", re.IGNORECASE)
_PEM_SECRET = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")


class AuditError(Exception):
    """The log cannot be appended to (unreadable, damaged tail, or a record that would leak a secret)."""


_UNSAFE = {"Cc", "Cf", "Zl", "Zp", "Cs"}  # controls, format (bidi, zero-width), line/paragraph separators, surrogates


def _escape(char: str) -> str:
    code = ord(char)
    if code > 0xFFFF:  # as JSON writes it: a UTF-16 surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every control, format (bidi override, zero-width) and separator character written as a
    \\uXXXX escape: safe to show on a terminal."""
    return "".join(_escape(char) if unicodedata.category(char) in _UNSAFE else char for char in text)


def canonical(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def log_line(record: dict) -> bytes:
    """A record as its line in the log (without the newline): the canonical JSON, unsafe characters escaped (the
    same JSON value, so the same hash)."""
    return printable(canonical(record).decode()).encode()


def record_hash(record: dict) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def head_path(log: Path) -> Path:
    return log.with_name(log.name + ".head")


def check_no_secrets(value: object, where: str = "record") -> None:
    """Raise AuditError if a key names a secret or a value holds PEM private-key material."""
    if isinstance(value, dict):
        for key, item in value.items():
            if _SECRET_KEY.fullmatch(str(key)):
                raise AuditError(f"refusing to log {where}.{key}: it names a secret")
            check_no_secrets(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_no_secrets(item, f"{where}[{index}]")
    elif isinstance(value, str) and _PEM_SECRET.search(value):
        raise AuditError(f"refusing to log {where}: it holds a PEM private key")


@contextlib.contextmanager
def _locked(log: Path) -> Iterator[None]:
    with open(log.with_name(log.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _last_record(log: Path) -> dict | None:
    """The last line as a record (read from the end: the log grows without bound)."""
    if not log.exists() or log.stat().st_size == 0:
        return None
    with open(log, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        end = handle.tell()
        block, data = 4096, b""
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            data = handle.read(end - start) + data
            end = start
            if data.rstrip(b"\n").count(b"\n") >= 1:
                break
    line = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    record = parse_line(line)
    if not isinstance(record, dict):
        raise AuditError(f"the last line of {log} is not a JSON record (it {record}); run `talkinghead audit verify "
                         f"{log}`")
    return record


def check_event(event: dict) -> None:
    """What any audit log refuses to append: fields the log assigns, and secrets."""
    reserved = {"seq", "time", "prev_hash", "hash"} & set(event)
    if reserved:
        raise AuditError(f"the event may not set {', '.join(sorted(reserved))}: the log assigns them")
    check_no_secrets(event)


def chained(last: tuple[int, str] | None, event: dict, now: dt.datetime | None = None) -> dict:
    """The record that follows `last` ((seq, hash) of the chain's last record, None for the first) in the chain."""
    record = {
        "seq": last[0] + 1 if last else 1,
        "time": (now or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="milliseconds"),
        **event,
        "prev_hash": last[1] if last else GENESIS,
    }
    try:
        record["hash"] = record_hash(record)
    except (ValueError, RecursionError) as exc:  # NaN / infinity, text that is not Unicode (surrogates)
        raise AuditError(f"the record cannot be written as JSON text: {exc}") from None
    return record


def write_head(log: Path, seq: int, hash_: str, time: str) -> None:
    head = head_path(log)
    temp = head.with_name(head.name + ".tmp")
    temp.write_text(json.dumps({"seq": seq, "hash": hash_, "time": time}))
    os.replace(temp, head)


class AuditAppender(Protocol):
    """Where a delivery's audit record goes: a file (AuditLog) or the gateway's database (DatabaseAuditLog)."""

    @property
    def location(self) -> str: ...

    def append(self, event: dict, now: dt.datetime | None = None) -> dict: ...


class AuditLog:
    """The log as a file (`<log>` + `<log>.head`); client/gateway/audit_store.py keeps the same chain in a database."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def location(self) -> str:
        return str(self.path)

    def append(self, event: dict, now: dt.datetime | None = None) -> dict:
        """Add one record (the event's fields plus seq, time, prev_hash, hash) and return it."""
        check_event(event)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path):
            last = _last_record(self.path)
            record = chained((last["seq"], last["hash"]) if last else None, event, now)
            line = log_line(record)
            with open(self.path, "ab") as handle:
                handle.write(line + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            write_head(self.path, record["seq"], record["hash"], record["time"])
        return record


@dataclass
class Problem:
    line: int | None  # 1-based line in the log, None for the head file
    seq: int | None
    kind: str  # edited | removed | reordered | truncated | head
    message: str


@dataclass
class AuditVerifyResult:
    path: str
    records: int = 0
    head_checked: bool = False
    last_seq: int | None = None
    last_hash: str | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "records": self.records, "head_checked": self.head_checked,
                "last_seq": self.last_seq, "last_hash": self.last_hash,
                "first_problem": self.problems[0].__dict__ if self.problems else None,
                "problems": [p.__dict__ for p in self.problems]}


def parse_line(raw: bytes) -> dict | str:
    """The record on a line of the log, or why the line is not one: never an exception, whatever the bytes. The
    bytes are decoded as plain UTF-8: a byte-order mark, which `append` never writes, is an alteration."""
    line = raw.rstrip(b"\n")
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return f"is not UTF-8 text (byte {exc.start} is {line[exc.start:exc.start + 1]!r})"
    except RecursionError:
        return "is nested too deeply to be a record"
    except ValueError as exc:  # JSONDecodeError (a byte-order mark included), an integer of thousands of digits
        return f"is not JSON ({str(exc)[:120]})"
    if not isinstance(record, dict):
        return "is not a JSON object"
    seq, stored = record.get("seq"), record.get("hash")
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(stored, str):
        return "has no integer seq and text hash"
    try:
        canonical(record)
    except (ValueError, RecursionError) as exc:  # infinity from a huge exponent, NaN, lone surrogates
        return f"holds a value the log never writes ({str(exc)[:120]})"
    return record


def _seqs(path: Path) -> set[int]:
    seqs = set()
    with open(path, "rb") as handle:
        for raw in handle:
            record = parse_line(raw)
            if isinstance(record, dict):
                seqs.add(record["seq"])
    return seqs


def verify_log(path: Path, anchors: tuple[str, ...] = ()) -> AuditVerifyResult:
    """Recompute the chain; `anchors` are head hashes kept elsewhere that must still be in it."""
    path = Path(path)
    result = AuditVerifyResult(str(path))
    problem = file_problem(path)
    if problem:
        result.problems.append(Problem(None, None, "missing", f"{path} {problem}"))
        return result
    present = _seqs(path)  # a first pass, so a seq that is "missing" here but found later reads as reordered
    prev_hash, expected_seq, seen = GENESIS, 1, set()
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            result.records += 1
            record = parse_line(raw)
            if not isinstance(record, dict):
                result.problems.append(Problem(number, None, "edited", f"line {number} is not a valid record: it "
                                                                       f"{record}"))
                prev_hash, expected_seq = None, expected_seq + 1
                continue
            seq, stored = record["seq"], record["hash"]
            seen.add(stored)
            if record_hash(record) != stored:
                result.problems.append(Problem(number, seq, "edited",
                                               f"record seq {seq} (line {number}) was edited: it no longer matches "
                                               "its hash"))
            elif seq < expected_seq:
                result.problems.append(Problem(number, seq, "reordered",
                                               f"record seq {seq} (line {number}) comes after seq {expected_seq - 1}:"
                                               " records were reordered or duplicated"))
            elif seq > expected_seq and any(s in present for s in range(expected_seq, seq)):
                result.problems.append(Problem(number, seq, "reordered",
                                               f"record seq {seq} (line {number}) comes before seq {expected_seq}: "
                                               "records were reordered"))
            elif seq > expected_seq:
                missing = f"seq {expected_seq}" + (f" to {seq - 1}" if seq - 1 > expected_seq else "")
                result.problems.append(Problem(number, seq, "removed", f"{missing} removed before line {number}"))
            elif prev_hash is not None and record.get("prev_hash") != prev_hash:
                result.problems.append(Problem(number, seq, "edited",
                                               f"record seq {seq} (line {number}) does not link to seq {seq - 1}: "
                                               f"seq {seq - 1} was edited and re-hashed, or the log rewritten"))
            prev_hash, expected_seq = stored, max(expected_seq, seq + 1)
            result.last_seq, result.last_hash = seq, stored
    head = head_path(path)
    if head.exists():
        result.head_checked = True
        try:
            head_record = json.loads(head.read_text())
            head_seq, head_hash = head_record["seq"], head_record["hash"]
        except (json.JSONDecodeError, KeyError, TypeError):
            result.problems.append(Problem(None, None, "head", f"{head} is damaged"))
        else:
            if result.last_seq is None or result.last_seq < head_seq:
                result.problems.append(Problem(None, head_seq, "truncated",
                                               f"the log ends at seq {result.last_seq} but its head says seq "
                                               f"{head_seq}: records were cut off the end"))
            elif result.last_seq > head_seq:
                result.problems.append(Problem(None, head_seq, "head",
                                               f"records after seq {head_seq} were added without the log's "
                                               "append (the head was not updated)"))
            elif result.last_hash != head_hash:
                result.problems.append(Problem(None, head_seq, "edited",
                                               f"the last record (seq {head_seq}) differs from the one the head "
                                               "recorded"))
    elif result.records:
        result.problems.append(Problem(None, None, "head", f"{head} is missing: a truncated tail cannot be ruled out"))
    for anchor in anchors:
        if anchor not in seen:
            result.problems.append(Problem(None, None, "anchor", f"anchor hash {anchor[:16]}... is not in the log: "
                                                                 "it was rewritten after that hash was recorded"))
    return result


def find_record(path: Path, **match: object) -> dict | None:
    """The last record whose dotted fields equal `match`, e.g. find_record(log, **{"output.sha256": digest})."""
    found = None
    with open(path, "rb") as handle:
        for raw in handle:
            record = parse_line(raw)
            if not isinstance(record, dict):
                continue
            if all(_field(record, key) == value for key, value in match.items()):
                found = record
    return found


def _field(record: dict, dotted: str) -> object:
    value: object = record
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
