// JsonQuery: picks values out of a JSON document with a small path
// language, so that a model can look into a large API answer or config file
// without reading all of it.
//
// Paths: `.key` or `["key"]` for a member, `[3]` (or `[-1]` from the end)
// for an element, `[*]` or `.*` for every element or member, `..key` for the
// key at any depth. A path starts at the document (`$` may be written first).

const MAX_MATCHES_DEFAULT = 100;

const SCHEMA = {
  type: "object",
  properties: {
    json: { type: "string", description: "The JSON document, as text" },
    path: { type: "string", description: 'Path such as `items[*].name`, `..id`, `data["a b"][0]`' },
    max_matches: { type: "integer", minimum: 1, maximum: 10000, description: "Default 100" },
  },
  required: ["json", "path"],
  additionalProperties: false,
};

// Thrown as the tool's `tool-error` result.
function toolError(tag, message) {
  const error = new Error(message);
  error.payload = { tag, val: message };
  return error;
}

// Splits a path into steps: {key}, {index}, {all: true}, {descend: key}.
function parsePath(path) {
  const steps = [];
  let i = path.startsWith("$") ? 1 : 0;
  const fail = (why) => {
    throw toolError("invalid-input", `bad path ${JSON.stringify(path)} at character ${i + 1}: ${why}`);
  };
  const name = () => {
    const match = /^[A-Za-z0-9_$-]+/.exec(path.slice(i));
    if (!match) fail("expected a member name");
    i += match[0].length;
    return match[0];
  };
  if (i < path.length && path[i] !== "." && path[i] !== "[") steps.push({ key: name() });
  while (i < path.length) {
    if (path.startsWith("..", i)) {
      i += 2;
      steps.push({ descend: name() });
    } else if (path[i] === ".") {
      i += 1;
      if (path[i] === "*") {
        i += 1;
        steps.push({ all: true });
      } else {
        steps.push({ key: name() });
      }
    } else if (path[i] === "[") {
      const close = path.indexOf("]", i);
      if (close < 0) fail("unclosed [");
      const inner = path.slice(i + 1, close).trim();
      i = close + 1;
      if (inner === "*") steps.push({ all: true });
      else if (/^-?\d+$/.test(inner)) steps.push({ index: Number(inner) });
      else if (/^".*"$/.test(inner) || /^'.*'$/.test(inner)) steps.push({ key: inner.slice(1, -1) });
      else fail(`expected a number, * or a quoted name inside [ ]`);
    } else {
      fail(`unexpected ${JSON.stringify(path[i])}`);
    }
  }
  return steps;
}

function showKey(key) {
  return /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(key) ? `.${key}` : `[${JSON.stringify(key)}]`;
}

// Applies one step to every [location, value] pair.
function apply(step, matches) {
  const out = [];
  for (const [at, value] of matches) {
    if (step.key !== undefined) {
      if (value !== null && typeof value === "object" && !Array.isArray(value) && step.key in value) {
        out.push([at + showKey(step.key), value[step.key]]);
      }
    } else if (step.index !== undefined) {
      if (Array.isArray(value)) {
        const index = step.index < 0 ? value.length + step.index : step.index;
        if (index >= 0 && index < value.length) out.push([`${at}[${index}]`, value[index]]);
      }
    } else if (step.all) {
      if (Array.isArray(value)) value.forEach((v, n) => out.push([`${at}[${n}]`, v]));
      else if (value !== null && typeof value === "object") {
        for (const [k, v] of Object.entries(value)) out.push([at + showKey(k), v]);
      }
    } else {
      const walk = (where, node) => {
        if (node === null || typeof node !== "object") return;
        if (!Array.isArray(node) && step.descend in node) out.push([where + showKey(step.descend), node[step.descend]]);
        const children = Array.isArray(node) ? node.map((v, n) => [`${where}[${n}]`, v]) : Object.entries(node).map(([k, v]) => [where + showKey(k), v]);
        for (const [w, child] of children) walk(w, child);
      };
      walk(at, value);
    }
  }
  return out;
}

function query(input) {
  let args;
  try {
    args = JSON.parse(input);
  } catch (e) {
    throw toolError("invalid-input", `the arguments are not JSON: ${e.message}`);
  }
  if (typeof args?.json !== "string" || typeof args?.path !== "string") {
    throw toolError("invalid-input", "give `json` (the document as text) and `path` (strings)");
  }
  const max = Number.isInteger(args.max_matches) && args.max_matches > 0 ? args.max_matches : MAX_MATCHES_DEFAULT;
  let doc;
  try {
    doc = JSON.parse(args.json);
  } catch (e) {
    throw toolError("invalid-input", `\`json\` is not valid JSON: ${e.message}`);
  }
  let matches = [["$", doc]];
  for (const step of parsePath(args.path)) matches = apply(step, matches);
  const shown = matches.slice(0, max);
  const lines = shown.map(([at, value]) => `${at} = ${JSON.stringify(value)}`);
  if (matches.length > max) lines.push(`[${matches.length - max} more matches not shown]`);
  const count = matches.length === 1 ? "1 match" : `${matches.length} matches`;
  return { summary: `${count} for ${args.path}`, content: lines.join("\n") };
}

export const tool = {
  describe() {
    return [
      {
        name: "JsonQuery",
        description:
          "Picks values out of a JSON document by path (`.key`, `[0]`, `[-1]`, `[*]`, `..key` at any depth) " +
          "and lists each match with where it was found.",
        inputSchema: JSON.stringify(SCHEMA),
      },
    ];
  },
  call(name, input) {
    if (name !== "JsonQuery") throw toolError("invalid-input", `this plugin has no tool \`${name}\``);
    return query(input);
  },
};
