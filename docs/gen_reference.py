"""mkdocs-gen-files script: the reference pages, generated from the code at every build so they cannot
drift from it.

- reference/config.md: every option of every config group, from its YAML file (keys, defaults and the
  comments beside them) and its schema (the types, initbench.config.SCHEMAS);
- reference/policies.md: every shipped init policy, from its file's header comment (paper and rule),
  its `requires:` line, its parameters and its rules;
- reference/schemes.md: the scheme registry (initbench.init.registry.SCHEMES): args and defaults,
  the function, its docstring's first sentence;
- reference/api/*.md: one mkdocstrings page per module of the package;
- results/ and conf/experiment/: the committed results and presets, so that the findings page links
  into them as the repository does.
"""

import dataclasses
import inspect
import re
from pathlib import Path

import mkdocs_gen_files
import yaml

from initbench.config import SCHEMAS
from initbench.init.registry import SCHEMES
from initbench.init.schemes import REQUIRED

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
GROUPS = ("model", "init", "dataset", "optimizer", "trainer", "tracking", "paths")
SCHEMA_LINE = re.compile(r"^\s*- /(schema/[\w/]+)@_here_")
TOP_KEY = re.compile(r"^(\w+):\s*(.*?)\s*(?:#\s*(.*))?$")  # key: value  # comment (at indent 0)


def header(path: Path) -> list[str]:
    """The comment lines that open a YAML file, without their '# '."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return lines


def header_markdown(path: Path) -> str:
    """A file's header comment as markdown: prose joined, lines indented by 2 or more kept as code."""
    blocks: list[tuple[bool, list[str]]] = []  # (is code, lines)
    for line in header(path):
        code = line.startswith("  ")
        if not blocks or blocks[-1][0] != code:
            blocks.append((code, []))
        blocks[-1][1].append(line.strip())
    return "\n\n".join("\n".join(f"    {line}" for line in lines) if code else " ".join(lines)
                       for code, lines in blocks)


def first_header_sentence(path: Path) -> str:
    """The first sentence of a YAML file's header comment (a period after "et al", "Sec", "Alg" ends none)."""
    prose = " ".join(line.strip() for line in header(path)).strip()
    return re.split(r"(?<! al)(?<!Sec)(?<!Alg)(?<!\bvs)\.\s", prose, maxsplit=1)[0].rstrip(".") + "."


def top_level_keys(path: Path) -> list[tuple[str, str, str]]:
    """(key, value as written, comment) for each top-level `key: value` line of a YAML file."""
    keys = []
    for line in path.read_text().splitlines():
        match = TOP_KEY.match(line)
        if match and match.group(1) != "defaults":
            keys.append((match.group(1), match.group(2), match.group(3) or ""))
    return keys


def schema_of(path: Path):
    for line in path.read_text().splitlines():
        match = SCHEMA_LINE.match(line)
        if match:
            return SCHEMAS[match.group(1)]
    return None


def type_name(annotation) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def config_reference() -> str:
    out = ["# Configuration reference", "",
           "Generated from `conf/` and the schemas in `initbench/config.py` at every build of this site. "
           "Pick an option with `group=option` and change a key with `group.key=value` "
           "([Configuration](../configuration.md)). A type comes from the option's schema; an option "
           "without one (an init policy) is read as it is and checked by `check_config`.", ""]
    top = CONF / "config.yaml"
    out += ["## `config.yaml`", "", header_markdown(top), "", "| key | default | meaning |", "|---|---|---|"]
    out += [f"| `{k}` | `{cell(v)}` | {cell(c)} |" for k, v, c in top_level_keys(top) if k != "hydra"]
    for group in GROUPS:
        out += ["", f"## `{group}`", ""]
        if group == "init":
            out += ["The policies, their rules and their parameters: [Init policies](policies.md).", ""]
            continue
        for path in sorted((CONF / group).glob("*.yaml")):
            schema = schema_of(path)
            types = {f.name: type_name(f.type) for f in dataclasses.fields(schema)} if schema else {}
            out += [f"### `{group}={path.stem}`", ""]
            if header(path):
                out += [header_markdown(path), ""]
            if schema:
                out += [f"Schema: `initbench.config.{schema.__name__}`.", ""]
            out += ["| key | type | default | meaning |", "|---|---|---|---|"]
            out += [f"| `{group}.{k}` | {cell(types.get(k, ''))} | `{cell(v)}` | {cell(c)} |"
                    for k, v, c in top_level_keys(path)]
            out.append("")
    experiments = sorted((CONF / "experiment").glob("*.yaml"))
    out += ["## `experiment`", "", "Presets, one per reproduced finding ([Reproduced findings](../findings.md)); "
            "`python -m initbench -m experiment=NAME`.", "", "| preset | what it sets up |", "|---|---|"]
    out += [f"| [`{p.stem}`](../conf/experiment/{p.name}) | {cell(' '.join(header(p)[:2]))} |" for p in experiments]
    return "\n".join(out) + "\n"


def policies_reference() -> str:
    out = ["# Init policies", "",
           "Generated from `conf/init/` at every build of this site: each policy's header comment (its "
           "paper and rule), its `requires:` line, its parameters and its rules. How rules match and how to "
           "write a policy: [Init policies](../inits.md).", ""]
    paths = sorted((CONF / "init").glob("*.yaml"))
    out += ["| `init=` | paper and rule (the header's first sentence) |", "|---|---|"]
    out += [f"| `{path.stem}` | {cell(first_header_sentence(path))} |" for path in paths]
    out.append("")
    for path in paths:
        policy = yaml.safe_load(path.read_text())
        out += [f"## `init={path.stem}`", "", header_markdown(path), ""]
        if policy.get("requires"):
            out += [f"**Requires:** {policy['requires']}", ""]
        params = [(k, v, c) for k, v, c in top_level_keys(path) if k not in ("name", "rules", "lsuv", "requires")]
        if params:
            out += ["| parameter | default | meaning |", "|---|---|---|"]
            out += [f"| `init.{k}` | `{cell(v)}` | {cell(c)} |" for k, v, c in params]
            out.append("")
        body = [line for line in path.read_text().splitlines() if not line.startswith("#")]
        out += ["```yaml", *body, "```", ""]
    return "\n".join(out)


def first_sentence(fn) -> str:
    doc = inspect.getdoc(fn) or ""
    paragraph = " ".join(doc.split("\n\n")[0].split())
    return paragraph.split(". ")[0].rstrip(".") + "." if paragraph else ""


def schemes_reference() -> str:
    out = ["# Init schemes", "",
           "Generated from the registry (`initbench.init.registry.SCHEMES`) at every build of this site: the "
           "names a rule's `scheme:` takes, their args with defaults (*required* where there is none), and "
           "the function behind each. torch.nn.init's own functions are registered as they are.", "",
           "theory std: the standard deviation the init report's expected_std gives for a tensor it fills "
           "(— where there is none).", "",
           "| scheme | args (defaults) | theory std | function | what it does |", "|---|---|---|---|---|"]
    for name, scheme in SCHEMES.items():
        args = ", ".join(f"`{a}`" if d is REQUIRED else f"`{a}={d!r}`" for a, d in scheme.defaults.items())
        args = cell(args) or "–"
        where = f"`{scheme.fn.__module__}.{scheme.fn.__qualname__}`"
        out.append(f"| `{name}` | {args} | {cell(scheme.std_rule) or '—'} | {where} | "
                   f"{cell(first_sentence(scheme.fn))} |")
    return "\n".join(out) + "\n"


def api_pages() -> None:
    """One page per module of the package (the mkdocstrings recipe), and an index of them."""
    pages = []
    for path in sorted((ROOT / "initbench").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if path.name == "__main__.py":
            continue
        module = module.removesuffix(".__init__")
        page = f"reference/api/{module}.md"
        with mkdocs_gen_files.open(page, "w") as out:
            out.write(f"# `{module}`\n\n::: {module}\n")
        pages.append((module, page))
    with mkdocs_gen_files.open("reference/api/index.md", "w") as out:
        out.write("# Python API\n\nGenerated by mkdocstrings from the docstrings, one page per module.\n\n")
        out.writelines(f"- [`{module}`]({Path(page).name})\n" for module, page in pages)


def copy_tree(folder: str, patterns: tuple[str, ...]) -> None:
    """Files of the repository at the same path in the site; a markdown file's links into docs/ made
    relative to the site's root, where the docs' pages are."""
    for pattern in patterns:
        for path in sorted((ROOT / folder).rglob(pattern)):
            data = path.read_bytes()
            if path.suffix == ".md":
                data = data.replace(b"](../docs/", b"](../")
            with mkdocs_gen_files.open(str(path.relative_to(ROOT)), "wb") as out:
                out.write(data)


for name, text in (("config", config_reference()), ("policies", policies_reference()),
                   ("schemes", schemes_reference())):
    with mkdocs_gen_files.open(f"reference/{name}.md", "w") as out:
        out.write(text)
api_pages()
copy_tree("results", ("*.md", "*.png"))
copy_tree("conf/experiment", ("*.yaml",))
with mkdocs_gen_files.open("changelog.md", "w") as out:
    out.write((ROOT / "CHANGELOG.md").read_text())
