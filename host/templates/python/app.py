"""The {{tool}} tool: counts the lines, words and characters of a text."""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types

SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string", "description": "The text to count"}},
    "required": ["text"],
    "additionalProperties": False,
}


class Tool(exports.Tool):
    def describe(self):
        return [
            types.ToolInfo(
                name="{{tool}}",
                description="Counts the lines, words and characters of a text.",
                input_schema=json.dumps(SCHEMA),
            )
        ]

    def call(self, tool, input):
        if tool != "{{tool}}":
            raise Err(types.ToolError_InvalidInput(f"this plugin has no tool `{tool}`"))
        try:
            text = json.loads(input)["text"]
            assert isinstance(text, str)
        except (ValueError, KeyError, TypeError, AssertionError):
            raise Err(types.ToolError_InvalidInput('give {"text": "..."}'))
        lines, words, chars = len(text.splitlines()), len(text.split()), len(text)
        return types.ToolOutput(summary=f"{lines} lines, {words} words, {chars} characters", content=None)
