"""Wrong implementations for labs/13-agents.ipynb, and the checks each must fail.

Each mutant is the solution's function (copied below without its comments) with one mistake put in (`_edit` fails
loudly if the text it replaces is not in the copy), or a different wrong design written out whole."""
from mutants import Mutant

_CALC = '''def calculate(expression):
    if len(expression) > MAX_CHARS:
        raise ValueError(f"too long: {len(expression)} characters (at most {MAX_CHARS})")
    source = expression.strip()
    try:
        tree = ast.parse(source, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ValueError(f"syntax error: {e}") from None
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    if deepest > MAX_DEPTH:
        raise ValueError(f"too deep: {deepest} levels (at most {MAX_DEPTH})")

    def small(v):
        bits = max(v.numerator.bit_length(), v.denominator.bit_length())
        if bits > MAX_BITS:
            raise ValueError(f"too large: {bits} bits (at most {MAX_BITS})")
        return v

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return small(Fraction(ast.get_source_segment(source, node)))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = value(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)):
            a, b = value(node.left), value(node.right)
            if isinstance(node.op, ast.Add):
                return small(a + b)
            if isinstance(node.op, ast.Sub):
                return small(a - b)
            if isinstance(node.op, ast.Mult):
                return small(a * b)
            if isinstance(node.op, ast.Div):
                if b == 0:
                    raise ValueError("division by zero")
                return small(a / b)
            if b.denominator != 1:
                raise ValueError(f"not exact: the exponent {b} is not a whole number")
            n = b.numerator
            if a == 0 and n < 0:
                raise ValueError("division by zero: 0 to a negative power")
            bits = abs(n) * math.log2(max(abs(a.numerator), a.denominator))
            if bits > MAX_BITS + 1:
                raise ValueError(f"too large: {a} ** {n} would need about {bits:.3g} bits (at most {MAX_BITS})")
            return small(a ** n)
        raise ValueError(f"not allowed: {type(node).__name__}")

    return value(tree)'''

_PARSE = '''LABEL = re.compile(r"^[ \\t]*(thought|action input|action|final answer):", re.IGNORECASE | re.MULTILINE)


def parse_step(text):
    forged = re.search(r"observation:", text, re.IGNORECASE)
    if forged:
        text = text[:forged.start()]
    labels = [m for m in LABEL.finditer(text) if m.group(1).lower() != "thought"]
    if not labels:
        return ("malformed", 'no "Action:" or "Final Answer:" line')
    first = labels[0]
    label = first.group(1).lower()
    if label == "action input":
        return ("malformed", '"Action Input:" came before any "Action:" line')
    if label == "final answer":
        after = LABEL.search(text, first.end())
        answer = text[first.end():after.start() if after else len(text)].strip()
        return ("answer", answer) if answer else ("malformed", 'the "Final Answer:" is empty')
    line_end = text.find("\\n", first.end())
    line_end = len(text) if line_end < 0 else line_end
    name = text[first.end():line_end].strip()
    if not re.fullmatch(r"[A-Za-z_][\\w.-]*", name):
        return ("malformed", f'"Action:" must be followed by one tool name, got {name[:40]!r}')
    rest = text[line_end:].lstrip()
    label_line = LABEL.match(rest)
    if label_line is None or label_line.group(1).lower() != "action input":
        return ("malformed", f'missing "Action Input:" line after "Action: {name}"')
    try:
        arguments, _ = json.JSONDecoder().raw_decode(rest[label_line.end():].lstrip())
    except json.JSONDecodeError as e:
        return ("malformed", f'"Action Input" is not valid JSON ({e.msg})')
    if not isinstance(arguments, dict):
        return ("malformed", '"Action Input" must be a JSON object of arguments')
    return ("action", name, arguments)'''

_FIT = '''def fit_to_budget(messages, budget, count):
    sizes = [count(m["content"]) for m in messages]
    protected = {i for i, m in enumerate(messages) if m["role"] == "system"}
    if messages:
        protected.add(len(messages) - 1)
    floor = sum(sizes[i] for i in protected)
    if floor > budget:
        raise ValueError(f"the system prompt and the newest message alone take {floor} tokens, over {budget}")
    total, evicted = sum(sizes), set()
    for i in range(len(messages)):
        if total <= budget:
            break
        if i not in protected:
            evicted.add(i)
            total -= sizes[i]
    return ([m for i, m in enumerate(messages) if i not in evicted],
            [m for i, m in enumerate(messages) if i in evicted])'''


def _edit(source: str, *changes: tuple[str, str]) -> str:
    for old, new in changes:
        assert source.count(old) == 1, f"mutant edit: {old!r} is not once in the solution's text"
        source = source.replace(old, new)
    return source


_CALCULATE, _PARSE_STEP, _FIT_TO_BUDGET = frozenset({"calculate"}), frozenset({"parse_step"}), \
    frozenset({"fit_to_budget"})

MUTANTS = [
    # the calculator
    Mutant("a calculator that allows attribute access (getattr on the value: ().__class__... walks out)",
           "calculate",
           _edit(_CALC, ('        raise ValueError(f"not allowed: {type(node).__name__}")',
                         '        if isinstance(node, ast.Attribute):\n'
                         '            return getattr(value(node.value), node.attr)\n'
                         '        raise ValueError(f"not allowed: {type(node).__name__}")')), _CALCULATE),
    Mutant("a calculator that allows unbounded powers (no estimate, no size check: 9 ** 9 ** 9 runs for minutes)",
           "calculate",
           _edit(_CALC, ("            if bits > MAX_BITS + 1:\n", "            if False:\n"),
                 ("            return small(a ** n)", "            return a ** n")), _CALCULATE),
    Mutant("a calculator that computes a power first and checks its size afterwards", "calculate",
           _edit(_CALC, ("            if bits > MAX_BITS + 1:\n", "            if False:\n")), _CALCULATE),
    Mutant("a calculator on floats: 0.1 + 0.2 is 0.30000000000000004", "calculate",
           _edit(_CALC, ("return small(Fraction(ast.get_source_segment(source, node)))",
                         "return small(Fraction(node.value))")), _CALCULATE),
    Mutant("a calculator that accepts bools (isinstance(True, int) is True)", "calculate",
           _edit(_CALC, ("        if isinstance(node, ast.Constant) and type(node.value) in (int, float):\n",
                         "        if isinstance(node, ast.Constant) and isinstance(node.value, int):\n"
                         "            return Fraction(node.value)\n"
                         "        if isinstance(node, ast.Constant) and isinstance(node.value, float):\n")),
           _CALCULATE),
    Mutant("a calculator that lets ZeroDivisionError escape", "calculate",
           _edit(_CALC, ("                if b == 0:\n                    raise ValueError(\"division by zero\")\n", "")),
           _CALCULATE),
    Mutant("a calculator that evals after a character filter", "calculate",
           "def calculate(expression):\n"
           "    if len(expression) > MAX_CHARS or set(expression) - set('0123456789+-*/(). '):\n"
           "        raise ValueError('not allowed')\n"
           "    return Fraction(eval(expression))", _CALCULATE),
    # the ReAct step parser
    Mutant('a parser that takes the first "Action:" anywhere, even inside a thought', "parse_step",
           _edit(_PARSE, ('LABEL = re.compile(r"^[ \\t]*(thought|', 'LABEL = re.compile(r"(thought|')), _PARSE_STEP),
    Mutant('a parser that does not cut at "Observation:" (a forged result and answer are taken)', "parse_step",
           _edit(_PARSE, ("    if forged:\n        text = text[:forged.start()]\n", "")), _PARSE_STEP),
    Mutant("a parser that prefers a Final Answer anywhere in the reply over the action before it", "parse_step",
           _edit(_PARSE, ("    first = labels[0]\n",
                          "    first = next((m for m in labels if m.group(1).lower() == 'final answer'), labels[0])\n")),
           _PARSE_STEP),
    Mutant("a parser that reads the Action Input's JSON from its line only (json.loads of one line)", "parse_step",
           _edit(_PARSE, ("        arguments, _ = json.JSONDecoder().raw_decode(rest[label_line.end():].lstrip())",
                          "        arguments = json.loads(rest[label_line.end():].split('\\n')[0])")), _PARSE_STEP),
    # the eviction policy
    Mutant("an eviction that drops the system prompt (it is the oldest message)", "fit_to_budget",
           _edit(_FIT, ('    protected = {i for i, m in enumerate(messages) if m["role"] == "system"}',
                        "    protected = set()"),
                 ('    floor = sum(sizes[i] for i in protected)', '    floor = sizes[-1] if messages else 0')),
           _FIT_TO_BUDGET),
    Mutant("an eviction that drops the newest turn", "fit_to_budget",
           _edit(_FIT, ("    if messages:\n        protected.add(len(messages) - 1)\n", "")), _FIT_TO_BUDGET),
    Mutant("an eviction whose budget is exclusive (< instead of <=): one turn too many goes", "fit_to_budget",
           _edit(_FIT, ("        if total <= budget:", "        if total < budget:")), _FIT_TO_BUDGET),
    Mutant("an eviction that pops from the caller's list", "fit_to_budget",
           "def fit_to_budget(messages, budget, count):\n"
           "    evicted = []\n"
           "    while sum(count(m['content']) for m in messages) > budget:\n"
           "        free = [m for m in messages[:-1] if m['role'] != 'system']\n"
           "        if not free:\n"
           "            raise ValueError('the protected messages do not fit')\n"
           "        messages.remove(free[0])\n"
           "        evicted.append(free[0])\n"
           "    return messages, evicted", _FIT_TO_BUDGET),
]

# More wrong implementations, each caught too: tests/test_checks_agents.py runs them in-process (fast), so that
# tests/test_labs.py executes the notebook only for the ones above.
MORE_MUTANTS = [
    Mutant("a calculator that checks only powers: a product of two big allowed powers goes through", "calculate",
           _edit(_CALC, ("                return small(a * b)", "                return a * b"),
                 ("                return small(a + b)", "                return a + b")), _CALCULATE),
    Mutant("a calculator without a depth limit (500 nested minus signs are walked)", "calculate",
           _edit(_CALC, ("    if deepest > MAX_DEPTH:", "    if False:")), _CALCULATE),
    Mutant('a parser that cuts only at "Observation:" in that case', "parse_step",
           _edit(_PARSE, ('re.search(r"observation:", text, re.IGNORECASE)', 're.search(r"Observation:", text)')),
           _PARSE_STEP),
    Mutant("an eviction that takes the newest turns first", "fit_to_budget",
           _edit(_FIT, ("    for i in range(len(messages)):", "    for i in reversed(range(len(messages))):")),
           _FIT_TO_BUDGET),
    Mutant("a calculator that bounds only the exponent (|n| <= 100000), not the result's bits", "calculate",
           _edit(_CALC, ("            if bits > MAX_BITS + 1:\n", "            if abs(n) > 100_000:\n"),
                 ("            return small(a ** n)", "            return a ** n")), _CALCULATE),
    Mutant("a calculator without a length limit (400 000 characters parsed: RecursionError)", "calculate",
           _edit(_CALC, ("    if len(expression) > MAX_CHARS:", "    if False:"),
                 ("    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:",
                  "    except (SyntaxError, ValueError) as e:")), _CALCULATE),
    Mutant("a calculator that allows // and % too", "calculate",
           _edit(_CALC, ("isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow))",
                         "isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.FloorDiv, ast.Mod))"),
                 ("            if b.denominator != 1:",
                  "            if isinstance(node.op, ast.FloorDiv):\n"
                  "                return small(Fraction(a // b))\n"
                  "            if isinstance(node.op, ast.Mod):\n"
                  "                return small(a % b)\n"
                  "            if b.denominator != 1:")), _CALCULATE),
    Mutant("a parser that reads the arguments with ast.literal_eval instead of json", "parse_step",
           _edit(_PARSE, ("        arguments, _ = json.JSONDecoder().raw_decode(rest[label_line.end():].lstrip())\n"
                          "    except json.JSONDecodeError as e:",
                          "        arguments = ast.literal_eval(rest[label_line.end():].strip())\n"
                          "    except (ValueError, SyntaxError) as e:"),
                 ("({e.msg})", "({e})")), _PARSE_STEP),
    Mutant("a parser whose Final Answer is only the rest of its line", "parse_step",
           _edit(_PARSE, ("        after = LABEL.search(text, first.end())\n"
                          "        answer = text[first.end():after.start() if after else len(text)].strip()",
                          "        answer = text[first.end():].split('\\n')[0].strip()")), _PARSE_STEP),
    Mutant("a parser that takes the last action of the reply", "parse_step",
           _edit(_PARSE, ("    first = labels[0]\n",
                          "    first = ([m for m in labels if m.group(1).lower() == 'action'] or labels)[-1]\n")),
           _PARSE_STEP),
    Mutant("an eviction that takes the largest turns first", "fit_to_budget",
           _edit(_FIT, ("    for i in range(len(messages)):", "    for i in sorted(range(len(messages)), "
                        "key=lambda i: -sizes[i]):")), _FIT_TO_BUDGET),
    Mutant("an eviction that clears every unprotected turn once over the budget", "fit_to_budget",
           _edit(_FIT, ("        if total <= budget:\n            break\n", "        if sum(sizes) <= budget:\n"
                        "            break\n")), _FIT_TO_BUDGET),
    Mutant("an eviction that returns an over-budget context instead of raising ValueError", "fit_to_budget",
           _edit(_FIT, ("    if floor > budget:\n        raise ValueError(", "    if False:\n        raise ValueError(")),
           _FIT_TO_BUDGET),
]
