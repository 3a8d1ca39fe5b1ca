"""Decoding CRIU 4.2.1 stats images recorded on this project's machines (see the fixtures' README)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import criu_stats
import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "criu_stats"
RECORDINGS = ("full-dump", "page-server")

# Cross-checked with CRIU 4.2.1's own `crit decode --pretty` (saved beside each image as
# *.crit.json), with `protoc --decode=stats_entry images/stats.proto` on the payload, and
# with what `criu --display-stats` printed during the recording (*-display-stats.txt).
EXPECTED_RAW = {
    "full-dump": {
        "dump": {
            "freezing_time": 118,
            "frozen_time": 13432,
            "memdump_time": 7282,
            "memwrite_time": 5304,
            "pages_scanned": 2819,
            "pages_skipped_parent": 0,
            "pages_written": 2750,
            "irmap_resolve": 0,
            "pages_lazy": 0,
            "page_pipes": 8,
            "page_pipe_bufs": 8,
            "shpages_scanned": 0,
            "shpages_skipped_parent": 0,
            "shpages_written": 0,
        },
        "restore": {
            "pages_compared": 0,
            "pages_skipped_cow": 0,
            "forking_time": 4,
            "restore_time": 14574,
            "pages_restored": 2750,
        },
    },
    "page-server": {
        "dump": {
            "freezing_time": 175,
            "frozen_time": 225547,
            "memdump_time": 9012,
            "memwrite_time": 6033,
            "pages_scanned": 2818,
            "pages_skipped_parent": 0,
            "pages_written": 2750,
            "irmap_resolve": 0,
            "pages_lazy": 0,
            "page_pipes": 8,
            "page_pipe_bufs": 8,
            "shpages_scanned": 0,
            "shpages_skipped_parent": 0,
            "shpages_written": 0,
        },
        "restore": {
            "pages_compared": 0,
            "pages_skipped_cow": 0,
            "forking_time": 3,
            "restore_time": 10685,
            "pages_restored": 2750,
        },
    },
}


# --- a tiny protobuf encoder, only for building test messages ---------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def uint_field(number: int, value: int) -> bytes:
    return tag(number, 0) + varint(value)


def message_field(number: int, payload: bytes) -> bytes:
    return tag(number, 2) + varint(len(payload)) + payload


def stats_image(entry: bytes, head: tuple[int, ...] | None = None) -> bytes:
    if head is None:
        head = (criu_stats.IMG_SERVICE_MAGIC, criu_stats.STATS_MAGIC)
    return struct.pack(f"<{len(head)}I", *head) + struct.pack("<I", len(entry)) + entry


# --- the recorded images ------------------------------------------------------------------


@pytest.mark.parametrize("recording", RECORDINGS)
@pytest.mark.parametrize("kind", ["dump", "restore"])
def test_recorded_image_decodes_to_cross_checked_values(recording: str, kind: str) -> None:
    decoded = criu_stats.read_stats_image(FIXTURES / recording / f"stats-{kind}")
    assert decoded == {kind: EXPECTED_RAW[recording][kind]}


@pytest.mark.parametrize("recording", RECORDINGS)
@pytest.mark.parametrize("kind", ["dump", "restore"])
def test_recorded_image_agrees_with_crit(recording: str, kind: str) -> None:
    crit = json.loads((FIXTURES / recording / f"stats-{kind}.crit.json").read_text())
    assert crit["magic"] == "STATS"
    assert [criu_stats.read_stats_image(FIXTURES / recording / f"stats-{kind}")] == crit["entries"]


@pytest.mark.parametrize("recording", RECORDINGS)
def test_recorded_images_start_with_service_and_stats_magic(recording: str) -> None:
    for kind in ("dump", "restore"):
        head = (FIXTURES / recording / f"stats-{kind}").read_bytes()[:8]
        assert struct.unpack("<II", head) == (criu_stats.IMG_SERVICE_MAGIC, criu_stats.STATS_MAGIC)


def test_summarize_full_dump() -> None:
    dump = criu_stats.read_stats_image(FIXTURES / "full-dump" / "stats-dump")["dump"]
    assert criu_stats.summarize_dump_stats(dump) == {
        "freezing_s": 0.000118,
        "frozen_s": 0.013432,
        "memdump_s": 0.007282,
        "memwrite_s": 0.005304,
        "irmap_resolve_s": 0.0,
        "pages_scanned": 2819,
        "pages_skipped_parent": 0,
        "pages_written": 2750,
        "pages_lazy": 0,
        "page_pipes": 8,
        "page_pipe_bufs": 8,
        "shpages_scanned": 0,
        "shpages_skipped_parent": 0,
        "shpages_written": 0,
        # re-recordings' pages-*.img were exactly pages_written * 4096 bytes
        "bytes_written": 11_264_000,
        "page_size": 4096,
        "raw": EXPECTED_RAW["full-dump"]["dump"],
    }


def test_summarize_restore() -> None:
    restore = criu_stats.read_stats_image(FIXTURES / "page-server" / "stats-restore")["restore"]
    assert criu_stats.summarize_restore_stats(restore) == {
        "restore_s": 0.010685,
        "forking_s": 0.000003,
        "pages_compared": 0,
        "pages_skipped_cow": 0,
        "pages_restored": 2750,
        "raw": EXPECTED_RAW["page-server"]["restore"],
    }


def test_summarize_stats_image_page_server_dump() -> None:
    summary = criu_stats.summarize_stats_image(FIXTURES / "page-server" / "stats-dump")
    assert list(summary) == ["dump"]
    assert summary["dump"]["frozen_s"] == 0.225547
    assert summary["dump"]["pages_written"] == 2750
    assert summary["dump"]["bytes_written"] == 2750 * 4096


def test_summarize_page_size_and_missing_fields() -> None:
    summary = criu_stats.summarize_dump_stats({"frozen_time": 1_500_000, "pages_written": 3}, 16384)
    assert summary == {
        "frozen_s": 1.5,
        "pages_written": 3,
        "bytes_written": 3 * 16384,
        "page_size": 16384,
        "raw": {"frozen_time": 1_500_000, "pages_written": 3},
    }
    assert criu_stats.summarize_restore_stats({}) == {"raw": {}}


def test_raw_is_a_copy() -> None:
    dump = {"pages_written": 1}
    criu_stats.summarize_dump_stats(dump)["raw"]["pages_written"] = 99
    assert dump == {"pages_written": 1}


# --- protobuf details ----------------------------------------------------------------------


def test_unknown_fields_of_every_wire_type_are_skipped() -> None:
    dump = b"".join(
        [
            uint_field(1, 300),  # freezing_time, 2-byte varint
            uint_field(99, 2**63),  # unknown varint, 10 bytes
            tag(100, 1) + struct.pack("<Q", 0xDEAD_BEEF_0000_0001),  # unknown fixed64
            uint_field(2, 4_000_000_000),  # frozen_time near the uint32 limit
            message_field(101, uint_field(7, 12345) + b"\x00"),  # unknown bytes, looks like a field
            tag(102, 5) + struct.pack("<I", 7),  # unknown fixed32
            tag(103, 3) + uint_field(7, 5) + tag(103, 4),  # unknown (deprecated) group
            uint_field(7, 2**40),  # pages_written, a uint64
            uint_field(15, 1),  # a field number past CRIU 4.2.1's last one
        ]
    )
    expected = {"freezing_time": 300, "frozen_time": 4_000_000_000, "pages_written": 2**40}
    assert criu_stats.decode_dump_stats(dump) == expected

    entry = uint_field(7, 1) + message_field(1, dump) + message_field(9, b"\xff\xff\x01")
    assert criu_stats.decode_stats_entry(entry) == {"dump": expected}


def test_restore_fields_and_uint32_truncation() -> None:
    restore = (
        uint_field(1, 5)
        + uint_field(2, 6)
        + uint_field(3, 2**32 + 7)  # protobuf keeps the low 32 bits of a uint32
        + uint_field(4, 8)
        + uint_field(5, 9)
    )
    assert criu_stats.decode_restore_stats(restore) == {
        "pages_compared": 5,
        "pages_skipped_cow": 6,
        "forking_time": 7,
        "restore_time": 8,
        "pages_restored": 9,
    }


def test_hand_built_image_with_unknown_fields(tmp_path: Path) -> None:
    entry = message_field(2, uint_field(4, 1_000_000) + uint_field(42, 1)) + uint_field(3, 1)
    image = tmp_path / "stats-restore"
    image.write_bytes(stats_image(entry))
    assert criu_stats.read_stats_image(image) == {"restore": {"restore_time": 1_000_000}}
    assert criu_stats.summarize_stats_image(image) == {
        "restore": {"restore_s": 1.0, "raw": {"restore_time": 1_000_000}}
    }


@pytest.mark.parametrize(
    "message",
    [
        b"\x08",  # tag, then nothing
        b"\x08\x80",  # varint cut short
        b"\x0a\x05\x08\x01",  # length-delimited field longer than the message
        b"\x0d\x01\x02",  # fixed32 cut short
        b"\x09" + b"\x00" * 7,  # fixed64 cut short
        b"\x0f",  # wire type 7 does not exist
        b"\x00\x01",  # field number 0
        b"\x08" + b"\xff" * 10 + b"\x01",  # varint longer than 10 bytes
        b"\x1b\x08\x01",  # group never closed
        b"\x0d\x01\x02\x03\x04",  # a known uint32 field sent as fixed32
    ],
)
def test_malformed_messages_raise(message: bytes) -> None:
    with pytest.raises(criu_stats.ProtobufDecodeError):
        criu_stats.decode_dump_stats(message)


# --- the image framing ---------------------------------------------------------------------


def test_wrong_magic_names_the_file(tmp_path: Path) -> None:
    pstree = tmp_path / "pstree.img"
    pstree.write_bytes(stats_image(b"", head=(criu_stats.IMG_COMMON_MAGIC, 0x50273030)))
    with pytest.raises(criu_stats.CriuImageError) as caught:
        criu_stats.read_stats_image(pstree)
    assert str(pstree) in str(caught.value)
    assert caught.value.path == str(pstree)
    assert "0x50273030 (PSTREE)" in str(caught.value)


def test_raw_pages_image_is_refused(tmp_path: Path) -> None:
    pages = tmp_path / "pages-1.img"
    pages.write_bytes(b"\x00" * 8192)
    with pytest.raises(criu_stats.CriuImageError, match="not a CRIU stats image"):
        criu_stats.read_stats_image(pages)


def test_v1_image_without_head_magic_is_read(tmp_path: Path) -> None:
    image = tmp_path / "stats-dump"
    image.write_bytes(
        stats_image(message_field(1, uint_field(7, 3)), head=(criu_stats.STATS_MAGIC,))
    )
    assert criu_stats.read_stats_image(image) == {"dump": {"pages_written": 3}}


@pytest.mark.parametrize("recording", RECORDINGS)
@pytest.mark.parametrize("kind", ["dump", "restore"])
def test_every_truncation_raises_naming_the_file(tmp_path: Path, recording: str, kind: str) -> None:
    data = (FIXTURES / recording / f"stats-{kind}").read_bytes()
    cut = tmp_path / f"stats-{kind}"
    for length in range(len(data)):
        cut.write_bytes(data[:length])
        with pytest.raises(criu_stats.CriuImageError, match="truncated") as caught:
            criu_stats.read_stats_image(cut)
        assert str(cut) in str(caught.value)


def test_corrupt_payload_names_the_file(tmp_path: Path) -> None:
    image = tmp_path / "stats-dump"
    image.write_bytes(stats_image(b"\x0a\x05\x08"))
    with pytest.raises(criu_stats.CriuImageError, match="bad stats_entry") as caught:
        criu_stats.read_stats_image(image)
    assert str(image) in str(caught.value)


def test_two_entries_are_refused(tmp_path: Path) -> None:
    entry = message_field(1, uint_field(7, 3))
    image = tmp_path / "stats-dump"
    image.write_bytes(stats_image(entry) + struct.pack("<I", len(entry)) + entry)
    with pytest.raises(criu_stats.CriuImageError, match="2 stats entries"):
        criu_stats.read_stats_image(image)


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        criu_stats.read_stats_image(tmp_path / "stats-dump")
