"""Reading images over real loopback HTTP, with the server misbehaving on purpose."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from kiln.image.errors import FrameError, ImageError, SourceError
from kiln.image.extract import extract
from kiln.image.http import HttpSource
from kiln.image.reader import ImageReader, TruncatedFrameError
from kiln.image.signing import SigningKey, TrustStore
from kiln.image.source import RetryPolicy, open_source
from tests.kiln.image.helpers import (
    FRAME_SIZE,
    BuiltImage,
    make_image_from_payload,
    random_files,
    read_until_error,
    silent_flip,
    tar_of_files,
)
from tests.kiln.image.httpserver import FaultyServer

FILES = random_files([50_000, 90_000, 20_000, 120_000, 60_000])


@pytest.fixture(scope="module")
def image_and_layout(signing_key: SigningKey) -> tuple[BuiltImage, dict[str, tuple[int, int]]]:
    payload, placed = tar_of_files(FILES)
    image = make_image_from_payload(payload, signing_key, FRAME_SIZE)
    assert len(image.frames) == 6
    return image, {name: (p.start, p.end) for name, p in placed.items()}


@pytest.fixture
def image(image_and_layout: tuple[BuiltImage, dict[str, tuple[int, int]]]) -> BuiltImage:
    return image_and_layout[0]


def open_http(url: str, trust: TrustStore, retry: RetryPolicy) -> ImageReader:
    reader = ImageReader.open(url, trust, retry=retry)
    assert isinstance(reader.source, HttpSource)
    return reader


def frame_starts(image: BuiltImage) -> set[int]:
    return {image.frame_start(i) for i in range(len(image.frames))}


def test_open_source_picks_http_for_urls() -> None:
    source = open_source("http://127.0.0.1:9/x.upd")
    assert isinstance(source, HttpSource)
    source.close()


def test_a_clean_download_is_one_streaming_request(
    http_server: FaultyServer, image: BuiltImage, trust: TrustStore, fast_retry: RetryPolicy
) -> None:
    url = http_server.serve("image.upd", image.data)
    with open_http(url, trust, fast_retry) as reader:
        assert b"".join(reader.payload()) == image.payload
        assert reader.source.size() == len(image.data)
        assert isinstance(reader.source, HttpSource)
        assert reader.source.resumes == 0
    assert [(r.range, r.status) for r in http_server.requests] == [("bytes=0-", 206)]


def test_verify_over_http_checks_the_size_too(
    http_server: FaultyServer, image: BuiltImage, trust: TrustStore, fast_retry: RetryPolicy
) -> None:
    url = http_server.serve("long.upd", image.data + b"trailing")
    with (
        open_http(url, trust, fast_retry) as reader,
        pytest.raises(ImageError, match="8 unexpected bytes after the last frame"),
    ):
        reader.verify()


@pytest.mark.parametrize("index", [0, 2, 5])
def test_a_dropped_connection_resumes_at_the_frame_boundary(
    http_server: FaultyServer, image: BuiltImage, trust: TrustStore, fast_retry: RetryPolicy,
    index: int,
) -> None:
    cut = image.frame_start(index) + image.manifest.frames[index].length // 3
    http_server.faults.drops = [cut]
    url = http_server.serve("image.upd", image.data)
    with open_http(url, trust, fast_retry) as reader:
        assert b"".join(reader.payload()) == image.payload
        assert isinstance(reader.source, HttpSource)
        assert reader.source.resumes == 1
    resumed = http_server.resumes()
    assert [r.range for r in resumed] == [f"bytes={image.frame_start(index)}-"]
    assert resumed[0].if_range == FaultyServer.etag(image.data)
    assert resumed[0].status == 206


def test_many_drops_each_resume_where_the_frame_began(
    http_server: FaultyServer, image: BuiltImage, trust: TrustStore, fast_retry: RetryPolicy
) -> None:
    # Each cut is counted from the start of its own response.
    first = image.frame_start(1) + 100
    second = image.frame_end(3) - 10 - image.frame_start(1)
    third = image.frame_start(4) - image.frame_start(3) + 5
    http_server.faults.drops = [first, second, third]
    url = http_server.serve("image.upd", image.data)
    with open_http(url, trust, fast_retry) as reader:
        reader.verify()
        assert b"".join(reader.payload()) == image.payload
    starts = [r.range_start for r in http_server.resumes()]
    assert starts[:3] == [image.frame_start(1), image.frame_start(3), image.frame_start(4)]
    assert set(starts) <= frame_starts(image)
    assert 0 not in starts


def test_a_stalled_response_times_out_and_resumes(
    http_server: FaultyServer, image: BuiltImage, trust: TrustStore
) -> None:
    retry = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.01, connect_timeout=2,
                        read_timeout=0.3)
    http_server.faults.stalls = [(image.frame_start(2) + 1000, 1.5)]
    url = http_server.serve("image.upd", image.data)
    with open_http(url, trust, retry) as reader:
        assert b"".join(reader.payload()) == image.payload
    assert [r.range_start for r in http_server.resumes()] == [image.frame_start(2)]


@pytest.mark.allow_commands("tar")
def test_extraction_over_a_dropping_connection_is_byte_identical(
    http_server: FaultyServer, image: BuiltImage, trust: TrustStore, fast_retry: RetryPolicy,
    tmp_path: Path,
) -> None:
    http_server.faults.drops = [image.frame_start(2) + 777, 30_000, 5]
    url = http_server.serve("image.upd", image.data)
    dest = tmp_path / "dest"
    dest.mkdir()
    with open_http(url, trust, fast_retry) as reader:
        result = extract(reader, dest)
        assert isinstance(reader.source, HttpSource)
        assert reader.source.resumes == 3
    assert result.payload_bytes == len(image.payload)
    assert sorted(p.name for p in dest.iterdir()) == sorted(name for name, _ in FILES)
    for name, data in FILES:
        assert (dest / name).read_bytes() == data


def test_wrong_bytes_on_resume_are_caught_and_never_used(
    http_server: FaultyServer, image: BuiltImage, trust: TrustStore, fast_retry: RetryPolicy
) -> None:
    index = 3
    http_server.faults.drops = [image.frame_start(index) + 500]
    # A change zstd would not notice: only the frame's sha256 can catch it.
    http_server.faults.wrong_on_resume = {image.frame_start(index) + silent_flip(
        image.frames[index], image.manifest.frame_output_size(index))}
    url = http_server.serve("image.upd", image.data)
    with open_http(url, trust, fast_retry) as reader:
        received, error = read_until_error(reader)
    assert isinstance(error, FrameError)
    assert type(error) is FrameError
    assert error.index == index
    assert str(error).startswith(f"frame {index}: sha256 mismatch")
    assert received == image.payload[: index * FRAME_SIZE]
    # The resume, then one fresh re-read of the frame, both at its first byte.
    assert [r.range_start for r in http_server.resumes()] == [image.frame_start(index)] * 2


@pytest.mark.allow_commands("tar")
def test_wrong_bytes_on_resume_never_reach_tar(
    http_server: FaultyServer,
    image_and_layout: tuple[BuiltImage, dict[str, tuple[int, int]]],
    trust: TrustStore, fast_retry: RetryPolicy, tmp_path: Path,
) -> None:
    image, layout = image_and_layout
    index = 4
    http_server.faults.drops = [image.frame_start(index) + 10]
    http_server.faults.wrong_on_resume = {image.frame_start(index) + silent_flip(
        image.frames[index], image.manifest.frame_output_size(index))}
    url = http_server.serve("image.upd", image.data)
    dest = tmp_path / "dest"
    dest.mkdir()
    with (
        open_http(url, trust, fast_retry) as reader,
        pytest.raises(FrameError, match=f"^frame {index}: sha256 mismatch"),
    ):
        extract(reader, dest)
    contents = dict(FILES)
    for name, (start, _) in layout.items():
        if start >= index * FRAME_SIZE:
            assert not (dest / name).exists()
        elif (dest / name).exists():
            assert contents[name].startswith((dest / name).read_bytes())


def test_a_frame_that_fails_its_check_once_is_read_again(
    http_server: FaultyServer, image: BuiltImage, trust: TrustStore, fast_retry: RetryPolicy
) -> None:
    # Only the first resumed response is wrong; the fresh re-read of the frame is right.
    index = 2
    http_server.faults.drops = [image.frame_start(index) + 50]
    http_server.faults.wrong_on_resume = {image.frame_start(index) + 100}
    http_server.faults.wrong_responses = 1
    url = http_server.serve("image.upd", image.data)
    with open_http(url, trust, fast_retry) as reader:
        assert b"".join(reader.payload()) == image.payload
    assert [r.range_start for r in http_server.resumes()] == [image.frame_start(index)] * 2


def test_404_fails_at_once_naming_the_status(
    http_server: FaultyServer, trust: TrustStore, fast_retry: RetryPolicy
) -> None:
    url = f"{http_server.base_url}/missing.upd"
    with pytest.raises(SourceError) as caught:
        ImageReader.open(url, trust, retry=fast_retry)
    assert "HTTP 404 Not Found" in str(caught.value)
    assert url in str(caught.value)
    assert len(http_server.requests) == 1


def test_500_is_retried_with_back_off_then_named(
    http_server: FaultyServer, image: BuiltImage, trust: TrustStore
) -> None:
    retry = RetryPolicy(attempts=4, first_delay=0.05, max_delay=0.1, connect_timeout=2,
                        read_timeout=2)
    http_server.faults.always_status = 500
    url = http_server.serve("image.upd", image.data)
    started = time.monotonic()
    with pytest.raises(SourceError) as caught:
        ImageReader.open(url, trust, retry=retry)
    elapsed = time.monotonic() - started
    assert "giving up after 4 attempts at byte 0: HTTP 500 Internal Server Error" in str(
        caught.value)
    assert len(http_server.requests) == 4
    assert elapsed >= retry.delay(1) + retry.delay(2) + retry.delay(3)  # 0.05 + 0.1 + 0.1


def test_transient_server_errors_are_survived(
    http_server: FaultyServer, image: BuiltImage, trust: TrustStore, fast_retry: RetryPolicy
) -> None:
    http_server.faults.statuses = [503, 500]
    url = http_server.serve("image.upd", image.data)
    with open_http(url, trust, fast_retry) as reader:
        assert b"".join(reader.payload()) == image.payload
    assert [r.status for r in http_server.requests] == [503, 500, 206]


def test_back_off_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(first_delay=0.5, max_delay=3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_a_server_that_is_not_there(trust: TrustStore, fast_retry: RetryPolicy) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SourceError, match="giving up after 4 attempts at byte 0: request failed"):
        ImageReader.open(f"http://127.0.0.1:{port}/image.upd", trust, retry=fast_retry)


def test_the_file_changed_on_the_server_between_drop_and_resume(
    http_server: FaultyServer, image: BuiltImage, trust: TrustStore, fast_retry: RetryPolicy,
    signing_key: SigningKey,
) -> None:
    newer = make_image_from_payload(image.payload, signing_key, FRAME_SIZE, build=2)
    http_server.faults.drops = [image.frame_start(1) + 10]
    http_server.faults.swap_after_drop = {"image.upd": newer.data}
    url = http_server.serve("image.upd", image.data)
    with open_http(url, trust, fast_retry) as reader:
        received, error = read_until_error(reader)
    assert isinstance(error, SourceError)
    assert "the file changed on the server, or it does not support ranges" in str(error)
    assert received == image.payload[:FRAME_SIZE]
    (resume,) = http_server.resumes()
    assert resume.if_range == FaultyServer.etag(image.data)
    assert resume.status == 200


def test_a_server_that_ignores_ranges_cannot_resume(
    http_server: FaultyServer, image: BuiltImage, trust: TrustStore, fast_retry: RetryPolicy
) -> None:
    http_server.faults.ignore_range = True
    http_server.faults.drops = [image.frame_start(2) + 10]
    url = http_server.serve("image.upd", image.data)
    with open_http(url, trust, fast_retry) as reader:
        _, error = read_until_error(reader)
    assert isinstance(error, SourceError)
    assert f"request for byte {image.frame_start(2)} onwards with the whole file" in str(error)


def test_a_server_that_answers_the_wrong_range(
    http_server: FaultyServer, image: BuiltImage, trust: TrustStore, fast_retry: RetryPolicy
) -> None:
    http_server.faults.shift_range = 512
    http_server.faults.drops = [image.frame_start(1) + 10]
    url = http_server.serve("image.upd", image.data)
    with open_http(url, trust, fast_retry) as reader:
        _, error = read_until_error(reader)
    start = image.frame_start(1)
    assert isinstance(error, SourceError)
    assert (f"asked for byte {start} onwards, got Content-Range "
            f"'bytes {start + 512}-{len(image.data) - 1}/{len(image.data)}'") in str(error)


def test_a_truncated_file_on_the_server_names_the_frame(
    http_server: FaultyServer, image: BuiltImage, trust: TrustStore, fast_retry: RetryPolicy
) -> None:
    url = http_server.serve("short.upd", image.data[: image.frame_start(5) + 40])
    with open_http(url, trust, fast_retry) as reader, pytest.raises(TruncatedFrameError) as caught:
        reader.verify()
    assert caught.value.index == 5
    assert str(caught.value).startswith("frame 5: cut off")


def test_a_file_missing_whole_frames_on_the_server(
    http_server: FaultyServer, image: BuiltImage, trust: TrustStore, fast_retry: RetryPolicy
) -> None:
    url = http_server.serve("short.upd", image.data[: image.frame_start(4)])
    with open_http(url, trust, fast_retry) as reader:
        received, error = read_until_error(reader)
    assert isinstance(error, TruncatedFrameError)
    assert error.index == 4
    assert received == image.payload[: 4 * FRAME_SIZE]
