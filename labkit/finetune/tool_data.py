"""A tool-selection data set for supervised fine-tuning: seven tool schemas and a seeded template generator.

The task: the system turn lists tools as JSON Schemas, the user asks for something, and the model must answer
with one call, `{"name": <tool>, "arguments": {...}}`, that picks the right tool and fills its arguments from
the request (copying a city, normalising "euros" to "EUR", "times" to "*").

    TOOLS          the seven tool schemas (OpenAI's function-calling shape: name, description, parameters)
    SYSTEM         the instruction that precedes them in the system turn
    validate       a minimal JSON Schema check for the subset TOOLS uses (type, enum, properties, required,
                   additionalProperties, minimum): a list of problems, empty when the value fits
    parse_call     model text -> the call dict, or the reason it is not one (json.loads; never eval)
    check_call     a parsed call against TOOLS: right shape, known tool, arguments valid for its schema
    build_dataset  the generator: (train, heldout) ShareGPT records from a seed
    load_split     the committed files data/tool-calls/{train,heldout}.jsonl as ShareGPT records
    write_dataset  regenerates those files: `python -m labkit.finetune.tool_data`

Why a generator and a held-out split built this way: a model that memorised the training requests would score
well on a held-out set drawn from the same requests. So every argument value (city, number, topic, label) is
drawn from a pool split in two, train's half and held-out's half, and each tool's phrasing templates are split
too: held-out requests use unseen values always, and unseen phrasings for half of them (`unseen_template`).
"""
from __future__ import annotations

import argparse
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from labkit.course.manifest import ROOT

DATA_DIR = ROOT / "data" / "tool-calls"
SPLITS = ("train", "heldout")

SYSTEM = ("You are a function-calling assistant. Choose the one tool that serves the user's request and reply "
          'with only a JSON object: {"name": <tool name>, "arguments": {<argument>: <value>}}.')

_CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CNY"]
_UNITS = ["km", "mi", "m", "ft", "kg", "lb", "l", "gal"]


def _tool(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"name": name, "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required,
                           "additionalProperties": False}}


TOOLS: list[dict] = [
    _tool("get_weather", "Current weather in a city",
          {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, ["city"]),
    _tool("calculator", "Evaluate an arithmetic expression",
          {"expression": {"type": "string"}}, ["expression"]),
    _tool("convert_currency", "Convert an amount of money",
          {"amount": {"type": "number"}, "from_currency": {"type": "string", "enum": _CURRENCIES},
           "to_currency": {"type": "string", "enum": _CURRENCIES}}, ["amount", "from_currency", "to_currency"]),
    _tool("convert_units", "Convert a length, mass or volume",
          {"value": {"type": "number"}, "from_unit": {"type": "string", "enum": _UNITS},
           "to_unit": {"type": "string", "enum": _UNITS}}, ["value", "from_unit", "to_unit"]),
    _tool("get_time", "Current local time in a city", {"city": {"type": "string"}}, ["city"]),
    _tool("set_timer", "Start a countdown timer",
          {"minutes": {"type": "integer", "minimum": 1}, "label": {"type": "string"}}, ["minutes"]),
    _tool("search_notes", "Search the course notes for a topic", {"query": {"type": "string"}}, ["query"]),
]
TOOL_NAMES = [t["name"] for t in TOOLS]


# ---- validating calls ------------------------------------------------------------------------------------

_TYPES = {"object": dict, "string": str, "array": list, "boolean": bool}


def _type_ok(value: object, kind: str) -> bool:
    # JSON has one number type: bool is not a number, 3.0 is an integer (as JSON Schema says)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float)
                                                                              and value.is_integer())
    if kind == "null":
        return value is None
    if kind not in _TYPES:
        raise ValueError(f"this validator handles the types {sorted([*_TYPES, 'number', 'integer', 'null'])}, "
                         f"the schema asks for {kind!r}")
    return isinstance(value, _TYPES[kind])


_KEYWORDS = {"type", "enum", "properties", "required", "additionalProperties", "minimum", "maximum", "description"}


def validate(value: object, schema: Mapping, path: str = "$") -> list[str]:
    """Problems of `value` against `schema`, for the JSON Schema subset tool schemas use; [] if it fits.

    A keyword outside the subset raises ValueError (silently ignoring it would accept what it forbids)."""
    if not isinstance(schema, Mapping):
        raise TypeError(f"schema must be a dict, got {type(schema).__name__}")
    unknown = set(schema) - _KEYWORDS
    if unknown:
        raise ValueError(f"schema keyword(s) {sorted(unknown)} at {path} are outside the subset this validator "
                         f"implements ({sorted(_KEYWORDS)})")
    if "type" in schema and not _type_ok(value, schema["type"]):
        return [f"{path}: expected {schema['type']}, got {type(value).__name__} {value!r}"]
    problems = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        problems.append(f"{path}: {value!r} is less than the minimum {schema['minimum']}")
    if "maximum" in schema and isinstance(value, (int, float)) and value > schema["maximum"]:
        problems.append(f"{path}: {value!r} is greater than the maximum {schema['maximum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        problems += [f"{path}: missing required property {k!r}" for k in schema.get("required", []) if k not in value]
        for key, item in value.items():
            if key in props:
                problems += validate(item, props[key], f"{path}.{key}")
            elif schema.get("additionalProperties", True) is False:
                problems.append(f"{path}: unexpected property {key!r} (allowed: {sorted(props)})")
    return problems


def parse_call(text: str) -> tuple[dict | None, str]:
    """(call, "") if `text` is one JSON object {"name": str, "arguments": object}, else (None, the reason).
    Model output is untrusted text: it is parsed with json.loads and never evaluated."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    try:
        call = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"not JSON: {e.msg} at character {e.pos}"
    if not isinstance(call, dict):
        return None, f"JSON {type(call).__name__}, not an object"
    if not isinstance(call.get("name"), str) or not isinstance(call.get("arguments"), dict):
        return None, 'not a call: expected {"name": <string>, "arguments": <object>}'
    return call, ""


def check_call(call: Mapping, tools: Sequence[Mapping] = TOOLS) -> list[str]:
    """Problems of a parsed call against the tool list: an unknown tool, or arguments its schema rejects."""
    schemas = {t["name"]: t["parameters"] for t in tools}
    if call.get("name") not in schemas:
        return [f"unknown tool {call.get('name')!r} (tools: {sorted(schemas)})"]
    extra = set(call) - {"name", "arguments"}
    problems = [f"unexpected key(s) {sorted(extra)} next to name and arguments"] if extra else []
    return problems + validate(call.get("arguments"), schemas[call["name"]], "arguments")


# ---- the generator ---------------------------------------------------------------------------------------
# Each tool has phrasing templates; the last two of each list appear only in the held-out split. A template is
# (text with {slots}, how the slots become the call's arguments). Slot values come from pools split in two.

_CITIES = ["Paris", "Tokyo", "Berlin", "Madrid", "Rome", "Lisbon", "Cairo", "Nairobi", "Lima", "Toronto",
           "Sydney", "Seoul", "Mumbai", "Dublin", "Oslo", "Vienna", "Prague", "Chicago", "Boston", "Denver",
           "New York", "Buenos Aires", "Cape Town", "Hong Kong", "Athens", "Warsaw", "Istanbul", "Bangkok",
           "Helsinki", "Santiago", "Hanoi", "Accra", "Montreal", "Kyoto", "Porto", "Zurich", "Auckland",
           "Bogota", "Krakow", "Marseille", "San Diego", "Kuala Lumpur", "Reykjavik", "Manila"]
_TOPICS = ["rotary position embeddings", "the KV-cache", "grouped-query attention", "byte pair encoding",
           "attention sinks", "top-p sampling", "layer normalization", "flash attention", "perplexity",
           "n-gram smoothing", "multi-head latent attention", "tiled matrix multiplication", "softmax overflow",
           "paged attention", "weight tying", "the chain rule of probability", "RMSNorm", "SwiGLU",
           "causal masking", "greedy decoding", "temperature scaling", "online softmax", "prefill and decode",
           "memory bandwidth", "shared memory on GPUs", "the roofline model", "sliding window attention",
           "learning rate warmup", "cross-entropy loss", "grokking"]
_LABELS = ["pasta", "tea", "laundry", "eggs", "pizza", "rice", "bread", "workout", "nap", "meeting",
           "oven", "coffee", "stretching", "homework", "soup", "cookies", "study break", "call mom"]
_CURRENCY_NAMES = {"USD": ["dollars", "US dollars", "USD"], "EUR": ["euros", "EUR"], "GBP": ["pounds sterling",
                   "British pounds", "GBP"], "JPY": ["yen", "Japanese yen", "JPY"], "CHF": ["Swiss francs", "CHF"],
                   "CNY": ["yuan", "CNY"]}
_UNIT_NAMES = {"km": ["kilometers", "km"], "mi": ["miles"], "m": ["meters"], "ft": ["feet"],
               "kg": ["kilograms", "kg"], "lb": ["pounds", "lbs"], "l": ["liters"], "gal": ["gallons"]}
_UNIT_PAIRS = [("km", "mi"), ("mi", "km"), ("m", "ft"), ("ft", "m"), ("kg", "lb"), ("lb", "kg"), ("l", "gal"),
               ("gal", "l")]
_OPS = {"+": ["plus", "added to"], "-": ["minus"], "*": ["times", "multiplied by"], "/": ["divided by"]}

_TEMPLATES: dict[str, list[str]] = {
    "get_weather": ["What's the weather like in {city}?", "Is it raining in {city} right now?",
                    "Weather in {city} in {unit}, please.", "How warm is it in {city} today?",
                    "Give me the current temperature in {city} in {unit}.", "I'm flying to {city}: what's the weather?",
                    # held-out only
                    "Do I need an umbrella in {city} today?", "Tell me the {city} weather, in degrees {unit}."],
    "calculator": ["What is {a} {op} {b}?", "Calculate {a} {op} {b}.", "Can you work out {a} {op} {b}?",
                   "Compute {a} {sym} {b}", "Quick maths: {a} {op} {b}", "What do I get for {a} {sym} {b}?",
                   "Help me with my homework: {a} {op} {b} equals what?", "Solve {a} {sym} {b} for me."],
    "convert_currency": ["Convert {amount} {from_name} to {to_name}.", "How much is {amount} {from_name} in {to_name}?",
                         "What are {amount} {from_name} worth in {to_name}?", "I have {amount} {from_name}; how many "
                         "{to_name} is that?", "Change {amount} {from_name} into {to_name}.",
                         "Exchange {amount} {from_name} for {to_name}.",
                         "If I pay {amount} {from_name}, what is that in {to_name}?",
                         "{amount} {from_name} to {to_name}, what's the rate?"],
    "convert_units": ["Convert {value} {from_name} to {to_name}.", "How many {to_name} are {value} {from_name}?",
                      "What is {value} {from_name} in {to_name}?", "Express {value} {from_name} in {to_name}.",
                      "{value} {from_name} equals how many {to_name}?", "Change {value} {from_name} into {to_name}.",
                      "My recipe says {value} {from_name}; what's that in {to_name}?",
                      "Turn {value} {from_name} into {to_name} for me."],
    "get_time": ["What time is it in {city}?", "Tell me the local time in {city}.", "What's the time in {city} now?",
                 "Is it morning or evening in {city} right now?", "Current time in {city}?",
                 "I need to call someone in {city}: what time is it there?",
                 "Check the clock in {city} for me.", "Would it be late at night in {city} now?"],
    "set_timer": ["Set a timer for {minutes} minutes.", "Start a {minutes}-minute timer for the {label}.",
                  "Remind me in {minutes} minutes.", "Timer: {minutes} minutes, label it {label}.",
                  "Count down {minutes} minutes for my {label}.", "Please time {minutes} minutes.",
                  "Wake me up in {minutes} minutes.", "Put a {minutes} minute timer on for the {label}."],
    "search_notes": ["Search the notes for {query}.", "Find what the notes say about {query}.",
                     "Look up {query} in the course notes.", "I forgot how {query} works; search the notes.",
                     "Where do the notes explain {query}?", "Search: {query}",
                     "Pull up the notes on {query}.", "Any notes about {query}?"],
}
HELDOUT_TEMPLATES = 2  # the last this many templates of each tool are held out


def _split_pool(pool: Sequence, rng: random.Random, heldout_share: float = 0.3) -> tuple[list, list]:
    items = list(pool)
    rng.shuffle(items)
    k = max(1, round(len(items) * heldout_share))
    return items[k:], items[:k]


def _fill(tool: str, template: str, pools: Mapping[str, list], rng: random.Random) -> tuple[str, dict]:
    """A request from a template and its call's arguments, with slot values drawn from `pools` (one split's)."""
    if tool in ("get_weather", "get_time"):
        city = rng.choice(pools["city"])
        args = {"city": city}
        slots = {"city": city}
        if "{unit}" in template:
            args["unit"] = slots["unit"] = rng.choice(["celsius", "fahrenheit"])
        return template.format(**slots), args
    if tool == "calculator":
        a, b = rng.sample(pools["int"], 2)
        sym = rng.choice(sorted(_OPS))
        text = template.format(a=a, b=b, op=rng.choice(_OPS[sym]), sym=sym)
        return text, {"expression": f"{a} {sym} {b}"}
    if tool == "convert_currency":
        src, dst = rng.sample(_CURRENCIES, 2)
        amount = rng.choice(pools["amount"])
        text = template.format(amount=amount, from_name=rng.choice(_CURRENCY_NAMES[src]),
                               to_name=rng.choice(_CURRENCY_NAMES[dst]))
        return text, {"amount": amount, "from_currency": src, "to_currency": dst}
    if tool == "convert_units":
        src, dst = rng.choice(_UNIT_PAIRS)
        value = rng.choice(pools["amount"])
        text = template.format(value=value, from_name=rng.choice(_UNIT_NAMES[src]),
                               to_name=rng.choice(_UNIT_NAMES[dst]))
        return text, {"value": value, "from_unit": src, "to_unit": dst}
    if tool == "set_timer":
        minutes = rng.choice(pools["minutes"])
        args: dict = {"minutes": minutes}
        if "{label}" in template:
            args["label"] = rng.choice(pools["label"])
        return template.format(minutes=minutes, label=args.get("label", "")), args
    if tool == "search_notes":
        query = rng.choice(pools["topic"])
        return template.format(query=query), {"query": query}
    raise ValueError(f"no generator for tool {tool!r}")


def _number(rng: random.Random) -> int | float:
    # amounts as people write them: mostly whole numbers, some with one decimal
    return rng.randint(2, 900) if rng.random() < 0.75 else round(rng.uniform(1, 300), 1)


def build_dataset(seed: int = 0, n_train: int = 300, n_heldout: int = 105) -> tuple[list[dict], list[dict]]:
    """(train, heldout) ShareGPT records: {"id", "conversations": [human, function_call], "system", "tools",
    "unseen_template"}. Tools cycle so each appears equally often; the rest is drawn from `random.Random(seed)`.
    Held-out records use only held-out slot values; every second one uses a held-out phrasing template."""
    for name, n in (("n_train", n_train), ("n_heldout", n_heldout)):
        if isinstance(n, bool) or not isinstance(n, int) or n < len(TOOLS):
            raise ValueError(f"{name} must be an int >= {len(TOOLS)} (one request per tool), got {n!r}")
    rng = random.Random(seed)
    amounts = sorted({_number(rng) for _ in range(400)})
    pools = {"city": _CITIES, "topic": _TOPICS, "label": _LABELS, "int": list(range(2, 1000)),
             "amount": amounts, "minutes": list(range(1, 121))}
    split = {k: _split_pool(v, rng) for k, v in pools.items()}
    tools_json = json.dumps(TOOLS, separators=(",", ":"))
    out: dict[str, list[dict]] = {"train": [], "heldout": []}
    seen: set[str] = set()
    for part, n in (("train", n_train), ("heldout", n_heldout)):
        part_pools = {k: v[0] if part == "train" else v[1] for k, v in split.items()}
        while len(out[part]) < n:
            i = len(out[part])
            tool = TOOL_NAMES[i % len(TOOLS)]
            templates = _TEMPLATES[tool]
            unseen = part == "heldout" and i % 2 == 1
            pool = templates[-HELDOUT_TEMPLATES:] if unseen else templates[:-HELDOUT_TEMPLATES]
            template = rng.choice(pool)
            text, args = _fill(tool, template, part_pools, rng)
            if text in seen:  # a request appears once in the whole data set
                continue
            seen.add(text)
            call = json.dumps({"name": tool, "arguments": args}, ensure_ascii=False)
            out[part].append({"id": f"{part}-{i:04d}", "conversations": [{"from": "human", "value": text},
                                                                         {"from": "function_call", "value": call}],
                              "system": SYSTEM, "tools": tools_json, "unseen_template": unseen})
    return out["train"], out["heldout"]


def write_dataset(folder: Path = DATA_DIR, seed: int = 0) -> list[Path]:
    """Write build_dataset(seed)'s two splits as JSON lines: folder/train.jsonl and folder/heldout.jsonl."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, records in zip(SPLITS, build_dataset(seed)):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        paths.append(path)
    return paths


def load_split(name: str, folder: Path = DATA_DIR) -> list[dict]:
    """The committed split `name` ('train' or 'heldout') as ShareGPT records (see chat_formats for messages)."""
    if name not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
    path = Path(folder) / f"{name}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: regenerate it with `python -m labkit.finetune.tool_data`")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def expected_call(record: Mapping) -> dict:
    """The call a record teaches: its last turn's JSON."""
    return json.loads(record["conversations"][-1]["value"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m labkit.finetune.tool_data",
                                     description="Regenerate data/tool-calls/{train,heldout}.jsonl from the seed.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    for path in write_dataset(args.out, args.seed):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
