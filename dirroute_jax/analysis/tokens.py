"""Token classes shared by the analyses: what counts as a "function token" (the paper says
late-layer directions read out to function words and punctuation)."""

import string

STOP_WORDS = frozenset("""
a an the and or but if of to in on at by for with from as into about than then so not no is
are was were be been being am do does did have has had it its this that these those there here
he she they we you i me him her them us my your his their our who which what when where how
will would can could should may might must shall all any some
""".split())


def is_function_token(text: str) -> bool:
  """Whitespace-only, punctuation-only, or a stop word (case-insensitive, spaces stripped)."""
  stripped = text.strip()
  return (not stripped or all(ch in string.punctuation for ch in stripped)
          or stripped.lower() in STOP_WORDS)
