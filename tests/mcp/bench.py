"""Times MCP round trips with the official Python SDK's client, for
host/benches/mcp.rs: `calls` tools/call requests of TOOL with ARGUMENTS (and
as many pings, in the 2025-11-25 era) after a warm-up, one at a time.

    bench.py --mode legacy|2026-07-28 --calls N --tool NAME --arguments JSON --stdio CMD ARGS...

Prints one JSON line: the latencies' p50 and p99 in microseconds.
"""

import argparse
import asyncio
import json
import os
import time
import warnings

from mcp import Client, StdioServerParameters


def percentile(samples, p):
    samples = sorted(samples)
    return samples[round((len(samples) - 1) * p)]


async def timed(n, call):
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        await call()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return {"p50_us": percentile(samples, 0.5), "p99_us": percentile(samples, 0.99), "calls": n}


async def main():
    # ping is of the 2025-11-25 era only; it is timed there alone.
    warnings.filterwarnings("ignore", message="ping is removed")
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", required=True)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--tool", required=True)
    parser.add_argument("--arguments", required=True)
    parser.add_argument("--stdio", nargs=argparse.REMAINDER, required=True)
    args = parser.parse_args()
    arguments = json.loads(args.arguments)
    server = StdioServerParameters(command=args.stdio[0], args=args.stdio[1:], env=dict(os.environ))
    async with Client(server, mode=args.mode) as client:
        await client.list_tools()

        async def call():
            result = await client.call_tool(args.tool, arguments)
            assert not result.is_error, result.content

        await timed(max(args.calls // 10, 50), call)
        report = {"mode": args.mode, "call": await timed(args.calls, call)}
        if args.mode == "legacy":
            report["ping"] = await timed(args.calls, client.send_ping)
    print(json.dumps(report), flush=True)


asyncio.run(main())
