"""A Nebula client built from proto/nebula.proto alone: its Python types are generated from the
.proto by protoc (grpcio-tools, from PyPI) at the start of each run, nothing else of Nebula is
used. It speaks subprotocol nebula.v1.proto (binary frames) through the `websockets` library.

Usage: BASE_URL=http://127.0.0.1:PORT PROTO=path/to/nebula.proto python3 client.py
It logs in as "proto", joins room "mixed", publishes "hello from protobuf", waits for
"hello from json" (published by a JSON client), and prints one line per message it received:
`MESSAGE <offset> <user> <body>`, then `proto client: ok`.
"""
import asyncio
import importlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import urllib.request

import websockets

BASE = os.environ["BASE_URL"]
PROTO = pathlib.Path(os.environ["PROTO"]).resolve()


def generate():
    out = tempfile.mkdtemp(prefix="nebula-proto-")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}", f"--python_out={out}", str(PROTO)],
        check=True,
    )
    sys.path.insert(0, out)
    return importlib.import_module(PROTO.stem + "_pb2")


def login(name):
    req = urllib.request.Request(
        f"{BASE}/api/login", data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req) as r:
        return r.headers["Set-Cookie"].split(";")[0]


async def main():
    pb = generate()
    cookie = login("proto")
    url = BASE.replace("http://", "ws://") + "/ws"
    async with websockets.connect(url, subprotocols=["nebula.v1.proto"],
                                  additional_headers={"Cookie": cookie}) as ws:
        assert ws.subprotocol == "nebula.v1.proto", ws.subprotocol

        async def frame():
            data = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(data, bytes), f"a text frame on the proto subprotocol: {data!r}"
            f = pb.ServerFrame()
            f.ParseFromString(data)
            return f

        welcome = await frame()
        assert welcome.WhichOneof("type") == "welcome" and welcome.welcome.user.name == "proto"
        join = pb.ClientFrame(id=1, join=pb.Join(room="mixed"))
        await ws.send(join.SerializeToString())
        joined = await frame()
        assert joined.id == 1 and joined.WhichOneof("type") == "joined", joined
        names = sorted(m.name for m in joined.joined.members)
        print(f"JOINED {joined.joined.offset} {','.join(names)}", flush=True)
        for m in joined.joined.messages:
            print(f"MESSAGE {m.offset} {m.user.name} {m.body}", flush=True)
        await ws.send(pb.ClientFrame(id=2, publish=pb.Publish(room="mixed", body="hello from protobuf", key="p-1")).SerializeToString())
        acked, got_json = False, False
        while not (acked and got_json):
            f = await frame()
            kind = f.WhichOneof("type")
            if kind == "ack":
                assert f.id == 2
                print(f"ACK {f.ack.offset}", flush=True)
                acked = True
            elif kind == "message":
                m = f.message
                print(f"MESSAGE {m.offset} {m.user.name} {m.body}", flush=True)
                got_json = got_json or m.body == "hello from json"
            elif kind == "error":
                raise SystemExit(f"error {f.error.code}: {f.error.message}")
        # A malformed frame gets an error without id, and the connection stays open.
        await ws.send(b"\xff\xff\xff")
        f = await frame()
        assert f.WhichOneof("type") == "error" and f.id == 0 and f.error.code == "bad_request", f
        await ws.send(pb.ClientFrame(id=3, ping=pb.Ping()).SerializeToString())
        f = await frame()
        assert f.id == 3 and f.WhichOneof("type") == "pong", f
    print("proto client: ok", flush=True)


asyncio.run(main())
