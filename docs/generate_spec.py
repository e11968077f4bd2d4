"""Write docs/spec.md, the reference of every job spec key, from the spec dataclasses' field docs.

    python docs/generate_spec.py
"""

from pathlib import Path

from orchestrator.spec.reference import markdown

if __name__ == "__main__":
    target = Path(__file__).resolve().with_name("spec.md")
    target.write_text(markdown())
    print(f"wrote {target}")
