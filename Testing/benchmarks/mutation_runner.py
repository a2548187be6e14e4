"""The test command of one mutant (``bench_mutation.py``): the tests that run the mutated lines, nothing else.

``python mutation_runner.py COVERAGE_MAP MODULE PRISTINE BUDGET`` finds the lines where ``MODULE`` (a path
in the current folder, mutated in place by cosmic-ray) differs from its pristine copy ``PRISTINE``, looks
up the tests that ran those lines (``COVERAGE_MAP``: ``{"lines": {module: {line: [test node ids]}},
"seconds": {test: seconds}}``, from one coverage run with a context per test) and runs them, the fastest
first, as many as fit in ``BUDGET`` seconds of their measured time (at least one); exit code 0 means
every one passed (the mutant survived). A mutant on lines that run only on import (a decorator, a class
body, a default value: coverage gives them no test) runs the tests of any line of the module instead,
and says so on stdout.
"""

import difflib
import json
import subprocess
import sys
from pathlib import Path


def changed_lines(mutated: list[str], pristine: list[str]) -> set[int]:
    """1-based numbers, in the pristine file, of the lines the mutation replaced or removed."""
    lines: set[int] = set()
    for tag, i1, i2, _, _ in difflib.SequenceMatcher(a=pristine, b=mutated, autojunk=False).get_opcodes():
        if tag != "equal":
            lines.update(range(i1 + 1, max(i2, i1 + 1) + 1))
    return lines


def main() -> int:
    coverage_map, module, pristine, budget = sys.argv[1:5]
    lines = changed_lines(Path(module).read_text().splitlines(), Path(pristine).read_text().splitlines())
    data = json.loads(Path(coverage_map).read_text())
    covering = data["lines"].get(module, {})
    seconds = data["seconds"]
    tests = sorted({test for line in lines for test in covering.get(str(line), [])},
                   key=lambda t: (seconds.get(t, float("inf")), t))
    if not tests:  # lines run on import (decorators, class bodies, defaults): the module's tests
        print(f"no test runs line(s) {sorted(lines)} of {module} itself: the module's tests instead")
        tests = sorted({test for tests_of_line in covering.values() for test in tests_of_line},
                       key=lambda t: (seconds.get(t, float("inf")), t))
        if not tests:
            return 0
    chosen, spent = [], 0.0
    for test in tests:
        if chosen and spent + seconds.get(test, float("inf")) > float(budget):
            break
        chosen.append(test)
        spent += seconds.get(test, 0.0)
    tests = chosen
    return subprocess.call([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W",
                            "ignore", *tests])


if __name__ == "__main__":
    sys.exit(main())
