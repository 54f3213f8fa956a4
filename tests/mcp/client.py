"""Drives a yoi-host pod over MCP with the official Python SDK, for tests/mcp.rs.

    client.py --mode legacy|2026-07-28 --checks a,b,... (--stdio CMD ARGS... | --url URL --token TOKEN)

`--dir` is the fixture directory the Rust test made (project/ in scope with
hello.txt, elsewhere/secret.txt outside it). Each check prints `ok NAME`;
the first failure raises, and the script exits non-zero with the reason.
"""

import argparse
import asyncio
import json
import os
import sys
import time

import httpx2
import mcp.types as types
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client


def text_of(result):
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


class Elicitation:
    """The client's user: answers approval questions as told, and counts them."""

    def __init__(self):
        self.answer = "accept"
        self.asked = []

    async def __call__(self, ctx, params):
        self.asked.append(params.message)
        return types.ElicitResult(action=self.answer, content={} if self.answer == "accept" else None)


async def check_list(client, args):
    tools = (await client.list_tools()).tools
    names = [t.name for t in tools]
    expect(names[0] == "ask_pod", f"ask_pod comes first: {names}")
    expect(names[1:] == sorted(names[1:]), f"the plugin tools are in name order: {names}")
    for expected in ["Read", "Write", "Grep", "Glob", "Edit", "Noop", "Spin"]:
        expect(expected in names, f"{expected} is offered: {names}")
    by_name = {t.name: t for t in tools}
    for tool in tools:
        expect(tool.description, f"{tool.name} has a description")
        expect(tool.input_schema.get("type") == "object", f"{tool.name} has an object input schema")
    read = by_name["Read"]
    expect("file_path" in read.input_schema["properties"], f"Read's schema names file_path: {read.input_schema}")
    expect(read.annotations.read_only_hint is args.read_only,
           f"Read is read-only exactly when the scope is: {read.annotations}")
    expect(read.annotations.open_world_hint is False, f"Read reaches no network: {read.annotations}")
    expect(by_name["ask_pod"].annotations.open_world_hint is True, "ask_pod talks to a model")


async def check_call(client, args):
    path = os.path.join(args.dir, "project", "hello.txt")
    result = await client.call_tool("Read", {"file_path": path})
    expect(not result.is_error, f"Read succeeds: {text_of(result)}")
    expect(len(result.content) == 2, f"summary and content: {result.content}")
    expect("hello from the project" in result.content[1].text, f"the file's text: {text_of(result)}")


async def check_refusal(client, args):
    secret = os.path.join(args.dir, "elsewhere", "secret.txt")
    for attempt in [secret, os.path.join(args.dir, "project", "..", "elsewhere", "secret.txt")]:
        result = await client.call_tool("Read", {"file_path": attempt})
        expect(result.is_error, f"reading {attempt} outside the scope fails")
        expect("permission_denied" in text_of(result), f"a scope refusal: {text_of(result)}")
        expect("top secret" not in text_of(result), "no secret text comes back")
    # Arguments cannot widen the scope: no argument names a scope or grant.
    result = await client.call_tool("Read", {"file_path": secret, "scope": [{"target": "/", "permission": "write"}]})
    expect(result.is_error and "top secret" not in text_of(result), "extra arguments grant nothing")


async def check_errors(client, args):
    result = await client.call_tool("Read", {"file_path": os.path.join(args.dir, "project", "missing.txt")})
    expect(result.is_error and "not_found" in text_of(result), f"a tool's own error: {text_of(result)}")
    result = await client.call_tool("Panic", {"message": "boom"})
    expect(result.is_error and "trap" in text_of(result), f"a trap: {text_of(result)}")
    result = await client.call_tool("Hog", {})
    expect(result.is_error and "out_of_memory" in text_of(result), f"out of memory: {text_of(result)}")
    try:
        await client.call_tool("NoSuchTool", {})
        raise AssertionError("an unknown tool is a protocol error")
    except MCPError as e:
        expect(e.code == -32602, f"invalid params: {e.code} {e.message}")
        expect("NoSuchTool" in e.message, f"the message names the tool: {e.message}")
    # The server carries on after all of that.
    result = await client.call_tool("Noop", {})
    expect(not result.is_error, f"a call after the errors works: {text_of(result)}")


async def check_timeout(client, args):
    result = await client.call_tool("Spin", {})
    expect(result.is_error and "timeout" in text_of(result), f"a call past its deadline: {text_of(result)}")


async def check_cancel(client, args):
    # The pod runs one call at a time: if the cancelled call's instance
    # lived on, the next call would wait for it and miss its own deadline.
    spin = asyncio.create_task(client.call_tool("Spin", {}))
    await asyncio.sleep(0.5)
    spin.cancel()
    try:
        await spin
    except asyncio.CancelledError:
        pass
    start = time.monotonic()
    result = await client.call_tool("Noop", {})
    took = time.monotonic() - start
    expect(not result.is_error, f"the call after a cancel runs: {text_of(result)}")
    expect(took < args.timeout_s / 2, f"and does not wait for the cancelled one ({took:.1f}s)")


async def check_ask(client, args):
    progress = []

    async def on_progress(value, total, message):
        progress.append((value, message))

    result = await client.call_tool("ask_pod", {"prompt": "What does hello.txt say?"}, progress_callback=on_progress)
    expect(not result.is_error, f"ask_pod answers: {text_of(result)}")
    expect(text_of(result) == "It says hello from the project.", f"the final answer: {text_of(result)}")
    messages = [m for _, m in progress]
    expect(any(m and m.startswith("calling Read") for m in messages), f"tool activity as progress: {messages}")
    expect(any(m and m.startswith("Read done") for m in messages), f"tool results as progress: {messages}")
    expect(any(m and "Let me read" in m for m in messages), f"text as progress: {messages}")
    values = [v for v, _ in progress]
    expect(values == sorted(values), f"progress only grows: {values}")


async def check_approve(client, args, elicitation):
    target = os.path.join(args.dir, "project", f"approved-{args.mode}.txt")
    elicitation.answer = "decline"
    result = await client.call_tool("Write", {"file_path": target, "content": "no"})
    expect(result.is_error and "declined" in text_of(result), f"a declined Write is refused: {text_of(result)}")
    expect(not os.path.exists(target), "and writes nothing")
    elicitation.answer = "accept"
    result = await client.call_tool("Write", {"file_path": target, "content": "yes"})
    expect(not result.is_error, f"an approved Write runs: {text_of(result)}")
    expect(open(target).read() == "yes", "and writes")
    expect(len(elicitation.asked) == 2 and "Write" in elicitation.asked[0], f"the user was asked: {elicitation.asked}")


async def check_ask_approve(client, args, elicitation):
    # The pod's own agent wants a pause_before tool: the run pauses, the
    # client's user is asked, and the run resumes with the answer.
    elicitation.answer = "accept"
    asked = len(elicitation.asked)
    result = await client.call_tool("ask_pod", {"prompt": "Write the note."})
    expect(not result.is_error, f"the approved run finishes: {text_of(result)}")
    expect(text_of(result) == "The note is written.", f"the final answer: {text_of(result)}")
    expect(open(os.path.join(args.dir, "project", "note.txt")).read() == "note", "the approved Write ran")
    expect(len(elicitation.asked) == asked + 1, f"the user was asked once: {elicitation.asked}")
    expect("Write" in elicitation.asked[-1], f"about the Write: {elicitation.asked[-1]}")


async def check_ask_cancel(client, args):
    # A run that takes a minute, cancelled by the client: the pod is free
    # for the next run at once.
    slow = asyncio.create_task(client.call_tool("ask_pod", {"prompt": "Take your time."}))
    await asyncio.sleep(1)
    slow.cancel()
    try:
        await slow
    except asyncio.CancelledError:
        pass
    start = time.monotonic()
    result = await client.call_tool("ask_pod", {"prompt": "Are you there?"})
    expect(not result.is_error, f"the next run is accepted: {text_of(result)}")
    expect(text_of(result) == "Back again.", f"and answers: {text_of(result)}")
    expect(time.monotonic() - start < 10, "without waiting for the cancelled one")


async def check_no_elicitation(client, args):
    target = os.path.join(args.dir, "project", f"unasked-{args.mode}.txt")
    result = await client.call_tool("Write", {"file_path": target, "content": "no"})
    expect(result.is_error and "elicitation" in text_of(result), f"refused with the reason: {text_of(result)}")
    expect(not os.path.exists(target), "and writes nothing")


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", required=True)
    parser.add_argument("--checks", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--read-only", action="store_true")
    parser.add_argument("--no-elicitation", action="store_true")
    parser.add_argument("--timeout-s", type=float, default=10)
    parser.add_argument("--url")
    parser.add_argument("--token")
    parser.add_argument("--stdio", nargs=argparse.REMAINDER)
    args = parser.parse_args()

    elicitation = Elicitation()
    options = dict(mode=args.mode, read_timeout_seconds=60)
    if not args.no_elicitation:
        options["elicitation_callback"] = elicitation
    http = None
    if args.stdio:
        server = StdioServerParameters(command=args.stdio[0], args=args.stdio[1:], env=dict(os.environ))
    else:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {args.token}"}, timeout=httpx2.Timeout(30, read=120))
        server = streamable_http_client(args.url, http_client=http)
    async with Client(server, **options) as client:
        expected = "2025-11-25" if args.mode == "legacy" else args.mode
        expect(client.protocol_version == expected, f"spoke {client.protocol_version}, not {expected}")
        print(f"ok protocol {client.protocol_version}", flush=True)
        for name in args.checks.split(","):
            check = globals()[f"check_{name}"]
            if name in ("approve", "ask_approve"):
                await check(client, args, elicitation)
            else:
                await check(client, args)
            print(f"ok {name}", flush=True)
    if http is not None:
        await http.aclose()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except BaseException as e:  # the Rust test shows this
        import traceback
        print(f"FAILED: {type(e).__name__}: {e}", flush=True)
        traceback.print_exception(e)
        sys.exit(1)
