#!/usr/bin/env python3
"""Checks that docs/RUNBOOK.md quotes every alert rule as monitoring/alert_rules.yml has it:
each alert has a `## <alert>` section whose first promql block is the rule's expression (blank
space aside) with its `for:` window in a `# for:` comment. With --fix, rewrites the blocks
that differ from the rules. Run by monitoring/check.sh."""
import re
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
rules_path = root / "monitoring" / "alert_rules.yml"
runbook_path = root / "docs" / "RUNBOOK.md"


def load_rules(path):
    """The alerts' names, expressions and `for:` windows. The rules file's shape is fixed
    (`- alert:`, then `expr:` inline or as a `|` block, `for:`), so no YAML library is needed."""
    out, rule, block = [], None, None
    for line in path.read_text().splitlines():
        indent = len(line) - len(line.lstrip())
        if block is not None:
            if line.strip() and indent <= block:
                block = None
            else:
                rule["expr"] += line + "\n"
                continue
        m = re.match(r"\s*- alert: (\S+)", line)
        if m:
            rule = {"alert": m.group(1)}
            out.append(rule)
            continue
        m = re.match(r"(\s*)(expr|for): ?(.*)$", line)
        if rule is not None and m:
            key, value = m.group(2), m.group(3).strip()
            if key == "expr" and value == "|":
                rule["expr"], block = "", len(m.group(1))
            else:
                rule[key] = value
    return out


rules = load_rules(rules_path)
text = runbook_path.read_text()
fix = "--fix" in sys.argv[1:]


def squash(s):
    return re.sub(r"\s+", "", s)


def render(rule):
    expr = rule["expr"].strip()
    lines = expr.splitlines()
    indent = min((len(l) - len(l.lstrip()) for l in lines[1:] if l.strip()), default=0)
    body = "\n".join([lines[0]] + [l[indent:] if len(l) >= indent else l for l in lines[1:]])
    if "for" not in rule:
        return body
    if len(lines) == 1:
        return f"{body}    # for: {rule['for']}"
    return f"{body}\n# for: {rule['for']}"


problems = []
for rule in rules:
    name = rule["alert"]
    head = re.search(rf"^## {re.escape(name)}\s*$", text, re.M)
    if not head:
        problems.append(f"{name}: no '## {name}' section")
        continue
    block = re.compile(r"```promql\n(.*?)```", re.S).search(text, head.end())
    nxt = re.compile(r"^## ", re.M).search(text, head.end())
    if not block or (nxt and block.start() > nxt.start()):
        problems.append(f"{name}: its section has no promql block")
        continue
    quoted = block.group(1)
    fors = re.findall(r"#\s*for:\s*(\S+)", quoted)
    expr = re.sub(r"#\s*for:\s*\S+", "", quoted)
    want_for = rule.get("for")
    same = squash(expr) == squash(rule["expr"]) and (
        fors == [want_for] if want_for else fors in ([], ["0m"])
    )
    if not same:
        problems.append(f"{name}: the runbook's expression or `for:` differs from the rule")
        if fix:
            text = text[: block.start(1)] + render(rule) + "\n" + text[block.end(1) :]

if fix:
    runbook_path.write_text(text)
    print(f"runbook: rewrote {len(problems)} block(s)")
elif problems:
    print("docs/RUNBOOK.md does not match monitoring/alert_rules.yml:", *problems, sep="\n  ")
    print("(monitoring/check_runbook.py --fix rewrites the blocks from the rules)")
    sys.exit(1)
else:
    print(f"runbook: {len(rules)} alerts, each quoted as the rules have it")
