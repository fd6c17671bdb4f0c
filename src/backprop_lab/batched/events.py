"""One TensorBoard event file per copy of a batched group, written by one Lightning ``Logger``.

A group of K copies logs K runs. TensorBoard's own ``EventFileWriter`` is one background thread per file,
and its pure-Python CRC costs about 45 µs an event: 13 k events for K = 64 took 0.85 s and K = 1024
took 45 s (threads contending), measured on the 2-core VM. Here the events are TensorBoard's protobufs
(``Event``, ``Summary``), framed as TensorBoard's record format (length, masked CRC-32C of the length,
data, masked CRC-32C of the data); the CRCs of every pending record are computed together, one byte
column at a time over all records (numpy), and each copy's records are appended to its file every
``flush_every_n_steps`` steps and at the end. Files are named as TensorBoard names its own
(``events.out.tfevents.<time>.<host>.<pid>.batched``: not a number at the end, which a TensorBoard writer
of the same process could take); TensorBoard reads them like any other run.

This module imports no torch.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.loggers import Logger
from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary


def _crc32c_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):  # CRC-32C (Castagnoli), reflected polynomial
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1).astype(np.uint32)
    return table


_TABLE = _crc32c_table()


def masked_crc32c_rows(rows: np.ndarray) -> np.ndarray:
    """The masked CRC-32C of every row of ``rows`` ((n, L) bytes): TensorBoard's record checksum."""
    columns = np.ascontiguousarray(rows.T)
    crc = np.full(rows.shape[0], 0xFFFFFFFF, dtype=np.uint32)
    for column in columns:
        crc = _TABLE[(crc ^ column) & 0xFF] ^ (crc >> np.uint32(8))
    crc ^= np.uint32(0xFFFFFFFF)
    return ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + np.uint32(0xA282EAD8)


def frame(records: Sequence[bytes]) -> list[bytes]:
    """Each record as TensorBoard's record format: length, its masked CRC, the data, its masked CRC."""
    out: list[bytes | None] = [None] * len(records)
    by_length: dict[int, list[int]] = {}
    for i, data in enumerate(records):
        by_length.setdefault(len(data), []).append(i)
    for length, where in by_length.items():
        header = np.frombuffer(struct.pack("<Q", length), np.uint8)
        n, size = len(where), 8 + 4 + length + 4
        rows = np.frombuffer(b"".join(records[i] for i in where), np.uint8).reshape(n, length)
        crcs = masked_crc32c_rows(rows) if length else np.full(n, 0xA282EAD8, np.uint32)
        framed = np.empty((n, size), np.uint8)  # every record of this length framed at once
        framed[:, :8] = header
        framed[:, 8:12] = masked_crc32c_rows(header[None]).astype("<u4").view(np.uint8)
        framed[:, 12 : 12 + length] = rows
        framed[:, 12 + length :] = crcs.astype("<u4").view(np.uint8).reshape(n, 4)
        blob = framed.tobytes()
        for j, i in enumerate(where):
            out[i] = blob[j * size : (j + 1) * size]
    return out  # type: ignore[return-value]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_F32 = struct.Struct("<f")
_VALUE_HEAD: dict[str, bytes] = {}  # a tag → the bytes of its Summary.Value up to the value


def _value_head(tag: str) -> bytes:
    head = _VALUE_HEAD.get(tag)
    if head is None:
        name = tag.encode()
        value = b"\x0a" + _varint(len(name)) + name + b"\x15"  # tag = 1 (string), then simple_value = 2 (float)
        head = _VALUE_HEAD[tag] = b"\x0a" + _varint(len(value) + 4) + value  # Summary.value = 1 (message)
    return head


def scalars_event(wall_time: float, step: int, metrics: Mapping[str, float]) -> bytes:
    """``Event(wall_time, step, summary=Summary(value=[Value(tag, simple_value) ...])).SerializeToString()``,
    written out field by field in protobuf's wire format (the same bytes; tests/test_batched.py compares): ~5×
    faster than building the messages, which at K = 1024 copies × ~400 events was ~3 s of a sweep."""
    if step < 0 or wall_time == 0:
        values = [Summary.Value(tag=t, simple_value=float(v)) for t, v in metrics.items()]
        return Event(wall_time=wall_time, step=step, summary=Summary(value=values)).SerializeToString()
    parts = []
    for tag, v in metrics.items():
        try:
            number = _F32.pack(float(v))
        except OverflowError:  # beyond float32: protobuf stores it as ±inf, as numpy's conversion does
            with np.errstate(over="ignore"):
                number = np.float32(float(v)).tobytes()
        parts.append(_value_head(tag) + number)
    summary = b"".join(parts)
    head = b"\x09" + struct.pack("<d", wall_time) + (b"\x10" + _varint(step) if step else b"")
    return head + b"\x2a" + _varint(len(summary)) + summary  # wall_time = 1, step = 2, summary = 5


class ScalarColumns:
    """Scalar events of many copies at one step, the same tags for each: one event's bytes
    (:func:`~backprop_lab.batched.events.scalars_event`) repeated, each copy's float32 values written into it
    with numpy, where a dict and an event a copy would cost ~10 µs each."""

    SENTINEL = 1.2345679  # a float32 whose four bytes are all non-zero: where a tag's value lies in the event

    def __init__(self, tags: list[str]):
        self.tags = list(tags)
        zeros = scalars_event(1.0, 1, dict.fromkeys(self.tags, 0.0))
        self._from_end = []  # each value's place counted from the event's end (the step's varint comes first)
        for tag in self.tags:
            marked = scalars_event(1.0, 1, {t: self.SENTINEL if t == tag else 0.0 for t in self.tags})
            first = next(i for i, (a, b) in enumerate(zip(zeros, marked)) if a != b)
            self._from_end.append(len(zeros) - first)

    def events(
        self, step: int, which: np.ndarray, values: np.ndarray, wall_time: float | None = None
    ) -> dict[int, bytes]:
        """``{copy: event}`` for the copies ``which`` and their ``values`` (copies × tags)."""
        now = time.time() if wall_time is None else wall_time
        template = np.frombuffer(scalars_event(now, step, dict.fromkeys(self.tags, 0.0)), np.uint8)
        size, n = len(template), len(which)
        rows = np.tile(template, (n, 1))
        with np.errstate(over="ignore"):  # beyond float32: ±inf, as protobuf stores it
            data = np.asarray(values, dtype=np.float64).reshape(n, len(self.tags)).astype("<f4")
        for i, back in enumerate(self._from_end):
            rows[:, size - back : size - back + 4] = np.ascontiguousarray(data[:, i]).view(np.uint8).reshape(n, 4)
        blob = rows.tobytes()
        return {k: blob[j * size : (j + 1) * size] for j, k in enumerate(which.tolist())}


COLUMNS_FROM = 8  # copies with the same tags at a step, from which their events are written as columns


class CopiesLogger(Logger):
    """A Lightning logger for the K copies of a batched group: copy k's events go to ``run_dirs[k]``.

    ``log_metrics(metrics, step)`` (Lightning's call) logs the same values to every copy;
    :meth:`log_copy_metrics` logs each copy's own; :meth:`log_copy_summaries` any ``Summary`` protobuf
    (hparams, text) to one copy; :meth:`log_copy_events` serialized events, one per copy.
    """

    def __init__(self, run_dirs: Sequence[Path], flush_every_n_steps: int = 100):
        super().__init__()
        stamp, host, pid = int(time.time()), socket.gethostname(), os.getpid()
        # Not TensorBoard's last part (a counter of the writers of the process, from 0): the HParams writer that
        # train_group opens in a copy's directory within the same second would take the same name and clobber it.
        self.paths = [Path(d) / f"events.out.tfevents.{stamp:010d}.{host}.{pid}.batched" for d in run_dirs]
        self.flush_every_n_steps = flush_every_n_steps
        self._pending: list[list[bytes]] = [[] for _ in self.paths]
        self._last_flush = 0
        self._columns: dict[tuple[str, ...], ScalarColumns] = {}
        # As a separate run's file begins (train.make_logger): its version, then a session start at step 0, so that a
        # copy resumed as a separate run (whose start comes second) has TensorBoard drop what the copy logged from
        # the resume step on.
        now = time.time()
        version = Event(wall_time=now, file_version="brain.Event:2").SerializeToString()
        start = Event(wall_time=now, step=0, session_log=SessionLog(status=SessionLog.START)).SerializeToString()
        for pending in self._pending:
            pending += (version, start)

    @property
    def name(self) -> str:
        return "copies"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str | None:
        return None

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Lightning's call with the module's hparams: the batched module has none; each copy's come from
        :meth:`log_copy_summaries`."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.log_copy_metrics(dict.fromkeys(range(len(self.paths)), metrics), step or 0)

    def log_copy_metrics(self, per_copy: Mapping[int, Mapping[str, float]], step: int) -> None:
        """``{copy: {tag: value}}`` at ``step``: one event per copy holding its values (as the package's
        TensorBoardLogger writes one ``log_metrics`` call); the copies with the same tags, many at a step, written
        as :class:`ScalarColumns` (one event's bytes, each copy's values put in)."""
        now = time.time()
        by_tags: dict[tuple[str, ...], list[int]] = {}
        for k, metrics in per_copy.items():
            if metrics:
                by_tags.setdefault(tuple(metrics), []).append(k)
        for tags, copies in by_tags.items():
            if len(copies) < COLUMNS_FROM or step <= 0:
                for k in copies:
                    self._pending[k].append(scalars_event(now, step, per_copy[k]))
                continue
            values = [float(v) for k in copies for v in per_copy[k].values()]
            self._log_columns(tags, np.array(copies), np.array(values), step, now)
        self._flush_every(step)

    def log_copy_columns(self, tags: Sequence[str], which: np.ndarray, values: np.ndarray, step: int) -> None:
        """The copies ``which`` (indices), each its row of ``values`` (copies × tags) at ``step``: the events
        :meth:`log_copy_metrics` writes for ``{k: dict(zip(tags, values[i]))}``, without the dicts."""
        tags = tuple(tags)
        if len(which) < COLUMNS_FROM or step <= 0:
            self.log_copy_metrics({int(k): dict(zip(tags, row)) for k, row in zip(which.tolist(), values)}, step)
            return
        self._log_columns(tags, which, values, step, time.time())
        self._flush_every(step)

    def _log_columns(self, tags: tuple[str, ...], which: np.ndarray, values: np.ndarray, step: int, now: float):
        columns = self._columns.get(tags) or self._columns.setdefault(tags, ScalarColumns(list(tags)))
        for k, event in columns.events(step, which, values, now).items():
            self._pending[k].append(event)

    def _flush_every(self, step: int) -> None:
        if step - self._last_flush >= self.flush_every_n_steps:
            self._last_flush = step
            self.flush()

    def log_copy_events(self, events: Mapping[int, bytes]) -> None:
        """``{copy: serialized Event}``: events made by the caller (one tensor row per copy and step, built from
        a prefix shared by the copies: :class:`~backprop_lab.batched.step_record.TabRowEvents`)."""
        for k, event in events.items():
            self._pending[k].append(event)

    def log_copy_summaries(self, copy: int, summaries: Sequence[Summary], step: int = 0) -> None:
        now = time.time()
        for summary in summaries:
            self._pending[copy].append(Event(wall_time=now, step=step, summary=summary).SerializeToString())

    def flush(self) -> None:
        counts = [len(p) for p in self._pending]
        framed = iter(frame([record for pending in self._pending for record in pending]))
        for path, count in zip(self.paths, counts):
            if count:
                with path.open("ab") as f:
                    f.write(b"".join(next(framed) for _ in range(count)))
        self._pending = [[] for _ in self.paths]

    def save(self) -> None:
        self.flush()

    def finalize(self, status: str) -> None:
        self.flush()
