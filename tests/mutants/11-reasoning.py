"""Wrong implementations for labs/11-reasoning.ipynb, and the checks each must fail."""
from mutants import Mutant

_CHECK = '''def check_expression(expr, numbers):
    if len(expr) > 200:
        return False, f"too long: {{len(expr)}} characters (at most 200)"
    try:
        body = ast.parse(expr.strip(), mode="eval").body
    except (SyntaxError, ValueError) as e:
        return False, f"syntax error: {{e}}"
    allowed = (ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div)
    used = []
    for node in ast.walk(body):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
        elif not isinstance(node, allowed):
            return False, f"disallowed node {{type(node).__name__}}"
    if {numbers_differ}:
        return False, f"wrong numbers (used {{sorted(used)}}, given {{sorted(numbers)}})"

    def value(node):
        if isinstance(node, ast.Constant):
            return {number}
        a, b = value(node.left), value(node.right)
        op = type(node.op)
        return a + b if op is ast.Add else a - b if op is ast.Sub else a * b if op is ast.Mult else a / b

    {evaluate}
    if v != 24:
        return False, f"value is {{v}} not 24"
    return True, "ok"'''
_CHECK_RIGHT = dict(numbers_differ="sorted(used) != sorted(numbers)", number="Fraction(node.value)",
                    evaluate="try:\n        v = value(body)\n    except ZeroDivisionError:\n"
                             "        return False, \"division by zero\"")


def _check(**change: str) -> str:
    return _CHECK.format(**{**_CHECK_RIGHT, **change})


_BFS = '''def bfs_step(frontier, propose, value, breadth):
    {body}'''

MUTANTS = [
    # the 24-checker
    Mutant("compares the numbers as sets: a reused number passes", "check_expression",
           _check(numbers_differ="set(used) != set(numbers) or len(used) != len(numbers)"),
           frozenset({"check_expression"})),
    Mutant("evaluates with floats: 8 / (3 - 8 / 3) comes out 23.99999999999999", "check_expression",
           _check(number="float(node.value)"), frozenset({"check_expression"})),
    Mutant("no division-by-zero reason: ZeroDivisionError escapes", "check_expression",
           _check(evaluate="v = value(body)"), frozenset({"check_expression"})),
    Mutant("division by zero reported as a wrong value", "check_expression",
           _check(evaluate="try:\n        v = value(body)\n    except ZeroDivisionError:\n"
                           "        return False, \"value is undefined\""), frozenset({"check_expression"})),
    Mutant("checks with eval after a character filter", "check_expression",
           "def check_expression(expr, numbers):\n"
           "    if len(expr) > 200 or set(expr) - set('0123456789+-*/() '):\n"
           "        return False, 'disallowed node'\n"
           "    return eval(expr) == 24, 'value is wrong'", frozenset({"check_expression"})),
    # one BFS step
    Mutant("keeps the worst b candidates", "bfs_step",
           _BFS.format(body="children = [c for s in frontier for c in propose(s)]\n"
                            "    return sorted(children, key=value)[:breadth]"), frozenset({"bfs_step"})),
    Mutant("scores the parents and keeps the children of the best ones", "bfs_step",
           _BFS.format(body="ranked = sorted(frontier, key=value, reverse=True)\n"
                            "    return [c for s in ranked for c in propose(s)][:breadth]"), frozenset({"bfs_step"})),
    Mutant("expands only the first state of the frontier", "bfs_step",
           _BFS.format(body="children = list(propose(frontier[0])) if frontier else []\n"
                            "    return sorted(children, key=value, reverse=True)[:breadth]"),
           frozenset({"bfs_step"})),
    Mutant("breaks ties in reverse order (ascending sort, reversed)", "bfs_step",
           _BFS.format(body="children = [c for s in frontier for c in propose(s)]\n"
                            "    return sorted(children, key=value)[::-1][:breadth]"), frozenset({"bfs_step"})),
]
