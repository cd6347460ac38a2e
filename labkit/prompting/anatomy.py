"""The anatomy of a prompt: identity, context, few-shot examples, output constraints -- and the request.

A prompt that works reliably usually has four parts besides the request itself:

  identity     who the model is and what it is for ("You are a travel planner ..."); in a chat model this
               goes in the system message, which the chat template puts before every conversation;
  context      the facts the answer must use (the user's trip, a document, earlier turns);
  examples     a few solved cases in exactly the wanted shape (few-shot: in-context learning);
  constraints  the output's format and limits (length, structure, a budget, what not to do).

`build_messages` assembles them into chat messages: the identity as the system message and the rest as one
user message, each part under a `###` heading so the model (and a reader) can tell instructions from data.
Examples can instead be given as earlier user/assistant turns (`examples_as="turns"`), which is how a chat
model saw demonstrations during instruction tuning. The chat template (`LocalLLM.format`) then turns the
messages into the exact text the model reads.
"""
from __future__ import annotations

from collections.abc import Sequence

EXAMPLE_STYLES = ("text", "turns")


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    return value.strip()


def build_messages(query: str, *, identity: str = "", context: str = "",
                   examples: Sequence[tuple[str, str]] = (), constraints: str = "",
                   examples_as: str = "text") -> list[dict[str, str]]:
    """Chat messages for a prompt with the four parts (each optional) and the request.

    examples: (input, output) pairs. examples_as="text" writes them into the user message under "### Examples";
    "turns" sends each as a user message and an assistant reply before the real request."""
    query = _text("query", query)
    if not query:
        raise ValueError("query is empty: a prompt needs a request")
    identity, context, constraints = (_text(n, v) for n, v in (("identity", identity), ("context", context),
                                                               ("constraints", constraints)))
    if examples_as not in EXAMPLE_STYLES:
        raise ValueError(f"examples_as must be one of {EXAMPLE_STYLES}, got {examples_as!r}")
    if isinstance(examples, (str, bytes)) or not all(isinstance(e, (tuple, list)) and len(e) == 2 for e in examples):
        raise ValueError("examples must be a list of (input, output) pairs")
    pairs = [(_text("an example's input", a), _text("an example's output", b)) for a, b in examples]

    messages = [{"role": "system", "content": identity}] if identity else []
    sections = []
    if context:
        sections.append(f"### Context\n{context}")
    if pairs and examples_as == "text":
        shots = "\n\n".join(f"Example {i}\nRequest: {a}\nAnswer:\n{b}" for i, (a, b) in enumerate(pairs, 1))
        sections.append(f"### Examples\n{shots}")
    elif pairs:
        for a, b in pairs:
            messages += [{"role": "user", "content": a}, {"role": "assistant", "content": b}]
    if constraints:
        sections.append(f"### Output\n{constraints}")
    sections.append(f"### Request\n{query}" if sections else query)
    messages.append({"role": "user", "content": "\n\n".join(sections)})
    return messages


# The travel planner: a worked template with all four parts (the facts follow the chapter's source article).
TRAVEL_PLANNER = {
    "identity": "You are an experienced travel planner who designs personal itineraries.",
    "context": "The traveller wants a 5-day trip to Paris with a budget of 1500 US dollars, "
               "and would like culture, good food and some shopping.",
    "examples": [
        ("Tokyo, about 800 dollars, likes history and food.",
         "Day 1: Tokyo Tower and Meiji Shrine; sushi for lunch near the shrine.\n"
         "Day 2: Ueno Park and the Tokyo National Museum; seafood lunch at the outer market of Tsukiji."),
        ("Bali, about 1000 dollars, wants rest and nature.",
         "Day 1: arrive, rest at the hotel, dinner on the beach.\n"
         "Day 2: the Ubud Monkey Forest and the local art markets."),
    ],
    "constraints": "Write a plan for each of the five days, one line per day, with the day's activities and a "
                   "recommended place to eat. Keep the total cost under 1500 dollars.",
    "query": "Plan my trip to Paris.",
}
