"""Rewrite the generated parts of docs/security.md from pycanary.security (the role table, each
role's ACL SETUSER line and selector), so the doc follows the scripts after a change to lua/ or
to a role. tests/test_security.py::test_docs_show_the_generated_rules checks they agree.

    .venv/bin/python tools/security_doc.py
"""

from __future__ import annotations

import re
from pathlib import Path

from pycanary.security import ROLES, acl_doc_table, acl_rules, acl_setuser

DOC = Path(__file__).resolve().parents[1] / "docs" / "security.md"


def main() -> None:
    text = DOC.read_text()
    start = text.index("| role | may |")
    end = text.index("\n\n", start)
    lines = (text[:start] + acl_doc_table() + text[end:]).split("\n")
    role = None
    for i, line in enumerate(lines):
        m = re.match(r"^\*\*(\w+)\*\*$", line)
        if m and m.group(1) in ROLES:
            role = m.group(1)
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if role and line == "```sh" and nxt.startswith("redis-cli ACL SETUSER"):
            lines[i + 1] = "redis-cli " + acl_setuser(role)
        if role and line == "```" and nxt.startswith("(+"):
            lines[i + 1] = acl_rules(role)[-1]
            role = None
    DOC.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
