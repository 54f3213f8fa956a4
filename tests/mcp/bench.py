"""Times MCP round trips over stdio for host/benches/mcp.rs, one request at
a time after a warm-up, and prints one JSON line with each p50 and p99 in
microseconds.

    bench.py --client sdk|raw --mode legacy|2026-07-28 --calls N --tool NAME --arguments JSON --stdio CMD ARGS...
    bench.py --canned-server REPLY_FILE

`sdk` is the official Python SDK's client (tools/call, and ping in the
2025-11-25 era); `raw` writes JSON-RPC lines and reads the answers with no
SDK, so it shows the server's own round trip. `--canned-server` is a stdio
server that answers every request at once (tools/call with the result in
REPLY_FILE), so the SDK against it shows the client's own cost.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import warnings


def percentile(samples, p):
    samples = sorted(samples)
    return samples[round((len(samples) - 1) * p)]


def summary(samples):
    return {"p50_us": percentile(samples, 0.5), "p99_us": percentile(samples, 0.99), "calls": len(samples)}


async def timed(n, call):
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        await call()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return summary(samples)


async def sdk(args, arguments):
    from mcp import Client, StdioServerParameters

    # ping is of the 2025-11-25 era only; it is timed there alone.
    warnings.filterwarnings("ignore", message="ping is removed")
    server = StdioServerParameters(command=args.stdio[0], args=args.stdio[1:], env=dict(os.environ))
    async with Client(server, mode=args.mode) as client:
        await client.list_tools()

        async def call():
            result = await client.call_tool(args.tool, arguments)
            assert not result.is_error, result.content

        await timed(max(args.calls // 10, 50), call)
        report = {"call": await timed(args.calls, call)}
        if args.mode == "legacy":
            report["ping"] = await timed(args.calls, client.send_ping)
    return report


def raw(args, arguments):
    server = subprocess.Popen(args.stdio, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def rpc(message):
        server.stdin.write((json.dumps(message) + "\n").encode())
        server.stdin.flush()
        if "id" in message:
            answer = json.loads(server.stdout.readline())
            assert "result" in answer and not answer["result"].get("isError"), answer
            return answer

    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}
    rpc({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": init})
    rpc({"jsonrpc": "2.0", "method": "notifications/initialized"})
    ids = iter(range(1, 1 << 30))

    def timed_rpc(n, method, params):
        samples = []
        for _ in range(n):
            start = time.perf_counter_ns()
            rpc({"jsonrpc": "2.0", "id": next(ids), "method": method, "params": params})
            samples.append((time.perf_counter_ns() - start) / 1000)
        return summary(samples)

    call = {"name": args.tool, "arguments": arguments}
    timed_rpc(max(args.calls // 10, 50), "tools/call", call)
    report = {"call": timed_rpc(args.calls, "tools/call", call), "ping": timed_rpc(args.calls, "ping", {})}
    server.stdin.close()
    server.wait()
    return report


def canned_server(reply_file):
    reply = json.load(open(reply_file))
    tools = [{"name": "Read", "description": "Reads a file.", "inputSchema": {"type": "object"}}]
    for line in sys.stdin:
        message = json.loads(line)
        if "id" not in message:
            continue
        method = message.get("method")
        if method == "initialize":
            result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                      "serverInfo": {"name": "canned", "version": "1"}}
        elif method == "tools/list":
            result = {"tools": tools}
        elif method == "tools/call":
            result = reply
        else:
            result = {}
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}) + "\n")
        sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--client", choices=["sdk", "raw"], default="sdk")
    parser.add_argument("--mode", default="legacy")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--tool")
    parser.add_argument("--arguments")
    parser.add_argument("--canned-server")
    parser.add_argument("--stdio", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.canned_server:
        return canned_server(args.canned_server)
    arguments = json.loads(args.arguments)
    report = asyncio.run(sdk(args, arguments)) if args.client == "sdk" else raw(args, arguments)
    print(json.dumps(report), flush=True)


main()
