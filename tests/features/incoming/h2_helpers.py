"""Real HTTP/2 and gRPC servers and clients for the HTTP/2 filter tests: Node's built-in
`http2` module (a real prior-knowledge server and client) and grpcio (from the venv)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator

from mirrord.features.incoming.client import IncomingConnection, Subscription
from mirrord.testpod import Pod

# argv: port name. Answers every stream with `name:path:x-user:body-length`, an `x-from`
# header and an `x-side` trailer; prints "REQ path x-user" per stream.
NODE_H2_SERVER = r"""
const http2 = require('http2');
const [port, name] = [Number(process.argv[1]), process.argv[2]];
const srv = http2.createServer();
srv.on('stream', (stream, headers) => {
  const user = headers['x-user'] || '-';
  console.log('REQ', headers[':path'], user);
  let n = 0;
  stream.on('data', (d) => { n += d.length; });
  stream.on('end', () => {
    stream.respond({':status': 200, 'x-from': name}, {waitForTrailers: true});
    stream.on('wantTrailers', () => stream.sendTrailers({'x-side': name}));
    stream.end(`${name}:${headers[':path']}:${user}:${n}`);
  });
});
srv.listen(port, '0.0.0.0', () => console.log('LISTENING', srv.address().port));
"""

# argv: host port json-list-of-[path, headers, body-length]. Every request on ONE session,
# all in flight at once; prints a JSON list of {status, from, body, trailers}.
NODE_H2_CLIENT = r"""
const http2 = require('http2');
const [host, port, reqs] = [process.argv[1], process.argv[2], JSON.parse(process.argv[3])];
const session = http2.connect(`http://${host}:${port}`);
session.on('error', (e) => { console.error(e); process.exit(2); });
const one = ([path, headers, size]) => new Promise((resolve, reject) => {
  const req = session.request({':method': 'POST', ':path': path, ...headers});
  const out = {status: 0, from: null, body: '', trailers: null};
  req.on('response', (h) => { out.status = h[':status']; out.from = h['x-from']; });
  req.on('trailers', (t) => { out.trailers = t['x-side']; });
  req.setEncoding('utf8');
  req.on('data', (d) => { out.body += d; });
  req.on('end', () => resolve(out));
  req.on('error', reject);
  req.end(Buffer.alloc(size, 'x'));
});
Promise.all(reqs.map(one)).then((outs) => {
  console.log(JSON.stringify(outs));
  session.close();
}, (e) => { console.error(e); process.exit(3); });
"""

# argv: port name. A generic gRPC service /test.Echo/Who (bytes in, bytes out): answers
# `name:request:x-user`, sets the trailing metadata x-side=name, and fails the call with
# NOT_FOUND when the request is "fail" (the status travels in the trailers).
GRPC_SERVER = r"""
import sys, grpc
from concurrent import futures
port, name = int(sys.argv[1]), sys.argv[2]
def who(request, context):
    user = dict(context.invocation_metadata()).get("x-user", "-")
    print("REQ", request.decode(), user, flush=True)
    context.set_trailing_metadata((("x-side", name),))
    if request == b"fail":
        context.abort(grpc.StatusCode.NOT_FOUND, f"{name} says no")
    return f"{name}:{request.decode()}:{user}".encode()
def check(request, context):  # grpc.health.v1.Health/Check, which a kubelet grpc probe calls
    print("REQ health", flush=True)
    context.set_trailing_metadata((("x-side", name),))
    return b"\x08\x01"  # HealthCheckResponse{status: SERVING}
handler = grpc.method_handlers_generic_handler(
    "test.Echo", {"Who": grpc.unary_unary_rpc_method_handler(who)})
health = grpc.method_handlers_generic_handler(
    "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)})
server = grpc.server(futures.ThreadPoolExecutor(8), handlers=(handler, health))
bound = server.add_insecure_port(f"0.0.0.0:{port}")
server.start()
print("LISTENING", bound, flush=True)
server.wait_for_termination()
"""

# argv: host port json-list-of-[request, user-or-null]. All calls concurrently on one
# channel (one HTTP/2 connection); prints a JSON list of {code, answer, details, side}.
# The request "health" is a grpc.health.v1.Health/Check call (answer "\x08\x01": SERVING).
GRPC_CLIENT = r"""
import json, sys, grpc
host, port, calls = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
channel = grpc.insecure_channel(f"{host}:{port}")
who = channel.unary_unary("/test.Echo/Who")
check = channel.unary_unary("/grpc.health.v1.Health/Check")
grpc.channel_ready_future(channel).result(timeout=20)
futs = [(check if req == "health" else who).future(
            b"" if req == "health" else req.encode(),
            metadata=[("x-user", user)] if user else None, timeout=20)
        for req, user in calls]
out = []
for f in futs:
    try:
        answer, code, details = f.result().decode(), "OK", ""
    except grpc.RpcError:
        answer, code, details = None, f.code().name, f.details()
    out.append({"code": code, "answer": answer, "details": details,
                "side": dict(f.trailing_metadata() or ()).get("x-side")})
print(json.dumps(out))
"""


def node_client(client: Pod, host: str, port: int, reqs: list[object]) -> list[dict[str, str]]:
    done = client.run(["node", "-e", NODE_H2_CLIENT, host, str(port), json.dumps(reqs)], timeout=60)
    assert done.returncode == 0, done.stderr
    result: list[dict[str, str]] = json.loads(done.stdout)
    return result


def grpc_client(
    client: Pod | None, host: str, port: int, calls: list[object]
) -> list[dict[str, str]]:
    """The calls from the client pod, or from this host (the node) when client is None."""
    argv = [sys.executable, "-c", GRPC_CLIENT, host, str(port), json.dumps(calls)]
    if client is None:
        done = subprocess.run(argv, capture_output=True, timeout=60)
    else:
        done = client.run(argv, timeout=60)
    assert done.returncode == 0, done.stderr
    result: list[dict[str, str]] = json.loads(done.stdout)
    return result


@contextlib.contextmanager
def local_server(argv: list[str]) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """A local program: a server on loopback, port 0; yields (its port, the process)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("LISTENING"), line
        yield int(line.split()[1]), proc
    finally:
        proc.kill()
        proc.wait()


async def relay_to(conn: IncomingConnection, port: int) -> None:
    """What mirrord's proxy does with a delivered connection: relay it to the local
    program's listener (here: 127.0.0.1:port), both ways, until either side ends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def down() -> None:
        while data := await conn.reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def up() -> None:
        while data := await reader.read(65536):
            await conn.write(data)
        with contextlib.suppress(Exception):
            await conn.write_eof()

    try:
        await asyncio.gather(down(), up())
    finally:
        writer.close()
        await conn.close()


async def relay_all(sub: Subscription, port: int, filtered: list[bool]) -> None:
    """Every delivered connection of `sub` to the local program at `port`; notes each
    one's http_filtered (read request by request, or delivered whole)."""
    tasks: set[asyncio.Task[None]] = set()
    try:
        async for conn in sub:
            filtered.append(conn.http_filtered)
            tasks.add(asyncio.ensure_future(relay_to(conn, port)))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
