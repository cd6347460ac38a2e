"""The course's commands: `python -m labkit.course COMMAND` (see --help)."""
from __future__ import annotations

import argparse
from collections.abc import Callable


def _book(args: argparse.Namespace) -> None:
    from labkit.course import book

    book.build()  # prints where the book is


def _assets(args: argparse.Namespace) -> None:
    from labkit.course import book

    print(book.fetch_assets())


def _labs(args: argparse.Namespace) -> None:
    from labkit.course import labs

    # `execute` stamps only the notebooks it just wrote; `labs` stamps every solution.
    changed = labs.write_labs(stamp=getattr(args, "paths", None))
    print("\n".join(f"wrote {p}" for p in changed) or "labs/ is up to date")


def _notebooks(args: argparse.Namespace) -> None:
    from labkit.course import manifest

    m = manifest.load()
    print("\n".join(m.portable_notebooks() if args.portability else m.verified_notebooks()))


def _execute(args: argparse.Namespace) -> None:
    from labkit.course import execute

    for path in args.paths:
        execute.execute_in_place(path)
        print(f"executed {path}")
    _labs(args)  # executing a solution refreshes its metadata, which its lab carries


def _save(args: argparse.Namespace) -> None:
    from labkit.course import saved

    print(f"wrote {saved.save(args.name)}")


def _digest(args: argparse.Namespace) -> None:
    from labkit.course.manifest import content_digest

    for path in args.paths:
        print(content_digest(path), path)


def _grade(args: argparse.Namespace) -> None:
    from labkit.course import grade

    results = grade.grade(args.submissions, timeout=args.timeout, jobs=args.jobs)
    print(grade.table(results))
    print(f"\nwrote {grade.write_csv(results, args.csv)}")


def _nbgrader(args: argparse.Namespace) -> None:
    from labkit.course import nbgrader_cells

    for path in nbgrader_cells.write_course(args.course, args.labs or None):
        print(f"wrote {path}")


def _grade_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("submissions", help="a folder with a folder per student holding their labs "
                                       "(alice/01-ngrams.ipynb)")
    p.add_argument("--timeout", type=float, default=120, help="seconds one notebook may run (default 120)")
    p.add_argument("--jobs", type=int, default=1, help="notebooks graded at once (default 1)")
    p.add_argument("--csv", default="grades.csv", help="where to write the grades (default grades.csv)")


def _nbgrader_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("course", help="the nbgrader course folder to write (source/ and nbgrader_config.py)")
    p.add_argument("labs", nargs="*", help="chapter ids, e.g. 01-ngrams (default: every lab)")


def _portable_env(args: argparse.Namespace) -> None:
    from labkit.course.cpu import PORTABLE

    print(" ".join(f"{name}={value}" for name, value in PORTABLE.items()))


# name -> (help, function). A command is one function taking the parsed args; imports stay inside it
# so that `--help` is instant and one command's dependencies never break another.
COMMANDS: dict[str, tuple[str, Callable[[argparse.Namespace], None]]] = {
    "book": ("build the book into _build/html (offline, from the committed outputs); print index.html's path",
             _book),
    "assets": ("fetch the JavaScript the book's pages need (widgets, MathJax) from npm into .cache/js", _assets),
    "labs": ("stamp nbgrader's cell metadata into solutions/, regenerate labs/ from them (solution markers become "
             "stubs)", _labs),
    "notebooks": ("print the notebooks nbval verifies (lessons and solutions), as book.yml lists them", _notebooks),
    "execute": ("execute notebooks in place to refresh their committed outputs (then run `make test`)", _execute),
    "save": ("run one saved experiment in full and write results/NAME.json (+ .safetensors) for its notebook",
             _save),
    "digest": ("print the content digest of notebooks (book.yml's portability_skip records it)", _digest),
    "grade": ("grade submitted labs without nbgrader: run each in its own process with a time limit, print a table "
              "per lab and write a CSV", _grade),
    "nbgrader": ("write an nbgrader course folder (source/<lab>/ from the solutions, nbgrader_config.py) for "
                 "`nbgrader generate_assignment` and `nbgrader autograde`", _nbgrader),
    "portable-env": ("print the portability run's CPU-kernel settings as NAME=VALUE words (for `env`)",
                     _portable_env),
}
ARGUMENTS = {"execute": lambda p: p.add_argument("paths", nargs="+", help="notebook files"),
             "digest": lambda p: p.add_argument("paths", nargs="+", help="notebook files"),
             "notebooks": lambda p: p.add_argument("--portability", action="store_true",
                                                   help="only those the portability run re-executes"),
             "save": lambda p: p.add_argument("name", help="the run's name, e.g. 03-tiny-gpt (labkit.course.saved)"),
             "grade": _grade_arguments, "nbgrader": _nbgrader_arguments}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m labkit.course", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, func) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        ARGUMENTS.get(name, lambda _: None)(command)
        command.set_defaults(func=func)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
