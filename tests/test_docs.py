"""README.md and docs/: every relative link resolves to a file (and heading anchor) that exists, every command in
their code blocks names a script and flags that its --help lists, every docs page is linked from the README and
links back, the README stays a short read, and its results table is what summarize_experiments.py writes from the
committed runs."""
import functools
import math
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = os.path.join(ROOT, "docs")
PAGES = [README] + sorted(os.path.join(DOCS, f) for f in os.listdir(DOCS) if f.endswith(".md"))
README_WORDS = 2600  # the budget of the issue that split the README: a ten-minute read

FENCE = re.compile(r"^```[^\n]*\n.*?^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
SCRIPT = re.compile(r"^code/[\w/]+\.py$")


def rel(path):
    return os.path.relpath(path, ROOT)


def prose(text):
    """The text without fenced code blocks and inline code spans (links there are not links)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def slug(heading):
    """GitHub's heading anchor: markup dropped, lower case, punctuation other than - and _ removed, spaces -> -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[`*]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path):
    """The heading anchors of a markdown file, with GitHub's -1, -2 ... for repeated headings."""
    seen, out = {}, set()
    for _, title in HEADING.findall(FENCE.sub("", open(path, encoding="utf-8").read())):
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path):
    """['target: why'] for every relative link of the markdown file at `path` that does not resolve."""
    problems = []
    for target in LINK.findall(prose(open(path, encoding="utf-8").read())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ... are not checked here
            continue
        file_part, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        if not os.path.exists(dest):
            problems.append(f"{target}: no such file {rel(dest)}")
        elif anchor and not (dest.endswith(".md") and anchor in anchors(dest)):
            problems.append(f"{target}: no heading #{anchor} in {rel(dest)}")
    return problems


def links_to(path, dest):
    """Whether the markdown file at `path` has a link that resolves to file `dest`."""
    for target in LINK.findall(prose(open(path, encoding="utf-8").read())):
        file_part = target.partition("#")[0]
        if file_part and os.path.normpath(os.path.join(os.path.dirname(path), file_part)) == os.path.normpath(dest):
            return True
    return False


def commands(path):
    """[(line number, script, positionals, flags)] for every `python code/X.py ...` or `torchrun ... code/X.py ...`
    in the code blocks of the markdown file at `path` (continuation lines joined, comments dropped)."""
    text = open(path, encoding="utf-8").read()
    found = []
    for block in FENCE.finditer(text):
        start = text.count("\n", 0, block.start()) + 1
        logical, first = "", None
        for i, line in enumerate(block.group(0).splitlines()[1:-1], start + 1):
            first = first or i
            if line.rstrip().endswith("\\"):
                logical += line.rstrip()[:-1] + " "
                continue
            logical += line
            for part in re.split(r"\s(?:&&|\|\||;|\|)\s", logical):
                if "code/" in part and ".py" in part:
                    tokens = shlex.split(part, comments=True)
                    at = next((k for k, t in enumerate(tokens) if SCRIPT.match(t)), None)
                    if at is not None and any(t in ("python", "python3", "torchrun") for t in tokens[:at]):
                        rest = tokens[at + 1:]
                        n = next((k for k, t in enumerate(rest) if t.startswith(("-", "["))), len(rest))
                        flags = [t.strip("[]").split("=")[0] for t in rest if t.strip("[").startswith("--")]
                        found.append((first, tokens[at], tuple(rest[:n]), flags))
            logical, first = "", None
    return found


@functools.lru_cache(maxsize=None)
def help_text(script, positionals):
    """`python <script> <positionals> --help` (the positionals select a subcommand, e.g. prepare_data.py acdc)."""
    out = subprocess.run([sys.executable, os.path.join(ROOT, script), *positionals, "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{script} {' '.join(positionals)} --help failed:\n{out.stderr[-2000:]}"
    return out.stdout


COMMANDS = [(path, *c) for path in PAGES for c in commands(path)]


@pytest.mark.parametrize("path", PAGES, ids=rel)
def test_every_relative_link_resolves(path):
    assert broken_links(path) == []


@pytest.mark.parametrize("path, line, script, positionals, flags", COMMANDS,
                         ids=[f"{rel(c[0])}:{c[1]}" for c in COMMANDS])
def test_every_command_names_a_script_and_flags_that_exist(path, line, script, positionals, flags):
    assert os.path.isfile(os.path.join(ROOT, script)), f"{rel(path)}:{line}: no script {script}"
    listed = set(re.findall(r"(?<![\w-])(--[A-Za-z0-9][\w-]*)", help_text(script, positionals)))
    missing = [f for f in flags if f not in listed]
    assert not missing, f"{rel(path)}:{line}: {script} {' '.join(positionals)} has no {', '.join(missing)}"


def test_the_readme_commands_are_checked():
    scripts = {c[2] for c in COMMANDS if c[0] == README}
    assert {"code/demo.py", "code/prepare_data.py", "code/train_diffrect_ACDC.py", "code/test_ACDC.py",
            "code/predict.py", "code/run_experiments.py", "code/summarize_experiments.py"} <= scripts, scripts


def test_every_docs_page_is_linked_from_the_readme_and_links_back():
    for page in PAGES[1:]:
        assert links_to(README, page), f"README.md does not link {rel(page)}"
        assert links_to(page, README), f"{rel(page)} does not link back to README.md"


def test_the_readme_is_a_short_read():
    words = len(open(README, encoding="utf-8").read().split())  # as wc -w counts them
    assert words <= README_WORDS, f"README.md has {words} words; move reference material to docs/"


def test_the_checks_catch_what_they_check(tmp_path):
    (tmp_path / "other.md").write_text("# A title: with `code`\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-title-with-code) [ok](other.md#twice-1) [gone](missing.md) "
                    "[bad](other.md#nowhere) [web](https://example.org/x) `[code](missing.md)`\n\n"
                    "```bash\npython code/x.py sub --a 1 [--b] \\\n    --c=2  # --not_a_flag\n```\n")
    assert broken_links(str(page)) == ["missing.md: no such file " + rel(str(tmp_path / "missing.md")),
                                       "other.md#nowhere: no heading #nowhere in " + rel(str(tmp_path / "other.md"))]
    assert commands(str(page)) == [(4, "code/x.py", ("sub",), ["--a", "--b", "--c"])]


def primary_table(results_md):
    """The first six columns of results.md's primary table: what the README shows."""
    lines = results_md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## Primary"))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")][:6])
        elif rows:
            break
    return [r for r in rows if not set("".join(r)) <= set("-")]  # without the |---| row


def same_table(a, b):
    """Equal text, except that unrounded numbers (the CSVs) may differ in their last bits: another CPU's numpy
    may sum in another order."""
    rows_a, rows_b = a.splitlines(), b.splitlines()
    if len(rows_a) != len(rows_b):
        return False
    for row_a, row_b in zip(rows_a, rows_b):
        cells_a, cells_b = row_a.split(","), row_b.split(",")
        if len(cells_a) != len(cells_b):
            return False
        for x, y in zip(cells_a, cells_b):
            if x == y:
                continue
            try:
                fx, fy = float(x), float(y)
            except ValueError:
                return False
            if not math.isclose(fx, fy, rel_tol=1e-9, abs_tol=1e-12):
                return False
    return True


@pytest.mark.parametrize("preset_name", ["cpu-acdc", "cpu-acdc-long"])
def test_the_readme_results_reproduce_from_the_committed_runs(tmp_path, preset_name):
    # what a fresh clone has: the files git tracks under the preset's folder (no checkpoints, no unfinished runs)
    preset = f"model/experiments/{preset_name}"
    try:
        listed = subprocess.run(["git", "ls-files", "-z", preset], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the committed files are unknown")
    tracked = [f for f in listed.decode().split("\0") if f]
    if not tracked:
        pytest.skip(f"no committed runs under {preset}")
    copy = tmp_path / preset_name
    for f in tracked:
        dst = copy / os.path.relpath(f, preset)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(os.path.join(ROOT, f), "rb") as src:
            dst.write_bytes(src.read())
    results = {name: (copy / name).read_text() for name in ("results.md", "results.csv", "ranks.csv")}
    subprocess.run([sys.executable, os.path.join(ROOT, "code", "summarize_experiments.py"), str(copy)],
                   cwd=ROOT, capture_output=True, check=True)
    for name, committed in results.items():
        assert same_table((copy / name).read_text(), committed), \
            f"{preset}/{name} is not what summarize_experiments.py writes from the committed runs: rerun it and commit"
    with open(README, encoding="utf-8") as f:
        readme = f.read()
    header = "| method | runs | Dice [95 % CI]"
    shown = [primary_table("## Primary\n" + readme[m.start():]) for m in re.finditer(re.escape(header), readme)]
    assert primary_table(results["results.md"]) in shown, f"no README table is {preset}/results.md's primary table"


def test_same_table_forgives_only_the_last_bits():
    assert same_table("m,x\na,0.30000000000000004\n", "m,x\na,0.3\n")
    assert same_table("a,nan\n", "a,nan\n")
    assert not same_table("a,0.3\n", "a,0.31\n")
    assert not same_table("| abd | 69.08 [59.32, 77.83] |", "| abd | 69.08 [59.32, 77.84] |")
    assert not same_table("a,0.3\n", "a,0.3\nb,0.1\n")
