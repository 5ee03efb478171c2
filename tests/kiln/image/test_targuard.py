"""TarGuard on its own: exact pass-through for safe archives, named refusals for the rest."""

from __future__ import annotations

import os
import random
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.image.errors import UnsafeArchiveError
from kiln.image.targuard import MAX_META_SIZE, TarGuard
from tests.kiln.image.helpers import (
    END,
    entry,
    header_block,
    members,
    padded,
    pax_block,
    tar_bytes,
    with_field,
)


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def random_chunks(data: bytes, seed: int) -> Iterator[bytes]:
    generator = random.Random(seed)  # noqa: S311 - repeatable chunking
    position = 0
    while position < len(data):
        step = generator.choice([1, 2, 100, 511, 512, 513, 1500, 5000, 70_000])
        yield data[position:position + step]
        position += step


def run_guard(data: bytes, pieces: Iterator[bytes | memoryview] | None = None,
              dest: Path | None = None) -> tuple[bytes, TarGuard]:
    """Feed `data` (in `pieces`), finish, and return what the guard released."""
    guard = TarGuard(dest)
    released = bytearray()
    for chunk in pieces if pieces is not None else iter([data]):
        for piece in guard.feed(chunk):
            released += piece
    guard.finish()
    return bytes(released), guard


def feed_into(guard: TarGuard, pieces: Iterator[bytes | memoryview],
              released: bytearray) -> None:
    for chunk in pieces:
        for piece in guard.feed(chunk):
            released += piece
    guard.finish()


def refusal(data: bytes, dest: Path | None = None, chunk_size: int | None = None) -> str:
    pieces = chunks(data, chunk_size or len(data) or 1)
    with pytest.raises(UnsafeArchiveError) as caught:
        feed_into(TarGuard(dest), pieces, bytearray())
    return str(caught.value)


def safe_archive() -> bytes:
    long_dir = "deep/" + "d" * 90 + "/" + "e" * 60
    return tar_bytes(
        entry("./", kind=tarfile.DIRTYPE, mode=0o755),
        entry("etc", kind=tarfile.DIRTYPE),
        entry("etc/empty"),
        entry("etc/one", b"1"),
        entry("etc/block-1", b"x" * 511),
        entry("etc/block", b"y" * 512),
        entry("etc/block+1", b"z" * 513),
        entry("etc/big", bytes(range(256)) * 37),
        entry("etc/link", kind=tarfile.SYMTYPE, linkname="/usr/share/zoneinfo/UTC"),
        entry("etc/hard", kind=tarfile.LNKTYPE, linkname="etc/big"),
        entry("deep", kind=tarfile.DIRTYPE),
        entry(long_dir, kind=tarfile.DIRTYPE),
        entry(long_dir + "/file-with-a-long-name-" + "f" * 80, b"long"),
        entry("naïve ünïcode", b"utf-8"),
        entry("dev/null", kind=tarfile.CHRTYPE),
        entry("dev/fifo", kind=tarfile.FIFOTYPE),
        entry("pax", b"pax data", pax={"comment": "x" * 700, "SCHILY.xattr.user.a": "b"}),
    )


SAFE_MEMBERS = 17


@pytest.mark.parametrize("size", [1, 2, 511, 512, 513, 1024, 4096, 1 << 20])
def test_a_safe_archive_passes_unchanged_whatever_the_chunking(size: int) -> None:
    data = safe_archive()
    released, guard = run_guard(data, chunks(data, size))
    assert released == data
    assert guard.ended
    assert guard.members == SAFE_MEMBERS


@pytest.mark.parametrize("seed", range(5))
def test_a_safe_archive_passes_unchanged_in_random_chunks(seed: int) -> None:
    data = safe_archive()
    released, guard = run_guard(data, random_chunks(data, seed))
    assert released == data
    assert guard.members == SAFE_MEMBERS


def test_gnu_format_archives_pass_too() -> None:
    data = tar_bytes(
        entry("a" * 150, b"long name"),
        entry("b" * 120, kind=tarfile.SYMTYPE, linkname="t" * 130),
        entry("c" * 101, kind=tarfile.LNKTYPE, linkname="a" * 150),
        tar_format=tarfile.GNU_FORMAT,
    )
    assert b"././@LongLink" in data
    released, guard = run_guard(data, chunks(data, 100))
    assert released == data
    assert guard.members == 3


def test_memoryview_chunks_are_accepted() -> None:
    data = safe_archive()
    released, _ = run_guard(data, (memoryview(c) for c in chunks(data, 700)))
    assert released == data


def test_nothing_of_a_refused_member_is_released_before_the_refusal() -> None:
    before = members(entry("a", b"a" * 700), entry("b", b"b" * 100))
    bad = members(entry("c", b"c", pax={"path": "../../etc/cron.d/evil", "mtime": "1.5"}))
    stream = before + bad + END
    for size in (1, 7, 511, 512, 513, 4096, len(stream)):
        released = bytearray()
        with pytest.raises(UnsafeArchiveError, match=r"'\.\.' in path '\.\./\.\./etc/"):
            feed_into(TarGuard(), chunks(stream, size), released)
        # Everything before the refused member's header group may pass; nothing of it does.
        assert stream.startswith(released)
        assert len(released) <= len(before)
        if size == 1:
            assert bytes(released) == before


def test_gnu_long_names_are_read_in_full() -> None:
    # The 100-byte name field holds only a harmless prefix; the long name holds the '..'.
    name = "a" * 120 + "/../../../escape"
    data = tar_bytes(entry(name, b"x"), tar_format=tarfile.GNU_FORMAT)
    assert b"../" not in data[512 * 2: 512 * 2 + 100]
    message = refusal(data, chunk_size=512)
    assert f"refusing member '{name}'" in message


def test_gnu_long_link_names_are_read_in_full() -> None:
    target = "b" * 120 + "/../../../../etc/shadow"
    data = tar_bytes(entry("hard", kind=tarfile.LNKTYPE, linkname=target),
                     tar_format=tarfile.GNU_FORMAT)
    assert f"'..' in path '{target}'" in refusal(data)


def test_pax_path_overrides_the_header_name() -> None:
    data = tar_bytes(entry("harmless", b"x", pax={"path": "../outside"}))
    assert data[1024:1032] == b"harmless"
    assert "refusing member '../outside'" in refusal(data)


def test_pax_linkpath_overrides_the_header_link() -> None:
    data = tar_bytes(entry("h", kind=tarfile.LNKTYPE, linkname="ok",
                           pax={"linkpath": "/etc/shadow"}))
    assert "refusing member 'h': absolute path '/etc/shadow'" in refusal(data)


def test_global_pax_headers_apply_to_later_members() -> None:
    data = pax_block({"path": "/etc/passwd"}, kind=tarfile.XGLTYPE) + tar_bytes(entry("x"))
    assert "absolute path '/etc/passwd'" in refusal(data)


def test_a_second_pax_header_replaces_the_first() -> None:
    # GNU tar decodes only the last 'x' header before a member: it would write /etc/evil.
    data = (pax_block({"path": "harmless"}) + pax_block({"comment": "c"})
            + header_block("/etc/evil", 0) + END)
    assert "refusing member '/etc/evil'" in refusal(data)


def test_a_second_global_header_replaces_the_first() -> None:
    data = (pax_block({"path": "harmless"}, kind=tarfile.XGLTYPE)
            + pax_block({"comment": "c"}, kind=tarfile.XGLTYPE)
            + header_block("../evil", 0) + END)
    assert "refusing member '../evil'" in refusal(data)


def test_ustar_prefix_is_part_of_the_name() -> None:
    long_name = "p" * 120 + "/name"
    data = tar_bytes(entry(long_name, b"x"), tar_format=tarfile.USTAR_FORMAT)
    released, guard = run_guard(data)
    assert released == data and guard.members == 1
    block = header_block("name", 1)
    crafted = with_field(block, 345, b"../../..\x00") + padded(b"x") + END
    assert "refusing member '../../../name'" in refusal(crafted)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("/etc/passwd", "absolute path '/etc/passwd'"),
        ("../evil", "'..' in path '../evil'"),
        ("ok/../../evil", "'..' in path 'ok/../../evil'"),
        ("./a/./../../b", "'..' in path './a/./../../b'"),
    ],
)
def test_paths_outside_dest(name: str, problem: str) -> None:
    message = refusal(tar_bytes(entry("fine", b"1"), entry(name, b"x")))
    assert f"refusing member '{name}'" in message
    assert problem in message


def test_dot_slash_and_repeated_slashes_are_fine() -> None:
    data = tar_bytes(entry("./a", kind=tarfile.DIRTYPE), entry(".//a//b/", kind=tarfile.DIRTYPE),
                     entry("./a/./b/c", b"ok"))
    _, guard = run_guard(data)
    assert guard.members == 3


def test_symlink_escape() -> None:
    data = tar_bytes(entry("a", kind=tarfile.SYMTYPE, linkname="/tmp/x"), entry("a/evil", b"x"))
    message = refusal(data)
    assert "refusing member 'a/evil'" in message
    assert "'a', a symlink earlier in the archive" in message


def test_symlink_escape_deeper_and_relative() -> None:
    data = tar_bytes(
        entry("d", kind=tarfile.DIRTYPE),
        entry("d/up", kind=tarfile.SYMTYPE, linkname="../.."),
        entry("d/up/x/y", b"x"),
    )
    assert "it goes through 'd/up'" in refusal(data)


def test_a_symlink_name_reused_later_is_still_refused_as_a_parent() -> None:
    data = tar_bytes(
        entry("a", kind=tarfile.SYMTYPE, linkname="/etc"),
        entry("a", kind=tarfile.DIRTYPE),
        entry("a/cron", b"x"),
    )
    assert "refusing member 'a/cron'" in refusal(data)


def test_hard_link_outside() -> None:
    data = tar_bytes(entry("h", kind=tarfile.LNKTYPE, linkname="../outside"))
    message = refusal(data)
    assert "refusing member 'h'" in message and "'..' in path '../outside'" in message


def test_hard_link_to_dest_itself() -> None:
    data = tar_bytes(entry("h", kind=tarfile.LNKTYPE, linkname="./"))
    assert "refusing member 'h': hard link to DEST" in refusal(data)


def test_hard_link_through_a_symlink() -> None:
    data = tar_bytes(
        entry("s", kind=tarfile.SYMTYPE, linkname="/etc"),
        entry("h", kind=tarfile.LNKTYPE, linkname="s/shadow"),
    )
    assert "refusing member 'h': it goes through 's'" in refusal(data)


def test_hard_link_to_a_symlink_is_a_symlink_too() -> None:
    # link(2) on a symlink makes a second symlink: "d" points where "s" points.
    data = tar_bytes(
        entry("s", kind=tarfile.SYMTYPE, linkname="/etc"),
        entry("d", kind=tarfile.LNKTYPE, linkname="s"),
        entry("d/cron.d/evil", b"x"),
    )
    assert "refusing member 'd/cron.d/evil': it goes through 'd'" in refusal(data)


def test_existing_symlink_in_dest_used_as_a_parent(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(tmp_path / "outside", dest / "link")
    data = tar_bytes(entry("fine", b"1"), entry("link/evil", b"x"))
    message = refusal(data, dest=dest)
    assert "refusing member 'link/evil': 'link' is a symlink already in" in message
    run_guard(data)  # without a DEST to look at, the same stream is fine


def test_hard_link_to_an_existing_symlink_in_dest(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(tmp_path / "outside", dest / "existing")
    data = tar_bytes(entry("d", kind=tarfile.LNKTYPE, linkname="existing"),
                     entry("d/evil", b"x"))
    assert "refusing member 'd/evil': it goes through 'd'" in refusal(data, dest=dest)


def test_a_file_below_an_existing_file_in_dest_is_left_to_tar(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "file").write_text("x")
    data = tar_bytes(entry("file/a/b", b"x"))
    released, _ = run_guard(data, dest=dest)  # tar fails on it; the guard must not crash
    assert released == data


def test_corrupt_header_checksum() -> None:
    data = bytearray(members(entry("first", b"1" * 600), entry("second", b"2"),
                             tar_format=tarfile.USTAR_FORMAT) + END)
    second = 512 + 1024  # after "first": its header and two blocks of data
    assert data[second:second + 6] == b"second"
    data[second + 3] ^= 0x01
    assert refusal(bytes(data), chunk_size=100) == f"corrupt tar header at byte {second}"


def test_archive_without_end_marker() -> None:
    data = members(entry("a", b"x" * 1000))
    guard = TarGuard()
    released = b"".join(bytes(p) for p in guard.feed(data))
    assert released == data
    with pytest.raises(UnsafeArchiveError, match="without its end-of-archive marker"):
        guard.finish()


def test_archive_cut_inside_member_data() -> None:
    data = tar_bytes(entry("a", b"x" * 5000))[:2000]
    with pytest.raises(UnsafeArchiveError, match="ends at byte 2000 without its end-of-archive"):
        run_guard(data)


def test_extended_header_followed_by_the_end_marker() -> None:
    data = pax_block({"path": "x"}) + END
    assert "is followed by the end marker" in refusal(data)


def test_oversized_extended_header() -> None:
    block = header_block("PaxHeaders/x", MAX_META_SIZE + 1, kind=tarfile.XHDTYPE)
    assert "is too large" in refusal(block + END)


@pytest.mark.parametrize(
    "records",
    [
        b"99 path=abc\n",  # longer than the header: GNU tar ignores it, keeps the ustar name
        b"12  path=abc\n",  # GNU tar skips both blanks and reads "path"
        b"11 path=abc",  # no newline
        b"12 path=abc\n\n",  # length and record disagree
        b"13 pa\x00th=abc\n",
        b"1_2 path=ab\n",
        b" 12 path=ab\n",
        b"11 pathabc\n\n",
        b"0 path=abc\n",
    ],
)
def test_pax_records_gnu_tar_would_read_otherwise_are_refused(records: bytes) -> None:
    block = header_block("PaxHeaders/x", len(records), kind=tarfile.XHDTYPE)
    data = block + padded(records) + header_block("x", 0) + END
    assert refusal(data) == "corrupt pax extended header"


def test_pax_values_may_hold_blanks_equals_signs_and_newlines() -> None:
    data = pax_block({"comment": "a b=c\nd", "path": "ok/x=y z"}) + header_block("x", 0) + END
    _, guard = run_guard(data)
    assert guard.members == 1
    data = pax_block({"comment": "a b=c\nd", "path": "../x=y z"}) + header_block("x", 0) + END
    assert "refusing member '../x=y z'" in refusal(data)


@pytest.mark.parametrize(
    ("kind", "label"),
    [(b"S", "S"), (b"V", "V"), (b"M", "M"), (b"D", "D"), (b"N", "N"), (b"Z", "Z")],
)
def test_member_types_that_could_desynchronize_the_stream(kind: bytes, label: str) -> None:
    data = header_block("odd", 0, kind=kind) + END
    assert f"member 'odd': unsupported tar member type '{label}'" in refusal(data)


def test_sparse_members_via_pax_are_refused() -> None:
    data = tar_bytes(entry("sparse", b"x", pax={"GNU.sparse.major": "1",
                                                 "GNU.sparse.minor": "0"}))
    assert "member 'sparse': sparse members are not supported" in refusal(data)


@pytest.mark.parametrize(
    ("kind", "label"),
    [(tarfile.SYMTYPE, "symlink"), (tarfile.LNKTYPE, "hard link"),
     (tarfile.DIRTYPE, "directory"), (tarfile.CHRTYPE, "character device"),
     (tarfile.FIFOTYPE, "fifo")],
)
def test_members_without_data_must_not_carry_any(kind: bytes, label: str) -> None:
    # GNU tar reads no data for these: the "data" would be taken for the next header.
    data = header_block("m", 512, kind=kind, linkname="t") + b"\x00" * 512 + END
    name = "m/" if kind == tarfile.DIRTYPE else "m"  # tarfile writes directories so
    assert f"member '{name}': a {label} must not carry 512 bytes of data" in refusal(data)


def test_a_regular_member_named_like_a_directory_is_a_directory() -> None:
    # GNU tar extracts "x/" of type '0' as a directory and reads the next bytes as headers.
    hidden = header_block("hidden", 5) + padded(b"hello")
    data = header_block("x/", len(hidden)) + hidden + END
    assert "member 'x/': a directory must not carry 1024 bytes of data" in refusal(data)
    data = header_block("y/", 0) + tar_bytes(entry("y/z", b"ok"))
    _, guard = run_guard(data)
    assert guard.members == 2


def test_a_regular_member_whose_pax_path_ends_in_a_slash() -> None:
    data = pax_block({"path": "x/"}) + header_block("x", 512) + b"\x00" * 512 + END
    assert "a directory must not carry 512 bytes" in refusal(data)


def test_files_and_links_as_the_archive_root_are_refused() -> None:
    data = tar_bytes(entry(".", b"x"))
    assert refusal(data) == "refusing a file as the archive root"
    data = tar_bytes(entry("./", kind=tarfile.SYMTYPE, linkname="/"))
    assert refusal(data) == "refusing a symlink as the archive root"


def test_empty_names_are_refused() -> None:
    data = header_block("", 0) + END
    assert "empty or NUL in a path" in refusal(data)


def test_base_256_sizes_are_read() -> None:
    block = header_block("big", 0)
    size = b"\x80" + (700).to_bytes(11, "big")
    data = with_field(block, 124, size) + padded(b"d" * 700) + END
    released, guard = run_guard(data)
    assert released == data and guard.members == 1


@pytest.mark.parametrize(
    ("field", "problem"),
    [
        (b"\xff" + b"\xff" * 11, "negative size in a tar header"),
        (b"\x81" + b"\x00" * 11, "corrupt size"),  # GNU tar reads base-256 from 0x80/0xff only
        (b"\x80" + b"\xff" * 11, f"size {2**88 - 1} in a tar header is out of range"),
        (b"+0\x00", "corrupt size b'+0'"),  # GNU tar reads this as base-64: 52 bytes
        (b"0o17\x00", "corrupt size b'0o17'"),
        (b"1_000\x00", "corrupt size b'1_000'"),
        (b"18\x00", "corrupt size b'18'"),
        (b"-1\x00", "corrupt size b'-1'"),
    ],
)
def test_numeric_fields_are_read_as_gnu_tar_reads_them_or_refused(field: bytes,
                                                                  problem: str) -> None:
    data = with_field(header_block("f", 0), 124, field.ljust(12, b"\x00")) + END
    assert problem in refusal(data)


def test_pax_size_decides_where_the_next_header_is() -> None:
    body = b"s" * 600
    data = (pax_block({"size": "600"}) + header_block("f", 0) + padded(body)
            + tar_bytes(entry("next", b"n")))
    _, guard = run_guard(data, chunks(data, 97))
    assert guard.members == 2


@pytest.mark.parametrize(
    "value", ["+600", " 600", "6_00", "600 ", "0x258", "\uff16\uff10\uff10", ""]
)
def test_pax_sizes_gnu_tar_would_ignore_are_refused(value: str) -> None:
    data = pax_block({"size": value}) + header_block("f", 0) + END
    assert f"member 'f': corrupt pax size {value!r}" in refusal(data)


def test_a_global_pax_size_applies_like_gnu_tar_applies_it() -> None:
    # The 512 bytes after "f" are its data (GNU tar agrees), so the bad header in them is data.
    bait = header_block("/etc/passwd", 0)
    data = pax_block({"size": "512"}, kind=tarfile.XGLTYPE) + header_block("f", 0) + bait + END
    _, guard = run_guard(data)
    assert guard.members == 1
