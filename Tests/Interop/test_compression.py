"""gzip compression with gRPC and Connect clients in their usual settings, and a decompression bomb."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import grpc
import pytest
from grpclib.client import Channel as GrpclibChannel
from grpclib.const import Cardinality
from grpclib.encoding.base import CodecBase

from sluice_testlib import (
    GRPC_INVALID_ARGUMENT,
    GRPC_OK,
    GRPC_RESOURCE_EXHAUSTED,
    GRPC_UNIMPLEMENTED,
    SYNTHETIC,
    FrameClient,
    assert_synthetic_messages,
    envelope,
    json_envelope,
)
from streaming_testlib import CHANNEL_OPTIONS, SEND_MESSAGE, send_request

COMPRESSED = 0x01


def stream_text(events: list[dict]) -> str:
    return "".join(event.get("delta", "") for event in events if event["type"] == "message_delta")


def grpcio_events(port: int, request: dict, compression=None) -> list[dict]:
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS, compression=compression) as channel:
        call = channel.unary_stream(SEND_MESSAGE, request_serializer=lambda m: json.dumps(m).encode(),
                                    response_deserializer=json.loads)
        return list(call(request))


def test_grpcio_with_gzip_gets_the_same_text(server):
    request = send_request(seed=7, output_tokens=60)
    plain = grpcio_events(server.port, request)
    compressed = grpcio_events(server.port, request, compression=grpc.Compression.Gzip)
    assert stream_text(compressed) == stream_text(plain) != ""
    assert compressed[-1]["type"] == "stream_complete"


class JSONCodec(CodecBase):
    __content_subtype__ = "json"

    def encode(self, message, message_type):
        return json.dumps(message).encode()

    def decode(self, data, message_type):
        return json.loads(data)


def test_grpclib_streams_large_messages(server):
    """grpclib sends no grpc-accept-encoding (it cannot inflate), so even large messages come uncompressed."""
    async def call():
        channel = GrpclibChannel("127.0.0.1", server.port, codec=JSONCodec())
        try:
            async with channel.request(SYNTHETIC, Cardinality.UNARY_STREAM, dict, dict) as stream:
                await stream.send_message({"frames": 3, "size": 5000}, end=True)
                return [message async for message in stream]
        finally:
            channel.close()

    assert_synthetic_messages(asyncio.run(call()), 3, size=5000)


def test_responses_compressed_from_the_minimum_size(start_server):
    server = start_server("--compress-min-bytes", "2000")
    with FrameClient(server.port) as client:
        result = client.call(SYNTHETIC, json_envelope({"frames": 2, "size": 4000}),
                             headers=[("grpc-accept-encoding", "identity,gzip")])
        small = client.call(SYNTHETIC, json_envelope({"frames": 2, "size": 100}),
                            headers=[("grpc-accept-encoding", "gzip")])
    assert result.grpc_status == GRPC_OK
    assert result.headers["grpc-encoding"] == "gzip"
    assert result.headers["grpc-accept-encoding"] == "gzip,identity"
    assert [flags for flags, _ in result.envelopes] == [COMPRESSED, COMPRESSED]
    messages = [json.loads(gzip.decompress(payload)) for _, payload in result.envelopes]
    assert_synthetic_messages(messages, 2, size=4000)
    assert sum(len(payload) for _, payload in result.envelopes) < 2 * 4000
    assert [flags for flags, _ in small.envelopes] == [0, 0], "below --compress-min-bytes: sent as is"


def gzip_bomb(size: int) -> bytes:
    """`size` zero bytes gzip-compressed in pieces, never holding them all."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    out = [compressor.compress(chunk) for _ in range(size >> 20)]
    return b"".join(out) + compressor.flush()


def test_gzip_bomb_is_refused_and_memory_stays_bounded(server):
    bomb = gzip_bomb(1 << 30)  # 1 GiB inflated, about 1 MiB on the wire
    assert len(bomb) < 4 * 1024 * 1024
    before = server.rss_kib()
    with FrameClient(server.port) as client:
        result = client.call(SEND_MESSAGE, envelope(bomb, flags=COMPRESSED), content_type="application/grpc+json",
                             headers=[("grpc-encoding", "gzip")])
        assert result.grpc_status == GRPC_RESOURCE_EXHAUSTED
        assert "inflates beyond the maximum message size of 4194304 bytes" in result.grpc_message
        # The same connection keeps serving.
        ok = client.call(SYNTHETIC, envelope(gzip.compress(b'{"frames":2}'), flags=COMPRESSED),
                         headers=[("grpc-encoding", "gzip")])
    assert ok.grpc_status == GRPC_OK
    assert_synthetic_messages(ok.messages, 2)
    growth_mib = (server.rss_kib() - before) / 1024
    assert growth_mib < 64, f"the server grew by {growth_mib:.0f} MiB inflating a bomb"


@pytest.mark.parametrize("body, headers, status, text", [
    (envelope(b"not gzip at all", flags=COMPRESSED), [("grpc-encoding", "gzip")], GRPC_INVALID_ARGUMENT,
     "could not be inflated: not valid gzip data"),
    (envelope(gzip.compress(b'{"frames":1}')[:-3], flags=COMPRESSED), [("grpc-encoding", "gzip")],
     GRPC_INVALID_ARGUMENT, "truncated"),
    (json_envelope({"frames": 1}), [("grpc-encoding", "br")], GRPC_UNIMPLEMENTED, "grpc-encoding 'br' is not supported"),
])
def test_bad_compression_is_refused_clearly(server, body, headers, status, text):
    with FrameClient(server.port) as client:
        result = client.call(SYNTHETIC, body, headers=headers)
        assert result.grpc_status == status
        assert text in result.grpc_message
        if status == GRPC_UNIMPLEMENTED:
            assert result.headers["grpc-accept-encoding"] == "gzip,identity"
        assert client.call(SYNTHETIC, json_envelope({"frames": 1})).grpc_status == GRPC_OK
