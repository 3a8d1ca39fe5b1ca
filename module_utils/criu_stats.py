"""Decode CRIU's statistics images (`stats-dump`, `stats-restore`) with the standard library.

The nodes run this through Ansible's module bundling, so it cannot use the `protobuf`
package: it reads CRIU's image framing and the few protobuf wire types that `stats.proto`
uses itself.

Image layout (CRIU 4.2.1, `criu/image.c` `img_write_magic`, `criu/protobuf.c`); CRIU writes
native-endian u32 words, read here as little-endian (x86_64, aarch64; not s390x):

    IMG_SERVICE_MAGIC (0x55105940)   head magic of "service" files (stats, irmap-cache)
    STATS_MAGIC       (0x57093306)   the image's own magic
    then, per entry:  u32 size, `size` bytes of a protobuf `stats_entry`

CRIU writes exactly one entry: `stats_entry.dump` (a `dump_stats_entry`) into `stats-dump`,
`stats_entry.restore` (a `restore_stats_entry`) into `stats-restore`. Times are µs in a
uint32 (they wrap after about 71 minutes); page counts are uint64.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Mapping
from typing import Any

IMG_COMMON_MAGIC = 0x54564319
IMG_SERVICE_MAGIC = 0x55105940
STATS_MAGIC = 0x57093306

# Names for the magics a wrong file is most likely to start with (criu/include/magic.h).
_MAGIC_NAMES = {
    IMG_COMMON_MAGIC: "IMG_COMMON",
    IMG_SERVICE_MAGIC: "IMG_SERVICE",
    STATS_MAGIC: "STATS",
    0x57004059: "IRMAP_CACHE",
    0x58313116: "INVENTORY",
    0x50273030: "PSTREE",
    0x56084025: "PAGEMAP",
    0x57023458: "KDAT",
}

# Page size of the dumping host; CRIU counts pages of that size (4 KiB on x86_64).
DEFAULT_PAGE_SIZE = 4096

_US_PER_S = 1_000_000

# Protobuf wire types.
_VARINT, _FIXED64, _LENGTH_DELIMITED, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5

# Field number -> (CRIU's field name, protobuf scalar type), from CRIU 4.2.1 images/stats.proto.
DUMP_STATS_FIELDS: dict[int, tuple[str, str]] = {
    1: ("freezing_time", "uint32"),
    2: ("frozen_time", "uint32"),
    3: ("memdump_time", "uint32"),
    4: ("memwrite_time", "uint32"),
    5: ("pages_scanned", "uint64"),
    6: ("pages_skipped_parent", "uint64"),
    7: ("pages_written", "uint64"),
    8: ("irmap_resolve", "uint32"),
    9: ("pages_lazy", "uint64"),
    10: ("page_pipes", "uint64"),
    11: ("page_pipe_bufs", "uint64"),
    12: ("shpages_scanned", "uint64"),
    13: ("shpages_skipped_parent", "uint64"),
    14: ("shpages_written", "uint64"),
}

RESTORE_STATS_FIELDS: dict[int, tuple[str, str]] = {
    1: ("pages_compared", "uint64"),
    2: ("pages_skipped_cow", "uint64"),
    3: ("forking_time", "uint32"),
    4: ("restore_time", "uint32"),
    5: ("pages_restored", "uint64"),
}

# stats_entry: field number -> name of the sub-message.
_STATS_ENTRY_FIELDS = {1: "dump", 2: "restore"}

_MASKS = {"uint32": 0xFFFF_FFFF, "uint64": 0xFFFF_FFFF_FFFF_FFFF}

# Summary key -> CRIU field, for the µs times and for the counts copied as they are.
_DUMP_TIMES = {
    "freezing_s": "freezing_time",
    "frozen_s": "frozen_time",
    "memdump_s": "memdump_time",
    "memwrite_s": "memwrite_time",
    "irmap_resolve_s": "irmap_resolve",
}
_DUMP_COUNTS = (
    "pages_scanned",
    "pages_skipped_parent",
    "pages_written",
    "pages_lazy",
    "page_pipes",
    "page_pipe_bufs",
    "shpages_scanned",
    "shpages_skipped_parent",
    "shpages_written",
)
_RESTORE_TIMES = {"restore_s": "restore_time", "forking_s": "forking_time"}
_RESTORE_COUNTS = ("pages_compared", "pages_skipped_cow", "pages_restored")


class CriuStatsError(ValueError):
    """A CRIU statistics image or protobuf message could not be decoded."""


class ProtobufDecodeError(CriuStatsError):
    """The bytes are not a well-formed protobuf message of the expected shape."""


class CriuImageError(CriuStatsError):
    """A CRIU image file has the wrong magic or is truncated; names the file."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def _magic_name(value: int) -> str:
    name = _MAGIC_NAMES.get(value)
    return f"0x{value:08x} ({name})" if name else f"0x{value:08x}"


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Return (value, position after it) for the base-128 varint at `pos`."""
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise ProtobufDecodeError(f"varint runs past the end of the message at byte {pos}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value & _MASKS["uint64"], pos
    raise ProtobufDecodeError(f"varint longer than 10 bytes ending at byte {pos}")


def _take(data: bytes, pos: int, size: int, what: str) -> tuple[bytes, int]:
    end = pos + size
    if end > len(data):
        raise ProtobufDecodeError(
            f"{what} of {size} bytes at byte {pos} runs past the end of the "
            f"{len(data)}-byte message"
        )
    return data[pos:end], end


def _skip_group(data: bytes, pos: int, field_number: int) -> int:
    """Skip a (deprecated) group's fields up to its matching END_GROUP tag."""
    while True:
        if pos >= len(data):
            raise ProtobufDecodeError(f"group {field_number} is not closed")
        tag, pos = _read_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == _END_GROUP:
            if number != field_number:
                raise ProtobufDecodeError(f"group {field_number} closed as {number}")
            return pos
        _, pos = _read_value(data, pos, number, wire_type)


def _read_value(data: bytes, pos: int, number: int, wire_type: int) -> tuple[int | bytes, int]:
    if wire_type == _VARINT:
        return _read_varint(data, pos)
    if wire_type == _FIXED64:
        raw, pos = _take(data, pos, 8, f"fixed64 field {number}")
        return struct.unpack("<Q", raw)[0], pos
    if wire_type == _FIXED32:
        raw, pos = _take(data, pos, 4, f"fixed32 field {number}")
        return struct.unpack("<I", raw)[0], pos
    if wire_type == _LENGTH_DELIMITED:
        size, pos = _read_varint(data, pos)
        return _take(data, pos, size, f"length-delimited field {number}")
    if wire_type == _START_GROUP:
        return b"", _skip_group(data, pos, number)
    raise ProtobufDecodeError(f"field {number} has invalid wire type {wire_type}")


def iter_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) for each field of a protobuf message.

    Varints and fixed32/64 come back as unsigned ints, length-delimited fields as bytes,
    groups (deprecated) are skipped whole and yield b"".
    """
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise ProtobufDecodeError(f"field number 0 at byte {pos}")
        if wire_type == _END_GROUP:
            raise ProtobufDecodeError(f"unexpected end of group {number}")
        value, pos = _read_value(data, pos, number, wire_type)
        yield number, wire_type, value


def _decode_scalars(
    data: bytes, fields: Mapping[int, tuple[str, str]], message: str
) -> dict[str, int]:
    """Decode a message of uint32/uint64 fields, by CRIU's names; unknown fields are skipped."""
    decoded: dict[str, int] = {}
    for number, wire_type, value in iter_fields(data):
        known = fields.get(number)
        if known is None:
            continue  # a field from a newer CRIU: skip it, as protobuf does
        name, scalar_type = known
        if wire_type != _VARINT or not isinstance(value, int):
            raise ProtobufDecodeError(
                f"{message}.{name} (field {number}) has wire type {wire_type}, expected a varint"
            )
        # Protobuf truncates an over-long uint32 varint; the last occurrence wins.
        decoded[name] = value & _MASKS[scalar_type]
    return decoded


def decode_dump_stats(data: bytes) -> dict[str, int]:
    """Decode a `dump_stats_entry` message: CRIU's field names -> ints (times in µs)."""
    return _decode_scalars(data, DUMP_STATS_FIELDS, "dump_stats_entry")


def decode_restore_stats(data: bytes) -> dict[str, int]:
    """Decode a `restore_stats_entry` message: CRIU's field names -> ints (times in µs)."""
    return _decode_scalars(data, RESTORE_STATS_FIELDS, "restore_stats_entry")


def decode_stats_entry(data: bytes) -> dict[str, dict[str, int]]:
    """Decode a `stats_entry` message into {"dump": {...}} and/or {"restore": {...}}."""
    entry: dict[str, dict[str, int]] = {}
    for number, wire_type, value in iter_fields(data):
        name = _STATS_ENTRY_FIELDS.get(number)
        if name is None:
            continue
        if wire_type != _LENGTH_DELIMITED or not isinstance(value, bytes):
            raise ProtobufDecodeError(
                f"stats_entry.{name} (field {number}) has wire type {wire_type}, expected a message"
            )
        decoder = decode_dump_stats if name == "dump" else decode_restore_stats
        # A repeated sub-message is merged into the earlier one, as protobuf does.
        entry.setdefault(name, {}).update(decoder(value))
    return entry


def _read_entries(path: str, data: bytes) -> list[bytes]:
    """Split the bytes after the magic into the entries' protobuf payloads."""
    entries: list[bytes] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 4:
            raise CriuImageError(
                path, f"truncated: {len(data) - pos} stray bytes where an entry size was expected"
            )
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if len(data) - pos < size:
            raise CriuImageError(
                path,
                f"truncated: entry {len(entries) + 1} declares {size} bytes, "
                f"only {len(data) - pos} follow",
            )
        entries.append(data[pos : pos + size])
        pos += size
    return entries


def _read_image_body(path: str) -> bytes:
    """Check the image's magic words; return the bytes after them (the entries)."""
    with open(path, "rb") as image:
        # Check the magic before reading on: a pages image passed by mistake can be huge.
        head = image.read(8)
        if len(head) < 4:
            raise CriuImageError(path, f"truncated: {len(head)} bytes, no image magic")
        (first,) = struct.unpack_from("<I", head)
        if first in (IMG_SERVICE_MAGIC, IMG_COMMON_MAGIC):
            if len(head) < 8:
                raise CriuImageError(path, "truncated: head magic without the image magic")
            (magic,) = struct.unpack_from("<I", head, 4)
            rest = b""
        else:
            # Images v1 (inventory img_version 1) have no head magic: the image magic comes first.
            magic, rest = first, head[4:]
        if magic != STATS_MAGIC:
            raise CriuImageError(
                path,
                f"not a CRIU stats image: magic {_magic_name(magic)}, "
                f"expected {_magic_name(STATS_MAGIC)} after {_magic_name(IMG_SERVICE_MAGIC)}",
            )
        return rest + image.read()


def read_stats_image(path: str | os.PathLike[str]) -> dict[str, dict[str, int]]:
    """Read a `stats-dump` / `stats-restore` image: {"dump": {...}} or {"restore": {...}}.

    The inner dicts use CRIU's field names and units (times in µs, counts in pages);
    fields the image does not carry are absent. Raises CriuImageError (naming the file)
    for a wrong magic, a truncated file or an undecodable entry; OSError if unreadable.
    """
    image_path = os.fspath(path)
    entries = _read_entries(image_path, _read_image_body(image_path))
    if not entries:
        raise CriuImageError(image_path, "truncated: no stats entry after the magic")
    if len(entries) > 1:
        raise CriuImageError(image_path, f"{len(entries)} stats entries, CRIU writes exactly one")
    try:
        return decode_stats_entry(entries[0])
    except ProtobufDecodeError as err:
        raise CriuImageError(image_path, f"bad stats_entry: {err}") from err


def _seconds(microseconds: int) -> float:
    return microseconds / _US_PER_S


def summarize_dump_stats(
    dump: Mapping[str, int], page_size: int = DEFAULT_PAGE_SIZE
) -> dict[str, Any]:
    """Convert decoded `dump_stats_entry` fields to the suite's units.

    Keys, each only where CRIU wrote the field: freezing_s, frozen_s, memdump_s,
    memwrite_s, irmap_resolve_s (float seconds); pages_scanned, pages_skipped_parent,
    pages_written, pages_lazy, page_pipes, page_pipe_bufs, shpages_scanned,
    shpages_skipped_parent, shpages_written (ints); bytes_written (pages_written *
    page_size). Always: page_size, and raw (CRIU's own names and units).
    """
    summary: dict[str, Any] = {}
    for key, field in _DUMP_TIMES.items():
        if field in dump:
            summary[key] = _seconds(dump[field])
    for field in _DUMP_COUNTS:
        if field in dump:
            summary[field] = dump[field]
    if "pages_written" in dump:
        summary["bytes_written"] = dump["pages_written"] * page_size
    summary["page_size"] = page_size
    summary["raw"] = dict(dump)
    return summary


def summarize_restore_stats(restore: Mapping[str, int]) -> dict[str, Any]:
    """Convert decoded `restore_stats_entry` fields to the suite's units.

    Keys, each only where CRIU wrote the field: restore_s, forking_s (float seconds);
    pages_compared, pages_skipped_cow, pages_restored (ints). Always: raw (CRIU's names
    and units).
    """
    summary: dict[str, Any] = {}
    for key, field in _RESTORE_TIMES.items():
        if field in restore:
            summary[key] = _seconds(restore[field])
    for field in _RESTORE_COUNTS:
        if field in restore:
            summary[field] = restore[field]
    summary["raw"] = dict(restore)
    return summary


def summarize_stats_image(
    path: str | os.PathLike[str], page_size: int = DEFAULT_PAGE_SIZE
) -> dict[str, Any]:
    """Read a stats image and summarize it: {"dump": {...}} and/or {"restore": {...}}."""
    entry = read_stats_image(path)
    summary: dict[str, Any] = {}
    if "dump" in entry:
        summary["dump"] = summarize_dump_stats(entry["dump"], page_size)
    if "restore" in entry:
        summary["restore"] = summarize_restore_stats(entry["restore"])
    return summary
