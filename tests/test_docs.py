"""The docs stay true to the code: config tables, links, the README's length and its commands.

- docs/configuration.md: every key of every option of every config group, with its default as Hydra
  composes it. The tables between ``<!-- table:NAME -->`` and ``<!-- /table -->`` are generated from
  the composed configs; after changing a config, regenerate them (the "accepted" column is kept) with

      python tests/test_docs.py

- README.md is at most 250 lines;
- no link in README.md or docs/ leaves the repository, and every relative link or image resolves;
- every command in a ```bash block of README.md names a script or command that exists.
"""

from __future__ import annotations

import re
import shlex
import sys
import warnings
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
CONFIG_DOC = ROOT / "docs" / "configuration.md"
README = ROOT / "README.md"
MAX_README_LINES = 250
ABSENT = "—"  # a cell for a key the option does not have

# Docs other engineers are writing; linked already, checked like any other link once they exist.
PENDING_DOCS = {"docs/functions.md", "docs/backprop_view.md", "docs/reliability.md"}


# --- the composed configs -------------------------------------------------------------------------


def fmt(value) -> str:
    """A config value as the docs print it (YAML spelling: null, true, [16, 16])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {fmt(v)}" for k, v in value.items()) + "}"
    if value == "":
        return '""'
    return repr(value) if isinstance(value, float) else str(value)


def flatten(node, prefix: str) -> dict[str, str]:
    """{dotted key: formatted value} of a config node (interpolations as written, not resolved)."""
    container = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_config(node) else node
    out: dict[str, str] = {}

    def walk(value, key: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        else:
            out[key] = fmt(value)

    walk(container, prefix)
    return out


def _yaml_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def composed_tables() -> dict[str, dict[str, dict[str, str]]]:
    """Per table: {option: {key: value}} from the real composed configs (what the doc must show).

    For experiments, the keys each one changes from ``model=mlp`` (the model every experiment builds on).
    """
    from backprop_lab.config import register_configs
    from backprop_lab.sweep import register_resolvers

    register_configs()
    register_resolvers()
    tables: dict[str, dict[str, dict[str, str]]] = {}
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):

        def cfg(*overrides: str, hydra: bool = False):
            return compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra)

        default = cfg()
        groups = ("model", "data", "optim", "trainer", "logger")
        tables["top"] = {"default": {k: v for k, v in flatten(default, "").items() if k.split(".")[0] not in groups}}
        for group in groups:
            tables[group] = {o: flatten(cfg(f"{group}={o}")[group], group) for o in _yaml_options(group)}
        base = flatten(cfg("model=mlp"), "")
        tables["experiment"] = {}
        for name in _yaml_options("experiment"):
            full = flatten(cfg(f"experiment={name}"), "")
            tables["experiment"][name] = {k: v for k, v in full.items() if base.get(k) != v}
        # the hydra keys configs/train.yaml sets (its help text aside), as composed
        own = flatten(OmegaConf.load(CONFIGS / "train.yaml").hydra, "hydra")
        hydra = flatten(cfg(hydra=True).hydra, "hydra")
        tables["hydra"] = {"default": {k: hydra[k] for k in own if not k.startswith("hydra.help.")}}
        tables["hparams_search"] = {
            o: flatten(cfg(f"hparams_search={o}", hydra=True).hydra.sweeper, "hydra.sweeper")
            for o in _yaml_options("hparams_search")
        }
        tables["launcher"] = {
            o: flatten(cfg(f"hydra/launcher={o}", hydra=True).hydra.launcher, "hydra.launcher")
            for o in _yaml_options("hydra/launcher")
        }
        choices = cfg(hydra=True).hydra.runtime.choices
        tables["groups"] = {
            "default": {
                g: fmt(choices.get(g)).replace("null", "none") for g in (*groups, "experiment", "hparams_search")
            }
        }
        tables["groups"]["default"]["hydra/launcher"] = choices["hydra/launcher"]
    return tables


# --- the doc's tables -----------------------------------------------------------------------------

TABLE = re.compile(r"<!-- table:(?P<name>\w+) -->\n(?P<body>.*?)<!-- /table -->", re.S)


def split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def uncode(cell: str) -> str:
    return cell[1:-1] if len(cell) >= 2 and cell.startswith("`") and cell.endswith("`") else cell


def doc_tables(text: str) -> dict[str, tuple[list[str], dict[str, dict[str, str]], dict[str, str]]]:
    """Per table: (option columns, {option: {key: cell}}, {key: accepted text})."""
    out = {}
    for m in TABLE.finditer(text):
        lines = [ln for ln in m["body"].splitlines() if ln.startswith("|")]
        if not lines:
            out[m["name"]] = ([], {}, {})
            continue
        header = [uncode(c) for c in split_row(lines[0])]
        options = header[1:-1]  # key | option… | accepted
        cells: dict[str, dict[str, str]] = {o: {} for o in options}
        accepted: dict[str, str] = {}
        for line in lines[2:]:
            row = split_row(line)
            key = uncode(row[0])
            for option, cell in zip(options, row[1:-1]):
                if cell != ABSENT:
                    cells[option][key] = uncode(cell)
            accepted[key] = row[-1]
        out[m["name"]] = (options, cells, accepted)
    return out


def render_table(name: str, options: dict[str, dict[str, str]], accepted: dict[str, str]) -> str:
    keys = list(dict.fromkeys(k for values in options.values() for k in values))
    if name == "groups":
        keys.sort(key=lambda k: (k.startswith("hydra"), k))
    head = (
        f"| {'group' if name == 'groups' else 'key'} | "
        + " | ".join(f"`{o}`" for o in options)
        + " | accepted, meaning |"
    )
    lines = [head, "|" + " --- |" * (len(options) + 2)]
    for key in keys:
        row = [f"`{options[o][key]}`".replace("|", "\\|") if key in options[o] else ABSENT for o in options]
        lines.append(f"| `{key}` | " + " | ".join(row) + f" | {accepted.get(key, 'TODO: describe')} |")
    return "\n".join(lines) + "\n"


def write_tables() -> None:
    """Regenerate every table of docs/configuration.md from the composed configs."""
    text = CONFIG_DOC.read_text()
    tables, existing = composed_tables(), doc_tables(text)

    def replace(m: re.Match) -> str:
        name = m["name"]
        accepted = existing.get(name, ([], {}, {}))[2]
        return f"<!-- table:{name} -->\n{render_table(name, tables[name], accepted)}<!-- /table -->"

    CONFIG_DOC.write_text(TABLE.sub(replace, text))
    missing = set(tables) - set(existing)
    if missing:
        print(f"no <!-- table:NAME --> marker in {CONFIG_DOC.name} for: {', '.join(sorted(missing))}", file=sys.stderr)


# --- the tests ------------------------------------------------------------------------------------


def test_configuration_doc_shows_every_key_with_its_composed_default():
    composed, documented = composed_tables(), doc_tables(CONFIG_DOC.read_text())
    problems = []
    for name, options in composed.items():
        if name not in documented:
            problems.append(f"table {name!r} is missing (a <!-- table:{name} --> block)")
            continue
        columns, cells, _ = documented[name]
        if columns != list(options):
            problems.append(f"table {name!r}: columns {columns}, but the options are {list(options)}")
            continue
        for option, values in options.items():
            for key, value in values.items():
                shown = cells[option].get(key)
                if shown is None:
                    problems.append(f"{key} ({name} {option}) is not documented; its default is {value}")
                elif shown != value:
                    problems.append(f"{key} ({name} {option}): the doc says {shown}, the config composes {value}")
            for key in set(cells[option]) - set(values):
                problems.append(f"{key} ({name} {option}): documented, but the composed config has no such key")
    hint = "\nregenerate the tables: python tests/test_docs.py"
    assert not problems, "docs/configuration.md is out of date:\n" + "\n".join(problems) + hint


def test_every_config_group_option_is_listed():
    groups = doc_tables(CONFIG_DOC.read_text())["groups"][2]  # group -> its "accepted" text: the options
    for group in ("model", "data", "optim", "trainer", "logger", "experiment", "hparams_search", "hydra/launcher"):
        for option in _yaml_options(group):
            assert f"`{option}`" in groups[group], f"option {group}={option} is not listed in the groups table"


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines; keep it to {MAX_README_LINES} (move detail to docs/)"
    )


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def anchors(doc: Path) -> set[str]:
    """The anchors GitHub gives the headings of a markdown file: lower case, punctuation dropped, - for spaces."""
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    headings = re.findall(r"^#{1,6}\s+(.*?)\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def doc_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def test_links_stay_in_the_repository_and_resolve():
    outside, broken, pending = [], [], []
    for doc in doc_files():
        text = re.sub(r"<!--.*?-->", "", doc.read_text(), flags=re.S)  # comments are not rendered
        name = doc.relative_to(ROOT)
        for url in re.findall(r"https?://\S+", text):
            outside.append(f"{name}: {url}")
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target) or "shared/" in target:
                outside.append(f"{name}: {target}")
                continue
            path, _, anchor = target.partition("#")
            resolved = (doc.parent / path).resolve() if path else doc.resolve()
            if anchor and resolved.suffix == ".md" and resolved.exists() and anchor not in anchors(resolved):
                broken.append(f"{name}: {target} (no such heading)")
                continue
            if not resolved.is_relative_to(ROOT):
                outside.append(f"{name}: {target}")
            elif not resolved.exists():
                rel = resolved.relative_to(ROOT).as_posix()
                (pending if rel in PENDING_DOCS else broken).append(f"{name}: {target}")
    assert not outside, "links that leave the repository:\n" + "\n".join(outside)
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)
    if pending:
        warnings.warn("linked docs not written yet: " + "; ".join(pending), stacklevel=1)


def bash_commands(text: str) -> list[str]:
    """Every command of every ```bash block: lines joined at a trailing backslash, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands += [c.strip() for c in re.split(r"&&|\|\||;|\|", line) if c.strip()]
    return commands


def test_readme_bash_commands_exist():
    # [project.scripts] of pyproject.toml (no tomllib: Python 3.10 is supported)
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[)", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
    scripts = set(re.findall(r"^([\w.-]+)\s*=", section[1], re.M))
    programs = {"pip", "python", "python3", "tensorboard", ".", "source", "cd", "COLUMNS"}
    commands = bash_commands(README.read_text())
    assert commands, "README.md has no ```bash block"
    for command in commands:
        words = shlex.split(command)
        while words and re.match(r"^\w+=", words[0]):  # VAR=value before the program
            words = words[1:]
        program = words[0]
        assert program in programs or program in scripts, f"README runs {program!r}, which is not a known command"
        if program in ("python", "python3") and words[1:] and words[1].endswith(".py"):
            assert (ROOT / words[1]).is_file(), f"README runs {words[1]}, which does not exist"
        if program in ("python", "python3") and words[1:2] == ["-m"]:
            assert words[2] in ("pytest", "venv", "tensorboard", "backprop_lab"), f"README runs python -m {words[2]}"


if __name__ == "__main__":
    write_tables()
