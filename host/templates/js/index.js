// The {{tool}} tool: counts the lines, words and characters of a text.

const SCHEMA = {
  type: "object",
  properties: { text: { type: "string", description: "The text to count" } },
  required: ["text"],
  additionalProperties: false,
};

// A thrown error whose `payload` is a `tool-error` variant becomes the
// call's error result.
function invalidInput(message) {
  const error = new Error(message);
  error.payload = { tag: "invalid-input", val: message };
  return error;
}

export const tool = {
  describe() {
    return [
      {
        name: "{{tool}}",
        description: "Counts the lines, words and characters of a text.",
        inputSchema: JSON.stringify(SCHEMA),
      },
    ];
  },
  call(name, input) {
    if (name !== "{{tool}}") throw invalidInput(`this plugin has no tool \`${name}\``);
    let text;
    try {
      text = JSON.parse(input).text;
    } catch {
      text = undefined;
    }
    if (typeof text !== "string") throw invalidInput('give {"text": "..."}');
    const lines = text === "" ? 0 : text.split(/\r?\n/).length - (text.endsWith("\n") ? 1 : 0);
    const words = text.split(/\s+/).filter((w) => w !== "").length;
    const chars = [...text].length;
    return { summary: `${lines} lines, ${words} words, ${chars} characters` };
  },
};
