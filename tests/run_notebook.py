#!/usr/bin/env python3
"""Runs a C++ notebook's code cells, in order, in clang-repl, the way xeus-cpp would.

Each cell must run without a compiler error and print exactly the stdout that the notebook
stores as its output. `--update` rewrites the stored outputs instead (review the diff!).

    run_notebook.py --repl clang-repl-19 --include include/ docs/notebooks/01-einops.ipynb
"""
import argparse
import json
import os
import subprocess
import sys

MARK = "@@DITTO-CELL-END@@"


def strip_comment(line):
    """Drops a // comment (outside string literals): clang-repl joins continued lines, and a
    comment would swallow the next ones."""
    out, in_str, i = [], None, 0
    while i < len(line):
        c = line[i]
        if in_str:
            out.append(c)
            if c == "\\" and i + 1 < len(line):
                out.append(line[i + 1])
                i += 1
            elif c == in_str:
                in_str = None
        elif c in "\"'":
            in_str = c
            out.append(c)
        elif line.startswith("//", i):
            break
        else:
            out.append(c)
        i += 1
    return "".join(out).rstrip()


def chunks(source):
    """Splits a cell into clang-repl inputs: preprocessor lines alone, and each complete
    declaration or statement (balanced brackets, ending in ';' or '}') as one continued input."""
    current, depth = [], 0
    for raw in source.splitlines():
        line = strip_comment(raw)
        if not line.strip():
            continue
        if line.lstrip().startswith("#") and not current:
            yield line
            continue
        current.append(line)
        depth += sum(line.count(c) for c in "({[") - sum(line.count(c) for c in ")}]")
        if depth == 0 and line.rstrip().endswith((";", "}")):
            yield " \\\n".join(current)
            current = []
    if current:
        yield " \\\n".join(current)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("notebook")
    ap.add_argument("--repl", default="clang-repl-19")
    ap.add_argument("--include", action="append", default=[])
    ap.add_argument("--workdir", default=".")
    ap.add_argument("--update", action="store_true", help="store the outputs instead of checking them")
    args = ap.parse_args()

    with open(args.notebook) as f:
        nb = json.load(f)
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    lines = ["#include <cstdio>"]
    for cell in cells:
        lines.extend(chunks("".join(cell["source"])))
        lines.append(f'fflush(stdout); printf("{MARK}\\n"); fflush(stdout); fprintf(stderr, "{MARK}\\n");')
    cmd = [args.repl, "-Xcc", "-std=c++20"]
    for inc in args.include + ["/usr/include/eigen3"]:
        cmd += ["-Xcc", "-I" + os.path.abspath(inc)]
    os.makedirs(args.workdir, exist_ok=True)
    proc = subprocess.run(cmd, input="\n".join(lines) + "\n", capture_output=True, text=True, cwd=args.workdir,
                          timeout=600)
    outs = proc.stdout.split(MARK + "\n")
    errs = proc.stderr.split(MARK + "\n")
    passed = failed = 0
    for i, cell in enumerate(cells):
        out = outs[i].lstrip("\n") if i < len(outs) else None
        err = errs[i] if i < len(errs) else "(clang-repl stopped before this cell)"
        name = f"cell {i + 1}: " + "".join(cell["source"]).splitlines()[0][:60]
        problems = []
        if out is None or "error" in err:
            problems.append("clang-repl reported:\n" + err.strip())
        expected = "".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                           for o in cell.get("outputs", []) if o.get("name") == "stdout")
        if args.update:
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": out.splitlines(True)}] if out else []
        elif out is not None and out.rstrip() != expected.rstrip():
            problems.append(f"printed:\n{out}\nbut the notebook expects:\n{expected}")
        if problems:
            failed += 1
            print(f"FAIL {name}\n  " + "\n  ".join(problems))
        else:
            passed += 1
            print(f"ok   {name}")
    if args.update:
        with open(args.notebook, "w") as f:
            json.dump(nb, f, indent=1)
            f.write("\n")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
