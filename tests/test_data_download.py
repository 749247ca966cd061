"""The MNIST downloader against a loopback HTTP server (127.0.0.1, never the internet).

The server serves generated .gz files and can corrupt them, cut transfers short, honour or
ignore Range requests, or not be there at all; the tests pass their own SHA-256 table.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from ddchm.data.download import (
    MNIST_FILES,
    MNIST_SHA256,
    ChecksumError,
    DownloadError,
    default_cache_dir,
    download_mnist,
    fetch_file,
)
from ddchm.data.idx import encode_idx
from ddchm.data.mnist import load_mnist


@functools.cache
def _fake_archives(n_train=10_010, n_test=7, seed=0) -> dict[str, bytes]:
    """Four small gzip IDX files in the MNIST layout (sparse images compress well)."""
    rng = np.random.default_rng(seed)

    def images(n):
        x = np.zeros((n, 28, 28), dtype=np.uint8)
        x[:, 10:14, 10:14] = rng.integers(0, 256, size=(n, 4, 4), dtype=np.uint8)
        return x

    arrays = {
        "train-images-idx3-ubyte.gz": images(n_train),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": images(n_test),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    return {name: gzip.compress(encode_idx(a), mtime=0) for name, a in arrays.items()}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server API)
        server = self.server
        header = self.headers.get("Range")
        server.requests.append((self.path, header))
        name = self.path.rsplit("/", 1)[-1]
        if name not in server.files:
            self.send_error(404, "not found")
            return
        body = server.files[name]
        if server.corrupt:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        start = 0
        if header and server.support_range:
            start = int(header.split("=", 1)[1].split("-", 1)[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if server.truncate > 0:
            server.truncate -= 1
            payload = payload[: len(payload) // 2]  # then the connection closes (HTTP/1.0)
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files = dict(_fake_archives())
    httpd.requests = []
    httpd.corrupt = False
    httpd.support_range = True
    httpd.truncate = 0
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/mnist/"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def dead_url():
    """A loopback URL on a port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


def _hashes(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(body).hexdigest() for name, body in files.items()}


def _fetch(server, tmp_path, name="t10k-labels-idx1-ubyte.gz", mirrors=None, **kwargs):
    kwargs.setdefault("retry_wait", 0)
    kwargs.setdefault("timeout", 5)
    return fetch_file(
        name,
        mirrors or [server.url],
        tmp_path,
        _hashes(server.files)[name],
        **kwargs,
    )


def test_real_hash_table_is_the_default():
    assert set(MNIST_FILES) == set(MNIST_SHA256) and len(MNIST_FILES) == 4
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in MNIST_SHA256.values())
    assert download_mnist.__kwdefaults__["hashes"] is MNIST_SHA256


def test_download_all_then_load(server, tmp_path):
    cache = tmp_path / "mnist"
    seen = []
    result = download_mnist(
        cache,
        mirrors=[server.url],
        hashes=_hashes(server.files),
        retry_wait=0,
        timeout=5,
        progress=lambda name, done, total: seen.append((name, done, total)),
    )
    assert result == cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(server.files)
    for name, body in server.files.items():
        assert (cache / name).read_bytes() == body
    assert {name for name, _, _ in seen} == set(server.files)
    x, y = load_mnist("valid", binarize=None, data_dir=cache, return_labels=True)
    assert x.shape == (10_000, 784) and x.dtype == np.float32 and y.shape == (10_000,)
    assert load_mnist("train", data_dir=cache).shape == (10, 784)
    assert load_mnist("test", data_dir=cache).shape == (7, 784)
    # A second call finds verified files and makes no request at all.
    count = len(server.requests)
    download_mnist(cache, mirrors=[server.url], hashes=_hashes(server.files), retry_wait=0)
    assert len(server.requests) == count


def test_corrupt_file_fails_loudly_and_caches_nothing(server, tmp_path):
    server.corrupt = True
    with pytest.raises(ChecksumError) as info:
        _fetch(server, tmp_path)
    message = str(info.value)
    assert server.url in message and "SHA-256" in message
    assert list(tmp_path.iterdir()) == []  # neither the file nor a .part


def test_truncated_transfer_resumes_with_range(server, tmp_path):
    name = "t10k-images-idx3-ubyte.gz"
    server.truncate = 1
    path = _fetch(server, tmp_path, name)
    assert path.read_bytes() == server.files[name]
    assert not (tmp_path / (name + ".part")).exists()
    (_, first), (_, second) = server.requests
    assert first is None
    assert second == f"bytes={len(server.files[name]) // 2}-"


def test_truncated_transfer_restarts_when_range_is_ignored(server, tmp_path):
    name = "t10k-images-idx3-ubyte.gz"
    server.truncate = 1
    server.support_range = False
    path = _fetch(server, tmp_path, name)
    assert path.read_bytes() == server.files[name]
    assert len(server.requests) == 2 and server.requests[1][1] is not None  # asked, got 200


def test_always_truncated_gives_clean_error(server, tmp_path):
    name = "t10k-images-idx3-ubyte.gz"
    server.truncate = 100
    with pytest.raises(DownloadError) as info:
        _fetch(server, tmp_path, name, attempts=2)
    assert not isinstance(info.value, ChecksumError)
    assert server.url + name in str(info.value) and "connection closed after" in str(info.value)
    assert not (tmp_path / name).exists()  # only a .part, which says it is partial
    assert (tmp_path / (name + ".part")).stat().st_size < len(server.files[name])


def test_existing_part_is_resumed(server, tmp_path):
    name = "train-labels-idx1-ubyte.gz"
    body = server.files[name]
    (tmp_path / (name + ".part")).write_bytes(body[:100])
    path = _fetch(server, tmp_path, name)
    assert path.read_bytes() == body
    assert server.requests == [("/mnist/" + name, "bytes=100-")]


def test_stale_part_is_discarded(server, tmp_path):
    name = "train-labels-idx1-ubyte.gz"
    body = server.files[name]
    (tmp_path / (name + ".part")).write_bytes(b"\x00" * 100)  # wrong bytes from elsewhere
    path = _fetch(server, tmp_path, name)
    assert path.read_bytes() == body
    assert [r for _, r in server.requests] == ["bytes=100-", None]


def test_overlong_part_gets_416_then_restarts(server, tmp_path):
    name = "t10k-labels-idx1-ubyte.gz"
    body = server.files[name]
    (tmp_path / (name + ".part")).write_bytes(body + b"junk")
    assert _fetch(server, tmp_path, name).read_bytes() == body


def test_server_down_names_the_mirror(dead_url, tmp_path):
    with pytest.raises(DownloadError) as info:
        fetch_file("t10k-labels-idx1-ubyte.gz", [dead_url], tmp_path, "0" * 64, retry_wait=0)
    assert dead_url + "t10k-labels-idx1-ubyte.gz" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_next_mirror_is_tried_and_all_failures_listed(server, dead_url, tmp_path):
    path = _fetch(server, tmp_path, mirrors=[dead_url, server.url])
    assert path.exists()
    missing_url = server.url.replace("/mnist/", "/nothing-here/")
    with pytest.raises(DownloadError) as info:
        fetch_file("absent.gz", [dead_url, missing_url], tmp_path, "0" * 64, retry_wait=0)
    message = str(info.value)
    assert dead_url + "absent.gz" in message and missing_url + "absent.gz" in message
    assert "404" in message


def test_damaged_cached_file_is_fetched_again(server, tmp_path):
    name = "t10k-labels-idx1-ubyte.gz"
    (tmp_path / name).write_bytes(b"damaged")
    assert _fetch(server, tmp_path, name).read_bytes() == server.files[name]


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DDCHM_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "mnist"
    monkeypatch.delenv("DDCHM_CACHE")
    assert default_cache_dir("x").parts[-3:] == (".cache", "ddchm", "x")
