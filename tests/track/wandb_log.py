"""Reads a W&B offline run file (``run-<id>.wandb``) back into its protobuf records.

W&B's own reader lives in its compiled core; the file is a LevelDB-style log (a 7-byte ``:W&B`` header, then
32 KiB blocks of records with a 7-byte header each: CRC, length, type FULL/FIRST/MIDDLE/LAST) of
``wandb_internal_pb2.Record`` messages.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _chunks(data: bytes) -> Iterator[bytes]:
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    if ident != b":W&B":
        raise ValueError(f"not a W&B run file (starts {ident!r})")
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (length == 0 and kind == 0):  # the rest of a block is padding
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def read_run(path: Path) -> dict[str, Any]:
    """``{"config": {key: value}, "history": [{key: value}], "summary": {key: value}}`` of one offline run file."""
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    out: dict[str, Any] = {"config": {}, "history": [], "summary": {}}

    def key_of(item: Any) -> str:
        return item.key or "/".join(item.nested_key)

    for raw in _chunks(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "config":
            out["config"].update({key_of(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            out["history"].append({key_of(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            out["summary"].update({key_of(i): json.loads(i.value_json) for i in record.summary.update})
    return out
